"""Per-step training metrics (docs/training.md §3 step 6) and their running means.

Definitions (every value is pooled over the rows of all pairs of the batch, kept or
skipped; a value whose denominator is empty is NaN and is left out of the means, so a Visdom
line without values is not drawn):

- classification, per level ``mid`` / ``fine`` with prediction ``prob > cthres`` and target
  from the loss (mid: ``cdist < cls_dthres[0]``, fine: ``mdist < cls_dthres[1]``):
  ``rec = TP/(TP+FN)``, ``prec = TP/(TP+FP)``, ``spec = TN/(TN+FP)``,
  ``acc = (TP+TN)/N``, ``f1 = 2·prec·rec/(prec+rec)``;
- positive ratios: ``mpos_gt`` / ``fpos_gt`` = fraction of rows with a positive target,
  ``mpos_pred`` / ``fpos_pred`` = fraction of rows predicted positive;
- pair scores: ``pos`` = mean predicted probability over the rows whose target is positive,
  ``neg`` = over the rows whose target is negative (mid and fine rows pooled);
- match distances (``match_dist``, Sampson px²), named ``{distance}{selection}_{gt|pred}``:
  the distance is ``c`` (coarse anchors, cdist), ``m`` (mid, mdist) or ``f`` (fine, fdist);
  the selection is ``mid`` (rows positive at the mid level) or ``fid`` (rows positive at the
  fine level), by target (``gt``) or by prediction (``pred``):
  ``cmid = mean cdist``, ``mmid = mean mdist`` over mid-selected rows,
  ``mfid = mean mdist``, ``ffid = mean fdist`` over fine-selected rows;
- memory: process ``rss``/``vms`` and CUDA ``gpu_maloc``/``gpu_mres`` (allocated / reserved),
  all in GiB; the GPU values only when CUDA is in use.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from utils.train.losses import BatchLoss

NAN = float("nan")
GIB = float(1 << 30)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den as a 0-d float tensor; NaN where den == 0."""
    num, den = num.float(), den.float()
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.full_like(num, NAN))


def _cls_tensors(probs: Tensor, target: Tensor, cthres: float) -> dict[str, Tensor]:
    pred = probs.detach() > cthres
    target = target.bool()
    tp = (pred & target).sum()
    fp = (pred & ~target).sum()
    tn = (~pred & ~target).sum()
    fn = (~pred & target).sum()
    rec = _ratio(tp, tp + fn)
    prec = _ratio(tp, tp + fp)
    return {
        "rec": rec,
        "prec": prec,
        "spec": _ratio(tn, tn + fp),
        "acc": _ratio(tp + tn, torch.tensor(target.numel(), device=probs.device)),
        "f1": _ratio(2 * prec * rec, prec + rec),
    }


def classification_metrics(probs: Tensor, target: Tensor, cthres: float) -> dict[str, float]:
    """Recall, precision, specificity, accuracy and F1 of ``probs > cthres`` against targets.

    Args:
        probs: (N,) probabilities; target: (N,) booleans.
    Returns:
        ``{'rec', 'prec', 'spec', 'acc', 'f1'}`` floats (NaN where undefined).
    """
    return {k: float(v) for k, v in _cls_tensors(probs, target, cthres).items()}


