"""The training run behind ``python -m train_patch2pix`` (docs/training.md §2–§6).

- :func:`resolve_start` and :func:`select_device` resolve the start weights
  (``--pretrain``, ``--ckpt``, ``--resume``) and the device; :func:`build_training` builds
  the model (:func:`model_config`: its typed configuration) and the optimiser and scheduler,
  which the trainer owns (§2);
- :func:`train_step` is one optimisation step (§3);
- :class:`Trainer` runs the epochs: data loading, periodic log lines / metrics / Visdom
  plots (§5), checkpoints (§4, docs/file-formats.md §5, written atomically) and the per-epoch
  validation with the best-checkpoint rule (§6).

User errors raise :class:`utils.common.cli.UsageError` with a one-line message.
"""

from __future__ import annotations

import math
import random
import time
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset

from networks.config import OptimConfig, Patch2PixConfig, RegressorConfig
from networks.optim import build_optimizer
from networks.patch2pix import Patch2Pix
from networks.resnet import download_imagenet_weights, find_imagenet_weights
from utils.common.cli import UsageError
from utils.common.setup_helper import (
    CheckpointError,
    clean_stale_temporaries,
    load_checkpoint_safe,
    save_checkpoint_atomic,
    seed_all,
)
from utils.eval.model_helper import state_dict_of
from utils.train.amp import MixedPrecision
from utils.train.distributed import (
    DistInfo,
    Silent,
    barrier,
    collective_error,
    destroy_process_group,
    dist_env,
    init_process_group,
    is_collective_failure,
    local_batch,
    make_sampler,
    process_device,
    wrap_model,
)
from utils.train.eval_epoch_immatch import (
    BestTracker,
    ValidationDataMissing,
    eval_immatch_val_sets,
    resolve_val_root,
)
from utils.train.experiment import (
    BEST_CKPT,
    LAST_CKPT,
    METRICS_NAME,
    ExperimentLog,
    ExperimentTags,
    make_tags,
    save_config,
    truncate_metrics,
)
from utils.train.losses import BatchLoss, LossConfig, batch_loss
from utils.train.metrics import RunningMeans, format_means, memory_metrics, step_metrics
from utils.train.visdom_helper import VisdomPlotter, validation_means

# Regressor-config fields that decide the weight shapes (a checkpoint must agree on them).
ARCH_FIELDS = ("conv_dims", "conv_kers", "conv_strs", "fc_dims", "feat_comb", "psize", "shared")
LOG_PLOTS = ("loss", "cls_mid", "cls_fine", "cls_ratios", "match_dist")


class DataItemError(RuntimeError):
    """A training item could not be loaded (missing / unreadable image)."""


