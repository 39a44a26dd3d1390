"""Command line of ``python -m train_patch2pix`` (docs/training.md §1) and its validation.

Every flag of the original keeps its spelling, aliases, type and default; the new flags
(``--device``, ``--workers``, ``--max_iters_per_epoch``, ``--val_imsize``,
``--val_sample_max``, ``--train_size``, ``--no_val``, ``--val_root``) only add behaviour.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from networks.optim import parse_lr_decay
from utils.common.cli import UsageError, make_parser, number

__all__ = ["build_parser", "check_args", "parse_args"]

DEFAULT_MATCH_NPY = "megadepth_pairs.ov0.35_imrat1.5.pair500.excl_test.npy"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the training CLI."""
    p = make_parser("train_patch2pix", "Train Patch2Pix on MegaDepth pairs (docs/training.md).")
    g = p.add_argument_group("run")
    g.add_argument("--gpu", "-gpu", type=int, default=0, help="GPU index")
    g.add_argument(
        "--seed", type=number(int, 0, 2**32 - 1), default=1, help="seed of python, numpy and torch"
    )
    g.add_argument("--epochs", type=int, default=100, help="last epoch (exclusive)")
    g.add_argument("--save_step", type=int, default=1, help="save ckpt_ep{N}.pth every N epochs")
    g.add_argument("--plot_counts", type=int, default=5, help="plots/prints per epoch")
    g.add_argument("--batch", type=int, default=8, help="batch size")
    g.add_argument("--regr_batch", type=int, default=1200, help="regressor chunk size (rows)")
    g.add_argument("--visdom_host", "-vh", type=str, default=None, help="Visdom host")
    g.add_argument("--visdom_port", "-vp", type=str, default=None, help="Visdom port")
    g.add_argument("--prefix", type=str, default="", help="prefix of the output-dir tag")
    g.add_argument("--out_dir", "-o", type=str, default="output/patch2pix", help="output root")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", type=str, default="MegaDepth", help="dataset name")
    g.add_argument(
        "--data_root",
        type=str,
        default="data",
        help="holds MegaDepth_undistort/ and immatch_benchmark/",
    )
    g.add_argument("--pair_root", type=str, default="data_pairs", help="folder of the pair file")
    g.add_argument("--match_npy", type=str, default=DEFAULT_MATCH_NPY, help="pair file name")

    g = p.add_argument_group("model")
    g.add_argument("--backbone", type=str, default="ResNet34", help="backbone class")
    g.add_argument("--change_stride", action="store_true", help="stride-8 layer3")
    g.add_argument(
        "--ksize", type=number(int, 1, 16), default=2, help="relocalisation pooling size"
    )
    g.add_argument(
        "--freeze_feat",
        type=int,
        default=87,
        help="freeze the first N backbone parameters (87 = through layer3)",
    )
    g.add_argument(
        "--feat_idx",
        type=int,
        nargs="*",
        default=[0, 1, 2, 3],
        help="feature levels of the regressors",
    )
    g.add_argument(
        "--feat_comb",
        type=str,
        default="pre",
        choices=["pre", "post"],
        help="combine patches before or after the convs",
    )
    g.add_argument("--conv_kers", type=int, nargs="*", default=[3, 3], help="conv kernels")
    g.add_argument("--conv_dims", type=int, nargs="*", default=[512, 512], help="conv widths")
    g.add_argument("--conv_strs", type=int, nargs="*", default=[2, 1], help="conv strides")
    g.add_argument("--fc_dims", type=int, nargs="*", default=[512, 256], help="hidden FC widths")
    g.add_argument("--psize", type=int, nargs=2, default=[16, 16], help="patch size mid, fine")
    g.add_argument("--pshift", type=int, default=8, help="anchor shift in pixels")
    g.add_argument("--panc", type=int, default=8, choices=[8, 1], help="anchors per match")
    g.add_argument("--ptmax", type=int, default=400, help="coarse matches per pair")
    g.add_argument("--shared", action="store_true", help="one regressor for both levels")

    g = p.add_argument_group("loss")
    g.add_argument(
        "--cthres", type=number(float, 0, 1), default=0.5, help="classification metric threshold"
    )
    g.add_argument(
        "--cls_dthres",
        type=int,
        nargs=2,
        default=[50, 5],
        help="Sampson thresholds (px²) of the mid / fine targets",
    )
    g.add_argument(
        "--epi_dthres",
        type=int,
        nargs=2,
        default=[50, 5],
        help="Sampson thresholds (px²) of the mid / fine epipolar rows",
    )
    g.add_argument(
        "--weight_cls",
        "-wcls",
        type=number(float, 0, 1e6),
        default=10.0,
        help="classification weight",
    )
    g.add_argument(
        "--weight_epi",
        "-wepi",
        type=float,
        nargs="*",
        default=[1, 1],
        help="fine and mid epipolar weights",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--pretrain", type=str, default=None, help="NCNet weights (bare state_dict)")
    g.add_argument("--ckpt", type=str, default=None, help="a full checkpoint to load")
    g.add_argument(
        "--resume", action="store_true", help="continue from <experiment dir>/last_ckpt.pth"
    )
    g.add_argument(
        "--lr_init",
        "-lr",
        type=number(float, 0, 10, lo_open=True),
        default=5e-4,
        help="learning rate",
    )
    g.add_argument(
        "--lr_decay",
        "-lrd",
        type=str,
        nargs="*",
        default=None,
        help="'step FACTOR STEP' or 'multistep FACTOR M1 [M2 ...]' (per epoch)",
    )
    g.add_argument(
        "--weight_decay", "-wd", type=number(float, 0, 1), default=0, help="weight decay"
    )

    g = p.add_argument_group("new in this implementation")
    g.add_argument(
        "--device",
        type=str,
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto = cuda:<gpu> when available, else cpu",
    )
    g.add_argument("--workers", type=int, default=2, help="data-loader worker processes")
    g.add_argument(
        "--random_backbone",
        action="store_true",
        help="without --pretrain/--ckpt/--resume, start from a random backbone "
        "instead of the ImageNet ResNet-34 weights (fetched into the torch cache "
        "when missing)",
    )
    g.add_argument(
        "--max_iters_per_epoch",
        type=int,
        default=0,
        help="stop an epoch after N steps (0 = whole data set)",
    )
    g.add_argument(
        "--train_size",
        type=int,
        nargs=2,
        default=[480, 320],
        metavar=("W", "H"),
        help="training image size",
    )
    g.add_argument("--val_imsize", type=int, default=1024, help="validation image size")
    g.add_argument("--val_sample_max", type=int, default=150, help="validation pairs per scene")
    g.add_argument("--no_val", action="store_true", help="skip the per-epoch validation")
    g.add_argument(
        "--val_root",
        type=str,
        default=None,
        help="validate on these held-out COLMAP reconstructions: a folder of "
        "<scene>/dense/{images,sparse} with sparse/ov_pairs.npy (default: "
        "<data_root>/immatch_benchmark/val_dense)",
    )
    g.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")

    g = p.add_argument_group("memory, precision and several processes")
    g.add_argument(
        "--grad_ckpt",
        action="store_true",
        help="recompute each regressor chunk during backward instead of keeping its "
        "activations (same loss and gradients, much less memory, ~1.3x step time)",
    )
    g.add_argument(
        "--amp",
        type=str,
        default="off",
        choices=["off", "bf16", "fp16"],
        help="mixed precision of the regressors (off = float32 as the original; "
        "fp16 needs CUDA and uses a gradient scaler)",
    )
    g.add_argument(
        "--sync_bn",
        action="store_true",
        help="under torchrun on CUDA: synchronise the backbone's BatchNorm "
        "statistics across processes (N processes x b = one process with N*b)",
    )
    g.add_argument(
        "--dist_timeout",
        type=int,
        default=1800,
        help="under torchrun: seconds a process waits for the others (also while "
        "rank 0 validates) before the run stops with an error, so a crashed or "
        "hung rank cannot hang the run",
    )
    return p


def check_args(args: argparse.Namespace) -> None:
    """Value checks that argparse cannot express.

    Raises:
        UsageError: with a one-line message naming the flag.
    """
    positive = ("epochs", "save_step", "plot_counts", "batch", "regr_batch", "ksize")
    for name in positive:
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.regr_batch < 2:
        raise UsageError(
            f"--regr_batch must be >= 2 in training (BatchNorm cannot normalise a "
            f"chunk of one row), got {args.regr_batch}"
        )
    if args.dist_timeout <= 0:
        raise UsageError(f"--dist_timeout must be positive, got {args.dist_timeout}")
    if len(args.weight_epi) != 2:
        raise UsageError(f"--weight_epi expects 2 values (fine, mid), got {args.weight_epi}")
    if not args.feat_idx:
        raise UsageError("--feat_idx needs at least one level")
    n = len(args.conv_kers)
    if n == 0 or len(args.conv_dims) != n or len(args.conv_strs) != n:
        raise UsageError(
            "--conv_kers, --conv_dims and --conv_strs need the same number of "
            f"values, got {args.conv_kers}, {args.conv_dims}, {args.conv_strs}"
        )
    if min(args.psize) <= 0:
        raise UsageError(f"--psize must be positive, got {args.psize[0]} {args.psize[1]}")
    if args.pshift < 0:
        raise UsageError(f"--pshift must be >= 0, got {args.pshift}")
    if args.freeze_feat < 0:
        raise UsageError(f"--freeze_feat must be >= 0, got {args.freeze_feat}")
    if args.workers < 0 or args.max_iters_per_epoch < 0:
        raise UsageError("--workers and --max_iters_per_epoch must be >= 0")
    w, h = args.train_size
    if w <= 0 or h <= 0:
        raise UsageError(f"--train_size must be positive, got {w} {h}")
    unit = (8 if args.change_stride else 16) * args.ksize
    if w % unit or h % unit:
        raise UsageError(
            f"--train_size {w} {h}: both sides must be multiples of {unit} "
            "(feature stride x --ksize)"
        )
    if args.backbone != "ResNet34":
        raise UsageError(f"--backbone {args.backbone!r} is not available (only ResNet34)")
    if args.dataset != "MegaDepth":
        raise UsageError(f"--dataset {args.dataset!r} is not available (only MegaDepth)")
    if args.visdom_port is not None:
        try:
            int(args.visdom_port)
        except ValueError:
            raise UsageError(
                f"--visdom_port must be a port number, got {args.visdom_port!r}"
            ) from None
    try:
        parse_lr_decay(args.lr_decay)
    except ValueError as e:
        raise UsageError(str(e)) from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check; argparse errors exit with code 2, value errors raise UsageError."""
    args = build_parser().parse_args(argv)
    check_args(args)
    return args
