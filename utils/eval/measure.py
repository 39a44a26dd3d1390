"""Numpy match measures: epipolar distances, pose errors, pose-estimation evaluation, histograms.

Distances follow ../shared/spec/README.md: the Sampson distance and the symmetric epipolar
distance are squared (px²) unless `sqrt=True` is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from utils.eval.geometry import matches2relapose_cv, qvec2rotmat

__all__ = [
    "INLIER_DIST_BINS",
    "PASS_THRESHOLDS",
    "sampson_distance",
    "symmetric_epipolar_distance",
    "cal_vec_angle_error",
    "cal_rot_angle_error",
    "cal_quat_angle_error",
    "eval_matches_relapose",
    "check_inliers_distr",
    "cal_pass_rates",
    "cal_error_auc",
    "cal_selection_rate",
]

Array = NDArray[np.float64]

# Histogram bins (px²) of training.md §6.
INLIER_DIST_BINS: tuple[float, ...] = (0, 0.01, 1, 5, 10, 25, 50, 100, 2500, 1e5)
# Pose-error thresholds (degrees) for pass rates, training.md §6.
PASS_THRESHOLDS: tuple[int, ...] = tuple(range(1, 11))


def _as_f64(x: ArrayLike) -> Array:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _to_homogeneous(pts: ArrayLike, homos: bool) -> Array:
    """(N, 2) → (N, 3) with a column of ones when `homos`; (N, 3) input is used as is."""
    pts = _as_f64(pts)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"points must have shape (N, 2) or (N, 3), got {pts.shape}")
    if pts.shape[1] == 2:
        if not homos:
            raise ValueError("(N, 2) points need homos=True to be made homogeneous")
        pts = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    return pts


def _epipolar_terms(pts1: ArrayLike, pts2: ArrayLike, F: ArrayLike, homos: bool):
    x1 = _to_homogeneous(pts1, homos)
    x2 = _to_homogeneous(pts2, homos)
    F = _as_f64(F).reshape(3, 3)
    Fx1 = x1 @ F.T  # (N, 3), rows F x1
    Ftx2 = x2 @ F  # (N, 3), rows Fᵀ x2
    x2tFx1 = np.sum(x2 * Fx1, axis=1)  # (N,)
    return x2tFx1, Fx1, Ftx2


def sampson_distance(pts1: ArrayLike, pts2: ArrayLike, F: ArrayLike, homos: bool = True) -> Array:
    """Squared Sampson distance (px²) of correspondences under F.

    ``d = (x2ᵀFx1)² / ((Fx1)₀² + (Fx1)₁² + (Fᵀx2)₀² + (Fᵀx2)₁² + 1e-8)``.

    Args:
        pts1, pts2: (N, 2) pixel coordinates (x, y) (made homogeneous when `homos`) or
            (N, 3) homogeneous points.
        F: (3, 3) fundamental matrix with ``x2ᵀ F x1 = 0``.
        homos: append a column of ones to (N, 2) inputs.
    Returns:
        (N,) float64 distances.
    """
    x2tFx1, Fx1, Ftx2 = _epipolar_terms(pts1, pts2, F, homos)
    denom = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2 + 1e-8
    return x2tFx1**2 / denom


def symmetric_epipolar_distance(
    pts1: ArrayLike, pts2: ArrayLike, F: ArrayLike, sqrt: bool = False
) -> Array:
    """Symmetric epipolar distance: sum of the point-to-epipolar-line distances in both images.

    Squared (px², default): ``(x2ᵀFx1)² (1/((Fᵀx2)₀² + (Fᵀx2)₁²) + 1/((Fx1)₀² + (Fx1)₁²))``;
    with `sqrt`: ``|x2ᵀFx1| (1/‖(Fᵀx2)₀,₁‖ + 1/‖(Fx1)₀,₁‖)`` (px).

    Args:
        pts1, pts2: (N, 2) pixel coordinates or (N, 3) homogeneous points.
        F: (3, 3) fundamental matrix.
        sqrt: return the unsquared version.
    Returns:
        (N,) float64 distances.
    """
    x2tFx1, Fx1, Ftx2 = _epipolar_terms(pts1, pts2, F, True)
    n1 = Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2
    n2 = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2
    if sqrt:
        return np.abs(x2tFx1) * (1.0 / np.sqrt(n1) + 1.0 / np.sqrt(n2))
    return x2tFx1**2 * (1.0 / n1 + 1.0 / n2)


def cal_vec_angle_error(v_est: ArrayLike, v_gt: ArrayLike, sign_invariant: bool = True) -> float:
    """Angle (degrees) between two 3-vectors, e.g. estimated and true translation directions.

    Args:
        v_est, v_gt: (3,) vectors (any scale).
        sign_invariant: return ``min(err, 180 − err)`` (a translation from an essential matrix
            is known up to sign).
    Returns:
        Angle in [0, 90] (sign-invariant) or [0, 180]; NaN when a vector is zero.
    """
    a = _as_f64(v_est).reshape(-1)
    b = _as_f64(v_gt).reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    cos = np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0)
    err = float(np.degrees(np.arccos(cos)))
    return min(err, 180.0 - err) if sign_invariant else err


def cal_rot_angle_error(R_est: ArrayLike, R_gt: ArrayLike) -> float:
    """Angle (degrees) of the rotation ``R_estᵀ R_gt``.

    Args:
        R_est, R_gt: (3, 3) rotation matrices.
    Returns:
        Angle in [0, 180].
    """
    R_est = _as_f64(R_est).reshape(3, 3)
    R_gt = _as_f64(R_gt).reshape(3, 3)
    cos = np.clip((np.trace(R_est.T @ R_gt) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def cal_quat_angle_error(q_est: ArrayLike, q_gt: ArrayLike) -> float:
    """Rotation angle (degrees) between two quaternions (w, x, y, z): ``2 acos(|⟨q̂1, q̂2⟩|)``.

    Args:
        q_est, q_gt: (4,) quaternions (normalised here).
    Returns:
        Angle in [0, 180].
    """
    a = _as_f64(q_est).reshape(4)
    b = _as_f64(q_gt).reshape(4)
    d = abs(np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b)))
    return float(np.degrees(2.0 * np.arccos(np.clip(d, 0.0, 1.0))))


def _as_rotation(q_or_R: ArrayLike) -> Array:
    """A (4,) quaternion (w, x, y, z) or a (3, 3) matrix → (3, 3) rotation matrix."""
    arr = _as_f64(q_or_R)
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
    matches = _as_f64(matches).reshape(-1, 4)
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
        groups = [_as_f64(dists).reshape(-1)]
    else:
        groups = [_as_f64(d).reshape(-1) for d in dists]
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
    err = _as_f64(errors).reshape(-1)
    if err.size == 0:
        return {thr: 0.0 for thr in thresholds}
    err = np.where(np.isfinite(err), err, np.inf)
    return {thr: float(np.mean(err < thr)) for thr in thresholds}


def cal_selection_rate(errors: ArrayLike) -> float:
    """Model-selection score of training.md §6: ``0.34·pass@1° + 0.33·pass@5° + 0.33·pass@10°``.

    Args:
        errors: (N,) pose errors in degrees.
    """
    r = cal_pass_rates(errors, (1, 5, 10))
    return 0.34 * r[1] + 0.33 * r[5] + 0.33 * r[10]


def cal_error_auc(errors: ArrayLike, thresholds: Sequence[float] = (5, 10, 20)) -> list[float]:
    """Area under the cumulative error curve up to each threshold, normalised to [0, 1].

    The recall curve is the fraction of errors ≤ e as a function of e (starting at (0, 0));
    NaN/inf errors count as never recalled.

    Args:
        errors: (N,) errors; thresholds: upper integration limits.
    Returns:
        One AUC per threshold.
    """
    err = _as_f64(errors).reshape(-1)
    n = err.size
    if n == 0:
        return [0.0 for _ in thresholds]
    err = np.sort(err[np.isfinite(err)])
    recall = np.arange(1, err.size + 1) / n
    err = np.concatenate([[0.0], err])
    recall = np.concatenate([[0.0], recall])
    aucs = []
    for thr in thresholds:
        last = np.searchsorted(err, thr)  # points with err < thr
        e = np.concatenate([err[:last], [thr]])
        r = np.concatenate([recall[:last], [recall[last - 1]]])
        aucs.append(float(np.trapezoid(r, x=e) / thr))
    return aucs
