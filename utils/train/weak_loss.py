"""NCNet's weakly supervised loss (Rocco et al., NeurIPS 2018) on a 4D correlation volume.

A positive pair should give a *peaked* correlation: after a softmax over all cells of one
image, the best cell of the other image takes most of the mass. A negative pair (two
unrelated images) should not. The loss asks the mean peak of the positives to rise above
that of the negatives:

    score(corr) = mean over batch and cells of (max_A softmax_A + max_B softmax_B) / 2
    loss        = score(corr of negative pairs) - score(corr of positive pairs)

Negatives are the positive batch with the source images rolled by one position
(``source[roll(arange(b), -1)]``), so every source meets another pair's target; a batch
needs at least two pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["weak_score", "weak_loss", "negative_order"]


def weak_score(corr4d: Tensor) -> Tensor:
    """Mean peak of the two softmax-normalised views of a correlation volume.

    Args:
        corr4d: (B, 1, H1, W1, H2, W2) correlation (the model's final ``corr``).
    Returns:
        scalar: ``(mean_{b,B-cells} max_A softmax_A + mean_{b,A-cells} max_B softmax_B) / 2``,
        where ``softmax_A`` normalises over all A cells (H1·W1) for each B cell and
        ``softmax_B`` over all B cells (H2·W2) for each A cell. In [0, 1]: 1 for one-hot
        columns and rows, ``1 / cells`` for a flat volume. For square volumes (NCNet's
        400×400 images) this equals NCNet's ``mean(scores_A + scores_B) / 2``.
    """
    if corr4d.dim() != 6 or corr4d.shape[1] != 1:
        raise ValueError(f"corr4d must be (B, 1, H1, W1, H2, W2), got {tuple(corr4d.shape)}")
    b, _, h1, w1, h2, w2 = corr4d.shape
    flat = corr4d.reshape(b, h1 * w1, h2 * w2)
    best_a = torch.softmax(flat, dim=1).amax(dim=1)  # (B, H2*W2): per B cell, over A
    best_b = torch.softmax(flat, dim=2).amax(dim=2)  # (B, H1*W1): per A cell, over B
    return (best_a.mean() + best_b.mean()) / 2


def negative_order(batch: int, device: torch.device | str | None = None) -> Tensor:
    """Source indices of the negative pairs: ``roll(arange(batch), -1)``.

    Raises:
        ValueError: fewer than two pairs (a pair cannot be its own negative).
    """
    if batch < 2:
        raise ValueError(f"the weak loss needs at least 2 pairs per batch, got {batch}")
    return torch.roll(torch.arange(batch, device=device), -1)


def weak_loss(corr_pos: Tensor, corr_neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """NCNet's loss from the positive and negative correlation volumes.

    Args:
        corr_pos, corr_neg: (B, 1, H1, W1, H2, W2) each.
    Returns:
        (loss, score_pos, score_neg), scalars; ``loss = score_neg - score_pos``.
    """
    s_pos, s_neg = weak_score(corr_pos), weak_score(corr_neg)
    return s_neg - s_pos, s_pos, s_neg
