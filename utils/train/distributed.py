"""Data-parallel training under ``torchrun --nproc_per_node N -m train_patch2pix ...``.

One process per device (NCCL on CUDA, gloo on CPU), started by torchrun, which sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; without them (a plain ``python -m``) nothing here
changes the run. The flags keep their meaning:

- ``--batch`` is the global batch of the paper command, split evenly across the processes
  (each runs ``batch / N`` pairs per step; a batch that does not divide is a usage error);
- each process draws its pairs through a :class:`DistributedSampler` re-shuffled per epoch
  (``set_epoch``) from ``--seed``;
- gradients are averaged by :class:`DistributedDataParallel` (the step equals one process
  that averages the N processes' gradients), so every process keeps the same weights;
- only rank 0 writes logs, metrics, Visdom plots, ``config.json`` and checkpoints (the same
  single-model format as a one-process run) and runs the validation;
- every collective waits at most ``--dist_timeout`` seconds: a process that crashed or hangs
  ends the run with one line (:class:`DistributedError`) instead of blocking the others;
- ``--sync_bn`` (CUDA) turns the backbone's BatchNorm layers into SyncBatchNorm (off by
  default, README "Several GPUs" says why). The regressors' BatchNorm stays per process: its
  statistics are those of each image's own chunks (docs/architecture.md §4.6), as in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from utils.common.cli import UsageError


class DistributedError(RuntimeError):
    """Another process of the run crashed, hung past ``--dist_timeout`` or left."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the run (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and validates."""
        return self.rank == 0


def dist_env(env: dict[str, str] | None = None) -> DistInfo:
    """The process's place from torchrun's environment variables (defaults: one process).

    Raises:
        UsageError: malformed RANK / WORLD_SIZE / LOCAL_RANK.
    """
    env = os.environ if env is None else env
    try:
        info = DistInfo(
            int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
        )
    except ValueError:
        raise UsageError(
            "RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun)"
        ) from None
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise UsageError(
            f"bad torchrun environment: RANK {info.rank}, WORLD_SIZE {info.world_size}"
        )
    return info


def local_batch(batch: int, info: DistInfo) -> int:
    """Per-process batch of the global ``--batch``.

    Raises:
        UsageError: when ``--batch`` does not divide by the number of processes.
    """
    if batch % info.world_size:
        raise UsageError(
            f"--batch {batch} is the global batch and must divide evenly over the "
            f"{info.world_size} processes of torchrun (e.g. --batch "
            f"{info.world_size * max(1, batch // info.world_size)})"
        )
    return batch // info.world_size


def process_device(args: Any, info: DistInfo) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` under torchrun on CUDA (``--gpu`` is then
    ignored), else CPU; ``--device cuda`` without CUDA is a usage error."""
    want_cuda = args.device in ("auto", "cuda") and torch.cuda.is_available()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu)")
    if not want_cuda:
        return torch.device("cpu")
    if info.local_rank >= torch.cuda.device_count():
        raise UsageError(
            f"torchrun LOCAL_RANK {info.local_rank}: only "
            f"{torch.cuda.device_count()} CUDA device(s) on this machine"
        )
    torch.cuda.set_device(info.local_rank)
    return torch.device(f"cuda:{info.local_rank}")


def init_process_group(info: DistInfo, device: torch.device, timeout_s: float) -> None:
    """Join the run's process group (NCCL on CUDA, gloo on CPU); every collective then waits
    at most `timeout_s` seconds."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, rank=info.rank, world_size=info.world_size, timeout=timedelta(seconds=timeout_s)
    )


def destroy_process_group() -> None:
    """Leave the process group (if joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def make_sampler(ds: Dataset, info: DistInfo, seed: int) -> DistributedSampler:
    """Shuffling sampler over this process's share; call ``set_epoch`` every epoch."""
    return DistributedSampler(
        ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=False
    )


class TrainForward(nn.Module):
    """``forward(im_src, im_pos, ksize, ptmax)`` = ``net.forward_train``: the module that
    DistributedDataParallel wraps (it owns `net`, so its parameters are the model's)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, im_src: Tensor, im_pos: Tensor, ksize: int = 2, ptmax: int = 400) -> tuple:
        """See ``Patch2Pix.forward_train``: (B, 3, H, W) image batches → per-pair lists."""
        return self.net.forward_train(im_src, im_pos, ksize=ksize, ptmax=ptmax)


def wrap_model(
    net: nn.Module, info: DistInfo, device: torch.device, sync_bn: bool = False
) -> DistributedDataParallel:
    """DistributedDataParallel around `net`'s training forward.

    ``find_unused_parameters``: the NCN and the unfrozen backbone layers are optimised (as in
    the original) but get no gradient from the loss (the coarse matches are an argmax), and a
    zero ``--weight_epi`` freezes a regressor. With `sync_bn` (CUDA only) the backbone's
    BatchNorm layers become SyncBatchNorm (same Parameter objects: the optimiser is kept).

    Raises:
        UsageError: `sync_bn` off CUDA.
    """
    if sync_bn:
        if device.type != "cuda":
            raise UsageError("--sync_bn needs CUDA (SyncBatchNorm); on CPU leave it off")
        net.extract = nn.SyncBatchNorm.convert_sync_batchnorm(net.extract)
    return DistributedDataParallel(
        TrainForward(net),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def collective_error(err: BaseException, info: DistInfo, timeout_s: float) -> DistributedError:
    """The one-line error of a failed collective in this process."""
    lines = [x for x in str(err).strip().splitlines() if x.strip()]
    first = lines[0][:200] if lines else type(err).__name__
    return DistributedError(
        f"rank {info.rank}/{info.world_size}: another process crashed, left or did not answer "
        f"within --dist_timeout {timeout_s:g} s ({type(err).__name__}: {first})"
    )


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


class Silent:
    """Stands in for the log / Visdom plotter on ranks other than 0: every method is a no-op."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Silent:
        return self


def is_collective_failure(err: BaseException) -> bool:
    """Whether `err` is a failed / timed-out collective (peer crashed, left, or hung)."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text
        for s in (
            "gloo",
            "Gloo",
            "NCCL",
            "Connection closed",
            "Connection reset",
            "Timed out",
            "timed out",
            "Broken pipe",
            "ProcessGroup",
        )
    )