def _mean_sel(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of values[mask] as a 0-d tensor; NaN when the mask is empty (no sync)."""
    return _ratio((values * mask).sum(), mask.sum())


def _cat(xs: Sequence[Tensor], device: torch.device) -> Tensor:
    if not xs:
        return torch.zeros(0, device=device)
    return torch.cat([x.detach().reshape(-1) for x in xs])


def step_metrics(
    out: BatchLoss,
    mid_probs: Sequence[Tensor],
    fine_probs: Sequence[Tensor],
    cthres: float,
) -> dict[str, dict[str, float]]:
    """All plotted metrics of one step, grouped by Visdom plot name.

    Everything is computed on the tensors' device and moved to the host in one transfer.

    Args:
        out: the :class:`BatchLoss` of the step (targets and distances of every pair).
        mid_probs, fine_probs: B tensors (N_b,) of probabilities.
        cthres: probability threshold.
    Returns:
        ``{plot: {legend: value}}`` for the plots ``loss``, ``cls_mid``, ``cls_fine``,
        ``cls_ratios``, ``pair_scores``, ``match_dist`` (see the module docstring).
    """
    dev = out.loss.device
    mprob, fprob = _cat(mid_probs, dev).float(), _cat(fine_probs, dev).float()
    mgt, fgt = _cat(out.mid_gt, dev).bool(), _cat(out.fine_gt, dev).bool()
    cdist = _cat([d.cdist for d in out.dists], dev).float()
    mdist = _cat([d.mdist for d in out.dists], dev).float()
    fdist = _cat([d.fdist for d in out.dists], dev).float()
    mpred, fpred = mprob > cthres, fprob > cthres
    nm = torch.tensor(mgt.numel(), device=dev)
    nf = torch.tensor(fgt.numel(), device=dev)

    loss: dict[str, Tensor] = {"pair": out.loss.detach()} if out.kept else {}
    for k in ("cls_mid", "cls_fine", "epi_mid", "epi_fine"):
        v = getattr(out, k)
        if v.numel():
            loss[k] = v.detach().mean()
    probs_all, gt_all = torch.cat([mprob, fprob]), torch.cat([mgt, fgt])
    groups: dict[str, dict[str, Tensor]] = {
        "loss": loss,
        "cls_mid": _cls_tensors(mprob, mgt, cthres),
        "cls_fine": _cls_tensors(fprob, fgt, cthres),
        "cls_ratios": {
            "mpos_gt": _ratio(mgt.sum(), nm),
            "mpos_pred": _ratio(mpred.sum(), nm),
            "fpos_gt": _ratio(fgt.sum(), nf),
            "fpos_pred": _ratio(fpred.sum(), nf),
        },
        "pair_scores": {
            "pos": _mean_sel(probs_all, gt_all),
            "neg": _mean_sel(probs_all, ~gt_all),
        },
        "match_dist": {
            "cmid_gt": _mean_sel(cdist, mgt),
            "mmid_gt": _mean_sel(mdist, mgt),
            "mfid_gt": _mean_sel(mdist, fgt),
            "ffid_gt": _mean_sel(fdist, fgt),
            "cmid_pred": _mean_sel(cdist, mpred),
            "mmid_pred": _mean_sel(mdist, mpred),
            "mfid_pred": _mean_sel(mdist, fpred),
            "ffid_pred": _mean_sel(fdist, fpred),
        },
    }
    keys = [(g, n) for g, vals in groups.items() for n in vals]
    if not keys:
        return {}
    values = torch.stack([groups[g][n].float().reshape(()) for g, n in keys]).tolist()
    result: dict[str, dict[str, float]] = {g: {} for g in groups}
    for (g, n), v in zip(keys, values):
        result[g][n] = v
    return result


def memory_metrics(device: torch.device | str | None = None) -> dict[str, float]:
    """Process RSS/VMS and, on CUDA, allocated/reserved GPU memory, all in GiB."""
    out: dict[str, float] = {}
    try:
        import psutil

        mem = psutil.Process().memory_info()
        out["rss"] = mem.rss / GIB
        out["vms"] = mem.vms / GIB
    except ImportError:  # pragma: no cover - psutil is a requirement
        pass
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        out["gpu_maloc"] = torch.cuda.memory_allocated(dev) / GIB
        out["gpu_mres"] = torch.cuda.memory_reserved(dev) / GIB
    return out


class RunningMeans:
    """Accumulates ``{plot: {legend: value}}`` dicts; NaN/inf values are ignored."""

    def __init__(self) -> None:
        self._sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def update(self, values: Mapping[str, Mapping[str, float]]) -> None:
        """Add one step's values."""
        for plot, legends in values.items():
            for name, v in legends.items():
                if v is None or not math.isfinite(float(v)):
                    continue
                self._sums[plot][name] += float(v)
                self._counts[plot][name] += 1

    def means(self) -> dict[str, dict[str, float]]:
        """Mean of each (plot, legend) with at least one value."""
        return {
            plot: {n: s / self._counts[plot][n] for n, s in legends.items()}
            for plot, legends in self._sums.items()
            if legends
        }

    def reset(self) -> None:
        """Forget every value."""
        self._sums.clear()
        self._counts.clear()

    def __bool__(self) -> bool:
        return any(bool(v) for v in self._counts.values())


def format_means(means: Mapping[str, Mapping[str, float]], plots: Iterable[str]) -> str:
    """One log line fragment ``plot: a=1.23 b=4.56 | ...`` for the given plots."""
    parts = []
    for plot in plots:
        vals = means.get(plot)
        if vals:
            parts.append(plot + ": " + " ".join(f"{k}={v:.4g}" for k, v in vals.items()))
    return " | ".join(parts)
