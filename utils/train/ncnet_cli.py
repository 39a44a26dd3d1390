"""Command line of ``python -m train_ncnet``: NCNet's flags where NCNet has them.

NCNet (Rocco et al., NeurIPS 2018) names: ``--dataset_image_path``, ``--dataset_csv_path``
(``train_pairs.csv`` / ``val_pairs.csv`` inside), ``--num_epochs``, ``--batch_size``,
``--lr``, ``--image_size``, ``--ncons_kernel_sizes``, ``--ncons_channels``,
``--fe_finetune_params``, ``--checkpoint``, ``--result_model_fn``, ``--result_model_dir``
(also spelled ``--result-model-dir`` as NCNet does). Its defaults are kept except the
neighbourhood-consensus shape: NCNet's own is 5,5,5 / 16,16,1, this trainer's is Patch2Pix's
``ncn`` (3,3 / 16,1), the only one whose weights load into Patch2Pix.

Beyond NCNet: Patch2Pix pair files (``--pair_file``, ``--val_pair_file``, ``--data_root``)
as positive pairs with geometry, relocalisation ``--ksize`` and the stride-8 layer3 of
Patch2Pix (``--no_change_stride`` turns it off), device, workers, resume, Visdom.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from utils.common.cli import UsageError, make_parser

__all__ = ["build_parser", "check_args", "parse_args", "N_FINETUNE_BLOCKS"]

MODULE = "train_ncnet"
# residual blocks of the extractor that --fe_finetune_params can unfreeze, counted from the
# end: layer3 (6 blocks), layer2 (4), layer1 (3)
N_FINETUNE_BLOCKS = 13
PATCH2PIX_NCN = ([3, 3], [16, 1])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m train_ncnet``."""
    p = make_parser(
        MODULE,
        "Train the coarse stage (ResNet-34 features + neighbourhood consensus) with NCNet's "
        "weakly supervised loss; writes ncn_ivd_5ep.pth-format weights for "
        "train_patch2pix --pretrain.",
    )
    g = p.add_argument_group("NCNet's flags")
    g.add_argument("--checkpoint", type=str, default="", help="start weights (.pth)")
    g.add_argument(
        "--image_size",
        type=int,
        nargs="+",
        default=[400],
        metavar="S",
        help="input size: S (S×S, NCNet) or W H; multiples of upsample*ksize (16)",
    )
    g.add_argument(
        "--dataset_image_path",
        type=str,
        default="datasets/ivd",
        help="folder the CSV image paths are relative to",
    )
    g.add_argument(
        "--dataset_csv_path",
        type=str,
        default="datasets/ivd/image_pairs/",
        help="folder of train_pairs.csv and val_pairs.csv",
    )
    g.add_argument("--num_epochs", type=int, default=5, help="training epochs")
    g.add_argument("--batch_size", type=int, default=16, help="pairs per step (>= 2)")
    g.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate")
    g.add_argument(
        "--ncons_kernel_sizes",
        type=int,
        nargs="+",
        default=PATCH2PIX_NCN[0],
        help="neighbourhood consensus kernels (Patch2Pix: 3 3)",
    )
    g.add_argument(
        "--ncons_channels",
        type=int,
        nargs="+",
        default=PATCH2PIX_NCN[1],
        help="neighbourhood consensus channels (Patch2Pix: 16 1)",
    )
    g.add_argument(
        "--result_model_fn",
        type=str,
        default="ncn",
        help="experiment name: weights and logs go to <result_model_dir>/<result_model_fn>/",
    )
    g.add_argument(
        "--result_model_dir",
        "--result-model-dir",
        dest="result_model_dir",
        type=str,
        default="output/ncnet",
        help="output root",
    )
    g.add_argument(
        "--fe_finetune_params",
        type=int,
        default=0,
        help=f"train the last N residual blocks of the extractor (0-{N_FINETUNE_BLOCKS}, "
        "counted back from the end of layer3)",
    )

    g.add_argument(
        "--fe_bn_train",
        action="store_true",
        help="the fine-tuned blocks normalise with batch statistics (train-mode BatchNorm, "
        "running statistics updated) instead of NCNet's frozen ones: for a random start, "
        "whose running statistics mean nothing",
    )

    g.add_argument(
        "--bn_recalib_batches",
        type=int,
        default=8,
        help="with --fe_bn_train: after each epoch, recompute the running statistics over "
        "this many training batches (0: keep the momentum averages)",
    )

    g = p.add_argument_group("pair files instead of IVD CSVs (positive pairs with geometry)")
    g.add_argument(
        "--pair_file",
        type=str,
        default=None,
        help="training pairs: a Patch2Pix pair file (.npy, data_pairs.prep_*_training_pairs)",
    )
    g.add_argument("--val_pair_file", type=str, default=None, help="held-out pairs (pair file)")
    g.add_argument(
        "--data_root",
        type=str,
        default="data",
        help="data root of the pair files (holds MegaDepth_undistort/)",
    )
    g.add_argument(
        "--val_data_root",
        type=str,
        default=None,
        help="data root of --val_pair_file (default: --data_root)",
    )

    g = p.add_argument_group("new in this implementation")
    g.add_argument("--ksize", type=int, default=2, help="relocalisation pooling size")
    g.add_argument(
        "--no_change_stride",
        action="store_true",
        help="keep layer3 at stride 16 (Patch2Pix uses stride 8)",
    )
    g.add_argument(
        "--random_backbone",
        action="store_true",
        help="without --checkpoint/--resume, start from a random extractor instead of the "
        "ImageNet ResNet-34 weights (fetched into the torch cache when missing)",
    )
    g.add_argument("--resume", action="store_true", help="continue from <exp dir>/last_ckpt.pth")
    g.add_argument("--seed", type=int, default=1, help="random seed")
    g.add_argument(
        "--device", type=str, default="auto", choices=["auto", "cpu", "cuda"], help="device"
    )
    g.add_argument("--gpu", type=int, default=0, help="CUDA index")
    g.add_argument("--workers", type=int, default=2, help="data-loader worker processes")
    g.add_argument(
        "--max_iters_per_epoch", type=int, default=0, help="stop an epoch after N steps (0: all)"
    )
    g.add_argument(
        "--val_max_pairs", type=int, default=0, help="validate on the first N pairs (0: all)"
    )
    g.add_argument(
        "--val_epi_thres",
        type=float,
        default=50.0,
        help="a coarse match is correct when its Sampson distance (px², at the input size) "
        "is below this (Patch2Pix's mid-level threshold)",
    )
    g.add_argument("--plot_counts", type=int, default=5, help="log lines / plots per epoch")
    g.add_argument("--visdom_host", "-vh", type=str, default=None, help="Visdom host")
    g.add_argument("--visdom_port", "-vp", type=str, default=None, help="Visdom port")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validate ranges and combinations; normalise ``image_size`` to [W, H].

    Raises:
        UsageError: naming the flag.
    """
    if len(args.image_size) not in (1, 2):
        raise UsageError(f"--image_size takes S or W H, got {len(args.image_size)} values")
    size = list(args.image_size) * (2 if len(args.image_size) == 1 else 1)
    upsample = 16 if args.no_change_stride else 8
    mult = upsample * max(args.ksize, 1)
    if args.ksize < 1 or args.ksize > 8:
        raise UsageError(f"--ksize must be in 1..8, got {args.ksize}")
    if any(s < 2 * mult or s % mult for s in size):
        raise UsageError(
            f"--image_size {' '.join(map(str, args.image_size))}: each side must be a "
            f"multiple of upsample*ksize = {mult} and at least {2 * mult}"
        )
    args.image_size = size
    for flag, value, lo in (
        ("--num_epochs", args.num_epochs, 1),
        ("--batch_size", args.batch_size, 2),
        ("--workers", args.workers, 0),
        ("--max_iters_per_epoch", args.max_iters_per_epoch, 0),
        ("--val_max_pairs", args.val_max_pairs, 0),
        ("--bn_recalib_batches", args.bn_recalib_batches, 0),
        ("--plot_counts", args.plot_counts, 1),
        ("--seed", args.seed, 0),
        ("--gpu", args.gpu, 0),
    ):
        if value < lo:
            why = " (negatives are the batch rolled by one)" if flag == "--batch_size" else ""
            raise UsageError(f"{flag} must be at least {lo}, got {value}{why}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive finite number, got {args.lr}")
    if not (math.isfinite(args.val_epi_thres) and args.val_epi_thres > 0):
        raise UsageError(f"--val_epi_thres must be positive and finite, got {args.val_epi_thres}")
    if not 0 <= args.fe_finetune_params <= N_FINETUNE_BLOCKS:
        raise UsageError(
            f"--fe_finetune_params must be in 0..{N_FINETUNE_BLOCKS} (residual blocks of "
            f"layer1-layer3), got {args.fe_finetune_params}"
        )
    if (list(args.ncons_kernel_sizes), list(args.ncons_channels)) != PATCH2PIX_NCN:
        raise UsageError(
            "--ncons_kernel_sizes / --ncons_channels: only Patch2Pix's neighbourhood "
            "consensus (3 3 / 16 1) is supported: its weights are what train_patch2pix "
            f"--pretrain loads (got {args.ncons_kernel_sizes} / {args.ncons_channels})"
        )
    if args.val_pair_file and not args.pair_file:
        raise UsageError("--val_pair_file needs --pair_file (training pairs of the same kind)")
    if args.fe_bn_train and not args.fe_finetune_params:
        raise UsageError("--fe_bn_train needs --fe_finetune_params N > 0 (blocks to train)")
    if args.checkpoint and args.resume:
        raise UsageError("--checkpoint and --resume exclude each other")
    name = args.result_model_fn
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UsageError(f"--result_model_fn must be a plain folder name, got {name!r}")
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate the flags (UsageError for invalid values)."""
    return check_args(build_parser().parse_args(argv))
