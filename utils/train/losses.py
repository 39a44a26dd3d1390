"""Patch2Pix training loss (docs/training.md §3 steps 4–5) as pure functions.

The inputs are the per-pair lists returned by ``Patch2Pix.forward_train``:
``coarse_matches`` (anchors, (N, 4)), ``mid_matches`` (N, 4), ``mid_probs`` (N,),
``fine_matches`` (N, 4), ``fine_probs`` (N,), plus the fundamental matrices ``F`` (B, 3, 3)
at training resolution. All distances are squared Sampson distances in px².

Per image pair:
- classification targets: a mid row is positive where ``cdist < cls_dthres[0]``, a fine row
  where ``mdist < cls_dthres[1]``; a pair with no positive at either level is skipped;
- weighted BCE per level: weight ``#neg / #pos`` on positives, 1 on negatives, mean over rows;
- epipolar terms: ``epi_mid`` = mean ``mdist`` over rows with ``cdist < epi_dthres[0]``,
  ``epi_fine`` = mean ``fdist`` over rows with ``mdist < epi_dthres[1]`` (0 where no row); a
  pair where both row sets are empty is skipped;
- ``epi = w_mid * epi_mid + w_fine * epi_fine`` with ``weight_epi = [w_fine, w_mid]``.

A skipped pair contributes neither a classification nor an epipolar term. The batch loss is
``weight_cls * mean(cls_mid + cls_fine) + mean(epi)`` over the kept pairs, and an exact zero
that is still connected to the probabilities (so ``backward()`` works) when every pair was
skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as nnf
from torch import Tensor

from networks.utils import sampson_dist

DistFn = Callable[[Tensor, Tensor, Tensor], Tensor]

SKIP_NO_POSITIVE = "no positive"
SKIP_NO_EPI_ROWS = "no epipolar rows"


@dataclass(frozen=True)
class LossConfig:
    """Thresholds and weights of the loss (the training flags of the same names).

    Attributes:
        cls_dthres: Sampson thresholds (px²) of the mid / fine classification targets.
        epi_dthres: Sampson thresholds (px²) selecting rows of the mid / fine epipolar terms.
        weight_cls: weight of the classification loss.
        weight_epi: ``[w_fine, w_mid]`` weights of the epipolar terms.
        cthres: probability threshold of the classification metrics.
    """

    cls_dthres: tuple[float, float] = (50.0, 5.0)
    epi_dthres: tuple[float, float] = (50.0, 5.0)
    weight_cls: float = 10.0
    weight_epi: tuple[float, float] = (1.0, 1.0)
    cthres: float = 0.5

    @classmethod
    def from_args(cls, args) -> LossConfig:
        """Build from the training argparse.Namespace (cls_dthres, epi_dthres, ...)."""
        return cls(
            cls_dthres=tuple(float(v) for v in args.cls_dthres),
            epi_dthres=tuple(float(v) for v in args.epi_dthres),
            weight_cls=float(args.weight_cls),
            weight_epi=tuple(float(v) for v in args.weight_epi),
            cthres=float(getattr(args, "cthres", 0.5)),
        )


@dataclass
class PairDistances:
    """Sampson distances of one pair's matches, all (N,) in px²."""

    cdist: Tensor
    mdist: Tensor
    fdist: Tensor


@dataclass
class BatchLoss:
    """Result of :func:`batch_loss`.

    Attributes:
        loss: scalar total loss (differentiable).
        kept: indices of the pairs that contributed.
        skipped: ``{pair index: reason}`` of the skipped pairs.
        cls_mid, cls_fine, epi_mid, epi_fine, cls, epi: (P,) per-pair terms of the kept pairs
            (P = len(kept)); differentiable.
        dists: per-pair distances of every pair (kept or not), detached.
        mid_gt, fine_gt: per-pair boolean targets of every pair.
    """

    loss: Tensor
    kept: list[int]
    skipped: dict[int, str]
    cls_mid: Tensor
    cls_fine: Tensor
    epi_mid: Tensor
    epi_fine: Tensor
    cls: Tensor
    epi: Tensor
    dists: list[PairDistances] = field(default_factory=list)
    mid_gt: list[Tensor] = field(default_factory=list)
    fine_gt: list[Tensor] = field(default_factory=list)

    def terms(self) -> dict[str, Tensor]:
        """Per-pair terms and the total, detached: name → (P,) / scalar tensor."""
        return {
            "cls_mid": self.cls_mid.detach(),
            "cls_fine": self.cls_fine.detach(),
            "epi_mid": self.epi_mid.detach(),
            "epi_fine": self.epi_fine.detach(),
            "cls": self.cls.detach(),
            "epi": self.epi.detach(),
            "loss": self.loss.detach(),
        }