# ----------------------------------------------------------------------------- set-up
def select_device(args: Namespace) -> torch.device:
    """``--device auto|cpu|cuda`` with ``--gpu`` as the CUDA index (auto falls back to CPU)."""
    if args.device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if args.device == "cuda":
            raise UsageError("--device cuda: no CUDA device is available (use --device cpu)")
        return torch.device("cpu")
    if not 0 <= args.gpu < torch.cuda.device_count():
        raise UsageError(f"--gpu {args.gpu}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(f"cuda:{args.gpu}")


def regressor_config(args: Namespace) -> Namespace:
    """The ``regressor_config`` Namespace of the flags (``feat_dim`` None: the model fills it
    in, checkpoints store the number)."""
    return model_regressor_config(args).to_namespace()


def model_regressor_config(args: Namespace) -> RegressorConfig:
    """The regressors of the flags."""
    return RegressorConfig(
        conv_dims=tuple(args.conv_dims),
        conv_kers=tuple(args.conv_kers),
        conv_strs=tuple(args.conv_strs),
        fc_dims=tuple(args.fc_dims),
        feat_comb=args.feat_comb,
        psize=tuple(args.psize),
        pshift=args.pshift,
        panc=args.panc,
        shared=args.shared,
        feat_dim=None,
    )


@dataclass
class StartState:
    """Where training starts: weights, optimiser / scheduler states, epoch, best values."""

    weights: dict[str, torch.Tensor] | None = None
    optimizer_dict: dict | None = None
    lr_scheduler_dict: dict | None = None
    start_epoch: int = 0
    best_vals: list[float] = field(default_factory=lambda: [math.inf, 0.0, math.inf, 0.0])
    sources: list[str] = field(default_factory=list)


def _state_dict_of(obj: Any, flag: str, path: str) -> dict[str, torch.Tensor]:
    try:
        return state_dict_of(obj, path)
    except CheckpointError as e:
        raise UsageError(f"{flag}: {e}") from None


def _load(flag: str, path: str | Path) -> Any:
    try:
        return load_checkpoint_safe(path)
    except CheckpointError as e:
        raise UsageError(f"{flag}: {e}") from None


def check_architecture(ckpt: dict, args: Namespace, flag: str, path: str | Path) -> None:
    """Refuse a training checkpoint whose architecture differs from the flags.

    Raises:
        UsageError: naming the flag, the file and the first differences.
    """
    want = regressor_config(args)
    diffs = []
    for key, mine in (
        ("backbone", args.backbone),
        ("feat_idx", list(args.feat_idx)),
        ("change_stride", bool(args.change_stride)),
    ):
        theirs = ckpt.get(key)
        if theirs is not None and (list(theirs) if key == "feat_idx" else theirs) != mine:
            diffs.append(f"{key} {theirs} vs {mine}")
    rc = ckpt.get("regressor_config")
    if rc is not None:
        for key in ARCH_FIELDS:
            theirs = getattr(rc, key, None)
            mine = getattr(want, key)
            if isinstance(theirs, (list, tuple)):
                theirs = list(theirs)
            if theirs is not None and theirs != mine:
                diffs.append(f"{key} {theirs} vs {mine}")
    if diffs:
        raise UsageError(
            f"{flag} {path} is another architecture (checkpoint vs flags): " + "; ".join(diffs[:4])
        )


def resolve_start(args: Namespace, exp_dir: Path) -> StartState:
    """Start weights and states from ``--pretrain``, then ``--ckpt``, or ``--resume``.

    ``--pretrain``: a bare state_dict (or a dict with ``state_dict``) loaded non-strict.
    ``--ckpt``: a training checkpoint (docs/file-formats.md §5) whose weights are loaded on top;
    the run starts at epoch 0 with a fresh optimiser. ``--resume``:
    ``<exp_dir>/last_ckpt.pth`` restores weights, epoch, optimiser, scheduler, best values.
    """
    st = StartState()
    weights: dict[str, torch.Tensor] = {}
    if args.pretrain:
        weights.update(
            _state_dict_of(_load("--pretrain", args.pretrain), "--pretrain", args.pretrain)
        )
        st.sources.append(f"pretrain {args.pretrain}")
    if args.ckpt:
        ckpt = _load("--ckpt", args.ckpt)
        if isinstance(ckpt, dict) and "backbone" in ckpt:
            check_architecture(ckpt, args, "--ckpt", args.ckpt)
        weights.update(_state_dict_of(ckpt, "--ckpt", args.ckpt))
        st.sources.append(f"ckpt {args.ckpt}")
    if args.resume:
        path = exp_dir / LAST_CKPT
        if not path.is_file():
            raise UsageError(f"--resume: no {LAST_CKPT} in the experiment directory {exp_dir}")
        ckpt = _load("--resume", path)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "last_epoch" not in ckpt:
            raise UsageError(f"--resume: {path} is not a training checkpoint")
        check_architecture(ckpt, args, "--resume", path)
        weights = dict(ckpt["state_dict"])
        st.optimizer_dict = ckpt.get("optim")
        st.lr_scheduler_dict = ckpt.get("lr_scheduler")
        st.start_epoch = int(ckpt["last_epoch"]) + 1
        if ckpt.get("best_vals") is not None:
            st.best_vals = [float(v) for v in ckpt["best_vals"]]
        st.sources.append(f"resume {path} (last epoch {ckpt['last_epoch']})")
    st.weights = weights or None
    return st


def prepare_backbone(
    args: Namespace, start: StartState, lprint: Callable[[str], Any] = print
) -> str:
    """Make sure a run without start weights gets the ImageNet backbone (docs/training.md §2).

    Without ``--pretrain`` / ``--ckpt`` / ``--resume`` the ImageNet ResNet-34 weights are taken
    from the torch cache, downloaded into it when missing (as the original did), unless
    ``--random_backbone`` asks for a random backbone.

    Returns:
        a description of the backbone's start for the log.
    Raises:
        ImageNetWeightsError (a UsageError): the weights can be neither found nor downloaded;
            the message names the file, where to put it, and ``--random_backbone``.
    """
    if start.weights is not None:
        return ", ".join(start.sources)
    if getattr(args, "random_backbone", False):
        return "random backbone (--random_backbone)"
    path = find_imagenet_weights()
    if path is None:
        lprint("ImageNet ResNet-34 weights not in the torch cache: downloading them")
        path = download_imagenet_weights()
    return f"ImageNet backbone ({path})"


def model_config(
    args: Namespace, device: torch.device, start: StartState, lprint: Callable[[str], Any] = print
) -> Patch2PixConfig:
    """The model's configuration for the flags and the start state (docs/training.md §2).

    ``training`` stays False: the trainer builds and holds the optimiser and scheduler
    (:func:`build_optimiser`); the model itself builds none.
    """
    return Patch2PixConfig(
        device=device,
        training=False,
        backbone=args.backbone,
        change_stride=bool(args.change_stride),
        feat_idx=tuple(args.feat_idx),
        regressor_config=model_regressor_config(args),
        regr_batch=args.regr_batch,
        weights_dict=start.weights,
        freeze_feat=args.freeze_feat,
        grad_ckpt=bool(getattr(args, "grad_ckpt", False)),
        imagenet_init=False if getattr(args, "random_backbone", False) else "download",
        lprint=lprint,
        start_epoch=start.start_epoch,
        optim_config=OptimConfig(
            opt="adam",
            lr_init=float(args.lr_init),
            weight_decay=float(args.weight_decay or 0),
            lr_decay=None if args.lr_decay is None else tuple(args.lr_decay),
            optimizer_dict=start.optimizer_dict,
            lr_scheduler_dict=start.lr_scheduler_dict,
        ),
    )


def _start_flag(args: Namespace) -> str:
    return "--resume" if args.resume else ("--ckpt" if args.ckpt else "--pretrain")


def build_model(
    args: Namespace, device: torch.device, start: StartState, lprint: Callable[[str], Any] = print
) -> Patch2Pix:
    """Patch2Pix in training configuration, without optimiser (docs/training.md §2;
    :func:`build_training` adds it).

    Raises:
        UsageError: weights of another architecture.
    """
    try:
        net = Patch2Pix(model_config(args, device, start, lprint))
    except ValueError as e:
        raise UsageError(f"{_start_flag(args)}: {e}") from None
    except RuntimeError as e:  # strict load_state_dict
        first = str(e).strip().splitlines()[0]
        raise UsageError(
            f"{_start_flag(args)}: weights or optimiser state do not fit: {first}"
        ) from None
    if args.weight_epi[0] == 0:
        # As the original: a zero fine epipolar weight freezes regress_mid (sic). (It stays
        # in the optimiser, which skips parameters without gradient.)
        for p in net.regress_mid.parameters():
            p.requires_grad_(False)
        lprint("weight_epi[0] == 0: regress_mid is frozen (as in the original)")
    return net


def build_optimiser(
    net: Patch2Pix, args: Namespace, start: StartState
) -> tuple[torch.optim.Optimizer, LRScheduler | None]:
    """The run's optimiser and LR scheduler (networks/optim.py), with the saved states of
    ``--resume``; freezes the backbone parameters (docs/training.md §2).

    Raises:
        UsageError: a bad ``--lr_decay``, or an optimiser / scheduler state that does not fit.
    """
    try:
        return build_optimizer(net, model_config(args, net.device, start))
    except ValueError as e:
        msg = str(e)
        if "--lr_decay" in msg:
            raise UsageError(msg) from None
        raise UsageError(f"{_start_flag(args)}: {msg}") from None
    except RuntimeError as e:  # optimiser state mismatch
        first = str(e).strip().splitlines()[0]
        raise UsageError(
            f"{_start_flag(args)}: weights or optimiser state do not fit: {first}"
        ) from None


def build_training(
    args: Namespace, device: torch.device, start: StartState, lprint: Callable[[str], Any] = print
) -> tuple[Patch2Pix, torch.optim.Optimizer, LRScheduler | None]:
    """The model (:func:`build_model`) with the optimiser and scheduler the trainer owns
    (:func:`build_optimiser`)."""
    net = build_model(args, device, start, lprint)
    optimizer, lr_scheduler = build_optimiser(net, args, start)
    return net, optimizer, lr_scheduler


# ----------------------------------------------------------------------------- data
class ItemErrors(Dataset):
    """Wraps a dataset so that a bad item raises DataItemError with a one-line reason."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self.ds[index]
        except (OSError, ValueError) as e:
            raise DataItemError(f"training pair {index}: {e}") from None


def data_item_message(err: BaseException) -> str:
    """The one-line reason of a DataItemError, also when re-raised by a loader worker."""
    lines = [x for x in str(err).strip().splitlines() if x.strip()]
    last = lines[-1] if lines else repr(err)
    marker = "DataItemError: "
    return last.split(marker, 1)[1] if marker in last else last


def _seed_worker(worker_id: int) -> None:
    """Per-worker seeds of numpy and random from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_dataset(args: Namespace) -> Dataset:
    """ImMatchDatasetMega in 'pair' mode at ``--train_size``.

    Raises:
        UsageError: missing data root / pair file, or a pair file without pairs.
    """
    from utils.datasets import ImMatchDatasetMega

    pair_file = Path(args.pair_root) / args.match_npy
    if not pair_file.is_file():
        raise UsageError(
            f"pair file not found: {pair_file} (--pair_root / --match_npy; "
            "generate it with python -m data_pairs.prep_megadepth_training_pairs "
            "or data_pairs.prep_colmap_training_pairs)"
        )
    w, h = args.train_size
    try:
        ds = ImMatchDatasetMega(args.data_root, pair_file, wt=w, ht=h, item_type="pair")
    except (FileNotFoundError, ValueError) as e:
        # Pair files with absolute image folders need no data root; the others name it.
        if isinstance(e, FileNotFoundError) and not Path(args.data_root).is_dir():
            raise UsageError(f"--data_root {args.data_root}: folder not found ({e})") from None
        raise UsageError(str(e)) from None
    return ItemErrors(ds)


def make_loader(
    ds: Dataset,
    args: Namespace,
    epoch: int,
    device: torch.device,
    dist_info: DistInfo | None = None,
) -> DataLoader:
    """Shuffled loader whose order depends only on (seed, epoch), so resumes are exact.

    Under torchrun (`dist_info` with several processes) each process loads its share of
    ``--batch`` through a DistributedSampler re-shuffled per epoch (utils/train/distributed).
    """
    gen = torch.Generator()
    gen.manual_seed(args.seed * 1000 + epoch)
    common = dict(
        num_workers=args.workers,
        generator=gen,
        worker_init_fn=_seed_worker,
        drop_last=False,
        pin_memory=device.type == "cuda",
    )
    if dist_info is not None and dist_info.enabled:
        sampler = make_sampler(ds, dist_info, args.seed)
        sampler.set_epoch(epoch)
        return DataLoader(
            ds, batch_size=local_batch(args.batch, dist_info), sampler=sampler, **common
        )
    return DataLoader(ds, batch_size=args.batch, shuffle=True, **common)


# ----------------------------------------------------------------------------- one step
def train_step(
    net: Patch2Pix,
    batch: dict[str, Any],
    loss_cfg: LossConfig,
    ksize: int,
    ptmax: int,
    amp: MixedPrecision | None = None,
    forward: Callable[..., tuple] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[BatchLoss, dict[str, dict[str, float]]]:
    """One optimisation step (docs/training.md §3).

    Args:
        net: model in train mode.
        batch: ``src_im`` (B, 3, H, W), ``pos_im`` (B, 3, H, W), ``F`` (B, 3, 3).
        amp: mixed precision (``--amp``); None = float32. Only the forward runs under
            autocast; the loss is computed in float32 (utils/train/amp.py says why).
        forward: what computes ``net.forward_train(im_src, im_pos, ksize=, ptmax=)``: the
            DistributedDataParallel wrapper under torchrun (utils/train/distributed.py).
        optimizer: the step's optimiser (the trainer's, :func:`build_training`); None:
            ``net.optimizer``, that of a model built the original's way (``training=True``
            or ``set_optimizer``).
    Returns:
        the :class:`BatchLoss` and the step metrics ``{plot: {legend: value}}``. A batch
        whose pairs were all skipped contributes a zero loss and still makes the Adam step
        (docs/training.md §3.5: momentum moves the weights, the step count advances).
    """
    optimizer = optimizer if optimizer is not None else net.optimizer
    if optimizer is None:
        raise ValueError("train_step needs an optimiser (build_training, or net.set_optimizer)")
    dev = net.device
    im_src = batch["src_im"].to(dev, non_blocking=True)
    im_pos = batch["pos_im"].to(dev, non_blocking=True)
    Fs = batch["F"].to(dev, non_blocking=True)
    amp = amp or MixedPrecision("off", dev)
    with amp.autocast():
        coarse, mid, mid_p, fine, fine_p = (forward or net.forward_train)(
            im_src, im_pos, ksize=ksize, ptmax=ptmax
        )
    out = batch_loss(coarse, mid, mid_p, fine, fine_p, Fs, loss_cfg)
    optimizer.zero_grad(set_to_none=True)
    # a zero loss (still connected) when every pair was skipped
    amp.backward_and_step(out.loss, optimizer)
    metrics = step_metrics(out, mid_p, fine_p, loss_cfg.cthres)
    return out, metrics


# ----------------------------------------------------------------------------- the run
def checkpoint_dict(
    net: Patch2Pix,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: LRScheduler | None,
    epoch: int,
    best_vals: list[float],
) -> dict:
    """The training checkpoint of docs/file-formats.md §5: the model's configuration as the
    original's entries (:meth:`Patch2PixConfig.checkpoint_fields`), weights and states."""
    ckpt = {
        "last_epoch": int(epoch),
        "best_vals": [float(v) for v in best_vals],
        **net.model_config.checkpoint_fields(),
        "state_dict": net.state_dict(),
        "optim": optimizer.state_dict(),
    }
    if lr_scheduler is not None:
        ckpt["lr_scheduler"] = lr_scheduler.state_dict()
    return ckpt


def echo_above_progress(msg: str) -> None:
    """Print a log line without breaking a running tqdm progress bar."""
    from tqdm import tqdm

    tqdm.write(msg)


class Trainer:
    """Runs the epochs of one experiment (docs/training.md §3–§6).

    Args:
        args: the parsed flags (utils.train.cli).
        echo: where log lines are echoed besides log.txt (None: silent).
    """

    def __init__(
        self, args: Namespace, echo: Callable[[str], Any] | None = echo_above_progress
    ) -> None:
        self.args = args
        self.tags: ExperimentTags = make_tags(args)
        self.exp_dir = self.tags.exp_dir(args.out_dir)
        self.dist = dist_env()
        self.device = process_device(args, self.dist) if self.dist.enabled else select_device(args)
        local_batch(args.batch, self.dist)  # --batch must divide over the processes
        if getattr(args, "sync_bn", False) and self.device.type != "cuda":
            raise UsageError("--sync_bn needs CUDA (SyncBatchNorm across torchrun processes)")
        self.amp = MixedPrecision.create(getattr(args, "amp", "off"), self.device)
        self.loss_cfg = LossConfig.from_args(args)
        # Fail fast on user errors before creating anything on disk.
        self.dataset = build_dataset(args)
        val_flag = getattr(args, "val_root", None)
        if val_flag and not args.no_val:
            try:
                resolve_val_root(val_flag)
            except ValidationDataMissing as e:
                raise UsageError(f"--val_root {val_flag}: {e}") from None
        start = resolve_start(args, self.exp_dir)
        start_desc = prepare_backbone(args, start, lprint=echo or (lambda _msg: None))
        timeout = float(getattr(args, "dist_timeout", 1800))
        init_process_group(self.dist, self.device, timeout)
        # Only rank 0 writes files, plots and validates (utils/train/distributed.py).
        stale: list[Path] = []
        dropped = 0
        if self.dist.is_main:
            # a run killed while writing a checkpoint leaves write_atomic's temporary file
            stale = clean_stale_temporaries(self.exp_dir)
            if args.resume:  # the resumed epoch is re-run: drop its (partial) records
                dropped = truncate_metrics(self.exp_dir / METRICS_NAME, start.start_epoch)
        self.log = ExperimentLog(self.exp_dir, echo=echo) if self.dist.is_main else Silent()
        try:
            if args.resume:
                self.log(f"\n>>>>>> Resuming at epoch {start.start_epoch}")
                if dropped:
                    self.log(
                        f"{METRICS_NAME}: dropped {dropped} record(s) of epochs >= "
                        f"{start.start_epoch} (re-run now)"
                    )
            if stale:
                self.log(f"Removed {len(stale)} stale temporary file(s) of a killed run")
            self.log.log_config(args)
            if self.dist.is_main:
                save_config(args, self.exp_dir)
            if self.dist.enabled:
                self.log(
                    f"torchrun: {self.dist.world_size} processes, "
                    f"{local_batch(args.batch, self.dist)} pairs each per step "
                    f"(--batch {args.batch} global); collectives wait at most "
                    f"{timeout:g} s; SyncBatchNorm in the backbone: "
                    f"{bool(getattr(args, 'sync_bn', False))}"
                )
            self.log(
                f"Experiment dir: {self.exp_dir}\nVisdom env: {self.tags.visdom_env}\n"
                f"Device: {self.device}; data: {len(self.dataset)} pairs, "
                f"{args.train_size[0]}x{args.train_size[1]}; start weights: "
                f"{start_desc}"
            )
            self.start_epoch = start.start_epoch
            seed_all(args.seed + self.start_epoch)
            self.best = BestTracker(list(start.best_vals))
            # The trainer owns the optimiser and scheduler (the model builds none).
            self.net, self.optimizer, self.lr_scheduler = build_training(
                args, self.device, start, lprint=self.log
            )
            n_train = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
            self.log(f"Trainable parameters: {n_train}")
            if getattr(args, "sync_bn", False) and not self.dist.enabled:
                self.log("--sync_bn: one process, plain BatchNorm (nothing to synchronise)")
            self.forward = (
                wrap_model(self.net, self.dist, self.device, bool(getattr(args, "sync_bn", False)))
                if self.dist.enabled
                else None
            )
            self.vis = (
                VisdomPlotter(
                    args.visdom_host, args.visdom_port, self.tags.visdom_env, lprint=self.log
                )
                if self.dist.is_main
                else Silent()
            )
            self.val_root: Path | None = None
            if args.no_val:
                self.log("Validation disabled (--no_val).")
            else:
                try:
                    self.val_root = resolve_val_root(val_flag or args.data_root)
                except ValidationDataMissing as e:
                    self.log(f"Validation skipped for the whole run: {e}")
            if not self.dist.is_main:
                self.val_root = None  # rank 0 validates
        except BaseException:
            self.log.close()
            destroy_process_group()
            raise

    # -------------------------------------------------------------- epochs
    def run(self) -> None:
        """Train from the start epoch up to ``--epochs`` (exclusive)."""
        args = self.args
        if self.start_epoch >= args.epochs:
            self.log(
                f"Nothing to do: last epoch {self.start_epoch - 1} >= --epochs {args.epochs} - 1"
            )
            destroy_process_group()
            return
        try:
            for epoch in range(self.start_epoch, args.epochs):
                self.train_epoch(epoch)
                self.end_epoch(epoch)
                barrier()  # the others wait while rank 0 saves and validates
        except (RuntimeError, OSError) as e:
            if self.dist.enabled and is_collective_failure(e):
                raise collective_error(e, self.dist, getattr(args, "dist_timeout", 1800)) from None
            raise
        finally:
            self.log.close()
            destroy_process_group()

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_epoch(self, epoch: int) -> None:
        """One pass over the data (or ``--max_iters_per_epoch`` steps)."""
        from tqdm import tqdm

        args = self.args
        self.net.train()
        loader = make_loader(self.dataset, args, epoch, self.device, self.dist)
        n_iters = len(loader)
        if args.max_iters_per_epoch:
            n_iters = min(n_iters, args.max_iters_per_epoch)
        interval = max(1, n_iters // args.plot_counts)
        since_plot, whole_epoch = RunningMeans(), RunningMeans()
        skipped = 0
        t_epoch = t_plot = time.time()
        self.log(f"\n>>>>>> Epoch {epoch} ({n_iters} steps, lr {self._lr():.3g})")
        bar = tqdm(
            total=n_iters,
            desc=f"epoch {epoch}",
            disable=args.no_progress,
            dynamic_ncols=True,
            leave=False,
        )
        it = iter(loader)
        try:
            for i in range(n_iters):
                try:
                    batch = next(it)
                except DataItemError as e:
                    raise UsageError(data_item_message(e)) from None
                out, metrics = train_step(
                    self.net,
                    batch,
                    self.loss_cfg,
                    args.ksize,
                    args.ptmax,
                    amp=self.amp,
                    forward=self.forward,
                    optimizer=self.optimizer,
                )
                skipped += len(out.skipped)
                metrics["mem"] = memory_metrics(self.device)
                since_plot.update(metrics)
                whole_epoch.update(metrics)
                bar.update(1)
                if "pair" in metrics.get("loss", {}):
                    bar.set_postfix(loss=f"{metrics['loss']['pair']:.3f}")
                if (i + 1) % interval == 0 or i + 1 == n_iters:
                    x = epoch + (i + 1) / n_iters
                    means = since_plot.means()
                    dt = (time.time() - t_plot) / max(1, (i % interval) + 1)
                    self.log(
                        f"[ep {epoch} it {i + 1}/{n_iters}] {format_means(means, LOG_PLOTS)}"
                        f" | lr={self._lr():.3g} | {dt:.2f}s/it"
                    )
                    self.log.metrics(
                        {
                            "kind": "train",
                            "epoch": epoch,
                            "iter": i + 1,
                            "x": x,
                            "lr": self._lr(),
                            **means,
                        }
                    )
                    self.vis.plot("train", x, means)
                    since_plot.reset()
                    t_plot = time.time()
        finally:
            bar.close()
            del it
        means = whole_epoch.means()
        dt = time.time() - t_epoch
        self.log(
            f">>Epoch {epoch} done in {dt:.1f}s ({skipped} skipped pairs): "
            f"{format_means(means, LOG_PLOTS)} | lr={self._lr():.3g}"
        )
        self.log.metrics(
            {
                "kind": "epoch",
                "epoch": epoch,
                "seconds": dt,
                "skipped": skipped,
                "lr": self._lr(),
                **means,
            }
        )

    def _save(self, name: str, epoch: int) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint_atomic(
            checkpoint_dict(self.net, self.optimizer, self.lr_scheduler, epoch, self.best.vals),
            self.exp_dir / name,
        )

    def end_epoch(self, epoch: int) -> None:
        """Scheduler step, checkpoints, validation and the best checkpoint."""
        args = self.args
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self._save(LAST_CKPT, epoch)
        if (epoch + 1) % args.save_step == 0:
            self._save(f"ckpt_ep{epoch + 1}.pth", epoch)
        if self.val_root is None:
            return
        try:
            res = eval_immatch_val_sets(
                self.net,
                self.val_root,
                ksize=args.ksize,
                eval_type="fine",
                io_thres=0.5,
                ncn_thres=0.0,
                imsize=args.val_imsize,
                rthres=0.5,
                sample_max=args.val_sample_max,
                min_overlap=0.3,
                lprint_=self.log,
            )
        except Exception as e:  # noqa: BLE001 - a failed validation must not stop training
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self.log(f"Validation failed at epoch {epoch}: {type(e).__name__}: {reason}")
            self.log.metrics(
                {"kind": "val_error", "epoch": epoch, "error": f"{type(e).__name__}: {reason}"}
            )
            return
        finally:
            self.net.train()
        improved = self.best.update(res)
        self.log.metrics(
            {
                "kind": "val",
                "epoch": epoch,
                "improved": improved,
                "best_vals": self.best.vals,
                **res.as_dict(),
            }
        )
        self.vis.plot("test", epoch + 1, validation_means(res.as_dict()))
        if improved:
            self._save(BEST_CKPT, epoch)
            self._save(LAST_CKPT, epoch)  # carries the new best values for --resume
            self.log(f"Validation improved: best_vals={self.best.vals}; saved {BEST_CKPT}")
