"""Regressor chunks (docs/architecture.md §4.6) and their activation checkpointing (--grad_ckpt).

- :func:`chunk_sizes`: the original's chunk bounds, in training and evaluation alike;
- :func:`checkpoint_chunk`: run one chunk's patch sampling + regressor so that backward
  recomputes its activations instead of keeping them, with BatchNorm running statistics
  updated once (by the first forward) and not again by the recomputation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


def chunk_sizes(n: int, regr_batch: int) -> list[int]:
    """Row counts of the regressor chunks of `n` rows.

    Chunks of `regr_batch` rows; when exactly one row would be left over it joins the last
    full chunk (which then has ``regr_batch + 1`` rows), as in the original. ``n == 0`` gives
    no chunk.
    """
    if regr_batch < 1:
        raise ValueError(f"regr_batch must be positive, got {regr_batch}")
    full, rest = divmod(n, regr_batch)
    if rest == 1 and full > 0:
        return [regr_batch] * (full - 1) + [regr_batch + 1]
    return [regr_batch] * full + ([rest] if rest else [])


@contextmanager
def frozen_bn_stats(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Restore every BatchNorm's running_mean / running_var / num_batches_tracked on exit.

    The forward inside still normalises with the batch statistics in train mode; only the
    running-statistics update it makes is undone (bit-exactly: the buffers are copied back).
    """
    saved: list[tuple[Tensor, Tensor]] = []
    for mod in modules:
        for m in mod.modules():
            if isinstance(m, _BatchNorm) and m.track_running_stats:
                for buf in (m.running_mean, m.running_var, m.num_batches_tracked):
                    if buf is not None:
                        saved.append((buf, buf.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


def checkpoint_chunk(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    chunk: Tensor,
    modules: Sequence[nn.Module],
) -> tuple[Tensor, Tensor]:
    """``fn(chunk)`` with its activations recomputed during backward (non-reentrant checkpoint).

    The first call of `fn` (the forward) updates the BatchNorm running statistics of
    `modules` as usual; the recomputation during backward runs under
    :func:`frozen_bn_stats`, so the statistics move once per chunk, as without checkpointing.
    The recomputation sees the same autocast state and RNG state as the forward.

    Args:
        fn: chunk (n, 4) → (refined (n, 4), probabilities (n,)); the features it samples are
            captured by the closure and kept (they are needed anyway).
        chunk: (n, 4) matches of the chunk (may require grad: the fine level's inputs are the
            mid-level outputs).
    """
    calls = 0

    def run(c: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return fn(c)
        with frozen_bn_stats(modules):
            return fn(c)

    return checkpoint(run, chunk, use_reentrant=False, preserve_rng_state=True)