def pair_distances(
    coarse: Tensor,
    mid: Tensor,
    fine: Tensor,
    F: Tensor,
    dist_fn: DistFn = sampson_dist,
) -> PairDistances:
    """Sampson distances of the coarse (anchor), mid and fine matches of one pair.

    Args:
        coarse, mid, fine: (N, 4) matches (x1, y1, x2, y2) in training pixels.
        F: (3, 3) fundamental matrix with x2ᵀ F x1 = 0.
        dist_fn: ``(x1 (N,2), x2 (N,2), F (3,3)) -> (N,)`` distance.
    Returns:
        ``PairDistances`` with (N,) tensors; ``cdist`` carries no gradient.
    """
    F = F.to(mid.dtype)
    cdist = dist_fn(coarse[:, :2].to(F.dtype), coarse[:, 2:].to(F.dtype), F).detach()
    mdist = dist_fn(mid[:, :2], mid[:, 2:], F)
    fdist = dist_fn(fine[:, :2], fine[:, 2:], F)
    return PairDistances(cdist, mdist, fdist)


def weighted_bce(probs: Tensor, target: Tensor) -> Tensor:
    """Class-balanced binary cross-entropy, mean over rows.

    Args:
        probs: (N,) probabilities in [0, 1].
        target: (N,) boolean targets.
    Returns:
        scalar ``mean_i w_i · BCE(probs_i, target_i)`` with ``w = #neg/#pos`` on positives
        and 1 on negatives (``torch.nn.functional.binary_cross_entropy``, logs clamped at
        −100).
    """
    tgt = target.to(probs.dtype)
    npos = tgt.sum()
    nneg = tgt.numel() - npos
    weight = torch.where(target, nneg / npos.clamp(min=1), torch.ones_like(tgt))
    return nnf.binary_cross_entropy(probs, tgt, weight=weight.detach())


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values[mask]`` (scalar); exact 0 (still in the graph) where mask is empty."""
    if bool(mask.any()):
        return values[mask].mean()
    return values.sum() * 0.0


def batch_loss(
    coarse_matches: Sequence[Tensor],
    mid_matches: Sequence[Tensor],
    mid_probs: Sequence[Tensor],
    fine_matches: Sequence[Tensor],
    fine_probs: Sequence[Tensor],
    Fs: Tensor,
    cfg: LossConfig,
    dist_fn: DistFn = sampson_dist,
) -> BatchLoss:
    """The loss of one batch (docs/training.md §3 steps 4–5).

    Args:
        coarse_matches, mid_matches, fine_matches: B tensors (N_b, 4).
        mid_probs, fine_probs: B tensors (N_b,).
        Fs: (B, 3, 3) fundamental matrices at training resolution.
        cfg: thresholds and weights.
        dist_fn: distance function (Sampson by default, as ``geo_dist_fn`` of the original).
    Returns:
        :class:`BatchLoss`.
    """
    w_fine, w_mid = cfg.weight_epi
    kept: list[int] = []
    skipped: dict[int, str] = {}
    terms: dict[str, list[Tensor]] = {k: [] for k in ("cls_mid", "cls_fine", "epi_mid", "epi_fine")}
    dists: list[PairDistances] = []
    mid_gts: list[Tensor] = []
    fine_gts: list[Tensor] = []
    for b in range(len(mid_matches)):
        d = pair_distances(coarse_matches[b], mid_matches[b], fine_matches[b], Fs[b], dist_fn)
        mid_gt = d.cdist < cfg.cls_dthres[0]
        fine_gt = d.mdist.detach() < cfg.cls_dthres[1]
        dists.append(PairDistances(d.cdist, d.mdist.detach(), d.fdist.detach()))
        mid_gts.append(mid_gt)
        fine_gts.append(fine_gt)
        if not bool(mid_gt.any()) or not bool(fine_gt.any()):
            skipped[b] = SKIP_NO_POSITIVE
            continue
        epi_mid_rows = d.cdist < cfg.epi_dthres[0]
        epi_fine_rows = d.mdist.detach() < cfg.epi_dthres[1]
        if not bool(epi_mid_rows.any()) and not bool(epi_fine_rows.any()):
            skipped[b] = SKIP_NO_EPI_ROWS
            continue
        kept.append(b)
        terms["cls_mid"].append(weighted_bce(mid_probs[b], mid_gt))
        terms["cls_fine"].append(weighted_bce(fine_probs[b], fine_gt))
        terms["epi_mid"].append(_masked_mean(d.mdist, epi_mid_rows))
        terms["epi_fine"].append(_masked_mean(d.fdist, epi_fine_rows))

    ref = mid_probs[0] if len(mid_probs) else Fs
    stacked = {
        k: torch.stack(v) if v else ref.new_zeros((0,), dtype=ref.dtype) for k, v in terms.items()
    }
    cls = stacked["cls_mid"] + stacked["cls_fine"]
    epi = w_mid * stacked["epi_mid"] + w_fine * stacked["epi_fine"]
    if kept:
        loss = cfg.weight_cls * cls.mean() + epi.mean()
    else:
        # Zero, but connected to the outputs so that backward() is valid.
        loss = sum((p.sum() * 0.0 for p in (*mid_probs, *fine_probs)), ref.new_zeros(()))
    return BatchLoss(
        loss=loss,
        kept=kept,
        skipped=skipped,
        cls=cls,
        epi=epi,
        dists=dists,
        mid_gt=mid_gts,
        fine_gt=fine_gts,
        **stacked,
    )
