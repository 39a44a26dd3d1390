"""Evaluation of matches by relative pose: pose-estimation errors, histograms, pass rates.

The epipolar distances, angle errors and the AUC live in :mod:`utils.geometry`; the two
distances stay importable from here under the original's names (``sampson_distance``,
``symmetric_epipolar_distance``: other tools import them from this module).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from utils.eval.geometry import matches2relapose_cv
from utils.geometry import (
    Array,
    as_f64,
    cal_rot_angle_error,
    cal_vec_angle_error,
    qvec2rotmat,
    sampson_distance,
    symmetric_epipolar_distance,
)

__all__ = [
    "INLIER_DIST_BINS",
    "PASS_THRESHOLDS",
    "sampson_distance",
    "symmetric_epipolar_distance",
    "eval_matches_relapose",
    "check_inliers_distr",
    "cal_pass_rates",
    "cal_selection_rate",
]

# Histogram bins (px²) of docs/training.md §6.
INLIER_DIST_BINS: tuple[float, ...] = (0, 0.01, 1, 5, 10, 25, 50, 100, 2500, 1e5)
# Pose-error thresholds (degrees) for pass rates, docs/training.md §6.
PASS_THRESHOLDS: tuple[int, ...] = tuple(range(1, 11))


def _as_rotation(q_or_R: ArrayLike) -> Array:
    """A (4,) quaternion (w, x, y, z) or a (3, 3) matrix → (3, 3) rotation matrix."""
    arr = as_f64(q_or_R)
    if arr.size == 4:
        return qvec2rotmat(arr)
    if arr.size == 9:
        return arr.reshape(3, 3)
    raise ValueError(f"expected a (4,) quaternion or a (3, 3) rotation, got shape {arr.shape}")


def eval_matches_relapose(
    matches: ArrayLike,
    K1: ArrayLike,
    K2: ArrayLike,
    q12: ArrayLike,
    t12: ArrayLike,
    cv_thres: float = 0.5,
) -> tuple[float, float, NDArray[np.bool_]] | None:
    """Estimate the relative pose from matches and compare it with the ground truth.

    The pose comes from :func:`utils.eval.geometry.matches2relapose_cv` (OpenCV RANSAC on the
    essential matrix, threshold `cv_thres` px at the second camera's focal length).

    Args:
        matches: (N, 4) rows (x1, y1, x2, y2) in pixels.
        K1, K2: (3, 3) intrinsics.
        q12: ground-truth relative rotation, a (4,) quaternion (w, x, y, z) or a (3, 3) matrix.
        t12: (3,) ground-truth relative translation (scale irrelevant).
        cv_thres: RANSAC threshold in pixels.
    Returns:
        None when the pose cannot be estimated (fewer than 5 matches, no essential matrix),
        else ``(err_q, err_t, inliers)``: rotation error and sign-invariant translation angle
        error in degrees and the (N,) bool RANSAC inlier mask.
    """
    matches = as_f64(matches).reshape(-1, 4)
    ret = matches2relapose_cv(matches[:, :2], matches[:, 2:], K1, K2, rthres=cv_thres)
    if ret is None:
        return None
    R, t, inliers = ret
    err_q = cal_rot_angle_error(R, _as_rotation(q12))
    err_t = cal_vec_angle_error(t, t12)
    return err_q, err_t, inliers


def check_inliers_distr(
    dists: ArrayLike | Sequence[ArrayLike],
    bins: Sequence[float] = INLIER_DIST_BINS,
    tag: str = "",
    return_hist: bool = False,
) -> str | tuple[Array, str]:
    """Distribution of distances (e.g. Sampson px² of matches) over `bins`, as text.

    For a list of per-pair arrays, each pair's histogram is normalised by its number of
    values and the pairs' histograms are averaged (pairs without values are left out); the
    mean is the mean of the pairs' means. A single array is one pair.

    Args:
        dists: (N,) array or a sequence of (N_i,) arrays.
        bins: histogram edges (numpy.histogram semantics: last bin closed).
        tag: text put at the front.
        return_hist: also return the (len(bins) − 1,) averaged fractions.
    Returns:
        The text ``"<tag> n=<pairs> mean=<m> [a,b)=<pct>% ..."``, and with `return_hist`
        ``(hist, text)``.
    """
    if isinstance(dists, np.ndarray) or hasattr(dists, "detach"):
        groups = [as_f64(dists).reshape(-1)]
    else:
        groups = [as_f64(d).reshape(-1) for d in dists]
    edges = np.asarray(bins, dtype=np.float64)
    hists, means = [], []
    for d in groups:
        if d.size == 0:
            continue
        count, _ = np.histogram(d, edges)
        hists.append(count / d.size)
        means.append(d.mean())
    hist = np.mean(hists, axis=0) if hists else np.zeros(len(edges) - 1)
    mean = float(np.mean(means)) if means else float("nan")
    parts = [f"{tag} n={len(hists)} mean={mean:.2f}".strip()]
    for lo, hi, v in zip(bins[:-1], bins[1:], hist):
        parts.append(f"[{lo:g},{hi:g})={100 * v:.1f}%")
    text = " ".join(parts)
    return (hist, text) if return_hist else text


def cal_pass_rates(
    errors: ArrayLike, thresholds: Sequence[float] = PASS_THRESHOLDS
) -> dict[float, float]:
    """Fraction of errors below each threshold (``err < thr``); NaN/inf errors count as fails.

    Args:
        errors: (N,) errors (e.g. degrees); thresholds: thresholds in the same unit.
    Returns:
        {threshold: rate in [0, 1]} (0 for every threshold when there are no errors).
    """
    err = as_f64(errors).reshape(-1)
    if err.size == 0:
        return {thr: 0.0 for thr in thresholds}
    err = np.where(np.isfinite(err), err, np.inf)
    return {thr: float(np.mean(err < thr)) for thr in thresholds}


def cal_selection_rate(errors: ArrayLike) -> float:
    """Selection score (docs/training.md §6) ``0.34·pass@1° + 0.33·pass@5° + 0.33·pass@10°``.

    Args:
        errors: (N,) pose errors in degrees.
    """
    r = cal_pass_rates(errors, (1, 5, 10))
    return 0.34 * r[1] + 0.33 * r[5] + 0.33 * r[10]
