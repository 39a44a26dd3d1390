"""Match extraction from a 4D correlation volume (docs/architecture.md §3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def corr_to_matches(
    corr4d: Tensor,
    delta4d: Sequence[Tensor] | None = None,
    ksize: int = 1,
    do_softmax: bool = True,
    invert_matching_direction: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One match proposal per cell of one image, as integer grid indices.

    Default direction A←B: for each B cell (row-major) the best A cell after a softmax over
    the A axis. ``invert_matching_direction`` gives B←A: for each A cell the best B cell.
    With relocalisation (`delta4d` from `maxpool4d`, `ksize` > 1) the indices are mapped to
    the ksize-times finer grid with the stored offsets: ``i * ksize + di``.

    Args:
        corr4d: (B, 1, H1, W1, H2, W2).
        delta4d: (max_i, max_j, max_k, max_l), each (B, 1, H1, W1, H2, W2) int64, or None.
    Returns:
        xA, yA, xB, yB (int64, (B, N)) and score (B, N); N = H2·W2 (A←B) or H1·W1 (B←A).
    """
    b, _, h1, w1, h2, w2 = corr4d.shape
    device = corr4d.device
    if invert_matching_direction:
        vol = corr4d.reshape(b, h1 * w1, h2 * w2)
        if do_softmax:
            vol = torch.softmax(vol, dim=2)
        score, idx_b = vol.max(dim=2)  # (B, H1*W1)
        idx_a = torch.arange(h1 * w1, device=device).expand(b, -1)
    else:
        vol = corr4d.reshape(b, h1 * w1, h2 * w2)
        if do_softmax:
            vol = torch.softmax(vol, dim=1)
        score, idx_a = vol.max(dim=1)  # (B, H2*W2)
        idx_b = torch.arange(h2 * w2, device=device).expand(b, -1)
    iA, jA = idx_a // w1, idx_a % w1
    iB, jB = idx_b // w2, idx_b % w2
    if delta4d is not None and ksize > 1:
        flat = (idx_a * (h2 * w2) + idx_b).reshape(b, -1)  # index into (H1*W1*H2*W2)
        di, dj, dk, dl = (d.reshape(b, -1).gather(1, flat) for d in delta4d)
        iA, jA = iA * ksize + di, jA * ksize + dj
        iB, jB = iB * ksize + dk, jB * ksize + dl
    return jA, iA, jB, iB, score
