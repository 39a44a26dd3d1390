"""Relative pose estimation from matches (OpenCV RANSAC), and the original's geometry names.

The geometry itself (fundamental matrices, relative poses, quaternions, ...) lives in
:mod:`utils.geometry`; its names stay importable from here as in the original
(``pose2fund``, ``abs2relapose``, ...). Conventions: see :mod:`utils.geometry`.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

from utils.geometry import (
    Array,
    abs2relapose,
    as_f64,
    mat2quat,
    normalize_points,
    pose2essential,
    pose2fund,
    quat2mat,
    qvec2rotmat,
    relative_pose,
    rotmat2qvec,
    skew,
)

# names other tools import (docs/architecture.md §8), re-exported from utils.geometry,
# and the pose solver
__all__ = [
    "skew",
    "pose2fund",
    "pose2essential",
    "abs2relapose",
    "relative_pose",
    "qvec2rotmat",
    "rotmat2qvec",
    "quat2mat",
    "mat2quat",
    "normalize_points",
    "matches2relapose_cv",
    "essential_relapose",
]


def essential_relapose(
    x0: np.ndarray,
    x1: np.ndarray,
    K: np.ndarray,
    threshold: float,
    prob: float,
    method: int = cv2.RANSAC,
    protocol: str = "patch2pix",
    seed: int | None = None,
) -> tuple[Array, Array, NDArray[np.bool_]] | None:
    """The one RANSAC pose solver: ``cv2.findEssentialMat`` then, of the (up to 10) stacked
    solutions, the one ``cv2.recoverPose`` finds the most points in front of both cameras for.

    Args:
        x0, x1: (N, 2) points of image 0 / 1 in the coordinates of the shared camera `K`.
        K: (3, 3) camera matrix of those coordinates (identity for normalised points).
        threshold: RANSAC threshold in the units of `x0` / `x1`.
        prob: RANSAC confidence.
        method: ``cv2.RANSAC`` or ``cv2.USAC_MAGSAC``.
        protocol: ``'patch2pix'`` (the original's validation, docs/training.md §6): at least 5
            RANSAC inliers; recoverPose on the inliers only; returns the RANSAC inliers.
            ``'loftr'`` (LoFTR's MegaDepth-1500 ``estimate_pose``, kept as is so that results
            are comparable): recoverPose on all points with ``distanceThresh=1e9`` and the
            mask, which recoverPose overwrites and the next solution then starts from;
            returns the mask after the best solution's recoverPose.
        seed: seeds OpenCV's RNG first (None: leave it).
    Returns:
        None when there are fewer than 5 points or no essential matrix, else (R (3, 3),
        unit t (3,), inliers (N,) bool): ``X1 = R X0 + t·s``.
    """
    if protocol not in ("patch2pix", "loftr"):
        raise ValueError(f"protocol must be 'patch2pix' or 'loftr', got {protocol!r}")
    x0 = np.ascontiguousarray(x0, dtype=np.float64).reshape(-1, 2)
    x1 = np.ascontiguousarray(x1, dtype=np.float64).reshape(-1, 2)
    K = np.asarray(K, dtype=np.float64)
    if len(x0) < 5 or not (np.isfinite(x0).all() and np.isfinite(x1).all()):
        return None
    if seed is not None:
        cv2.setRNGSeed(int(seed))
    try:
        E, mask = cv2.findEssentialMat(
            x0, x1, cameraMatrix=K, method=method, prob=prob, threshold=threshold
        )
    except cv2.error:
        return None
    if E is None or mask is None or E.shape[0] < 3:
        return None
    if protocol == "patch2pix":
        inliers = mask.ravel().astype(bool)
        if inliers.sum() < 5:
            return None
        pts0, pts1 = x0[inliers], x1[inliers]
    best: tuple[Array, Array, NDArray[np.bool_]] | None = None
    best_n = 0 if protocol == "loftr" else -1
    for k in range(E.shape[0] // 3):
        Ek = np.ascontiguousarray(E[3 * k : 3 * k + 3])
        if protocol == "loftr":
            n, R, t, out = cv2.recoverPose(Ek, x0, x1, K, 1e9, mask=mask)
            mask = out  # LoFTR passes the same array on: recoverPose overwrote it
            if n > best_n:
                best_n, best = n, (R, t[:, 0], mask.ravel() > 0)
        else:
            n, R, t, _ = cv2.recoverPose(Ek, pts0, pts1, K)
            if n > best_n:
                best_n, best = n, (R, t[:, 0], inliers)
    if best is None:
        return None
    R, t, inl = best
    return np.asarray(R, np.float64), np.asarray(t, np.float64).reshape(3), inl


def matches2relapose_cv(
    p1: ArrayLike,
    p2: ArrayLike,
    K1: ArrayLike,
    K2: ArrayLike,
    rthres: float = 0.5,
    focal_norm: bool = True,
    prob: float = 0.99999,
    min_matches: int = 5,
) -> tuple[Array, Array, NDArray[np.bool_]] | None:
    """Relative pose from pixel correspondences: OpenCV RANSAC essential matrix + recoverPose
    (:func:`essential_relapose`, protocol ``'patch2pix'``).

    Both images' points are moved to the normalised plane with their own K and then scaled by
    one common focal length f, so that the RANSAC threshold `rthres` is in pixels of that focal
    length: with `focal_norm` f is the mean focal length of the second camera
    ((fx₂ + fy₂) / 2, the "second camera's focal length" of docs/training.md §6); without it, the
    mean focal length of both cameras.

    Args:
        p1, p2: (N, 2) matched pixel coordinates (x, y) in image 1 / image 2.
        K1, K2: (3, 3) intrinsics.
        rthres: RANSAC threshold in pixels (at focal length f).
        focal_norm: use the second camera's focal length (else the mean of both cameras').
        prob: RANSAC confidence.
        min_matches: fewer correspondences than this (5 at least) → None.
    Returns:
        None when there are too few matches or no essential matrix was found, else
        ``(R, t, inliers)``: R (3, 3) and unit t (3,) mapping camera 1 to camera 2
        (``X2 = R X1 + t·s``), and a (N,) bool mask of RANSAC inliers.
    """
    p1 = as_f64(p1).reshape(-1, 2)
    p2 = as_f64(p2).reshape(-1, 2)
    if len(p1) != len(p2):
        raise ValueError(f"matches2relapose_cv: {len(p1)} points in image 1, {len(p2)} in image 2")
    if len(p1) < max(5, min_matches):
        return None
    K1, K2 = as_f64(K1), as_f64(K2)
    if focal_norm:
        f = 0.5 * (K2[0, 0] + K2[1, 1])
    else:
        f = 0.25 * (K1[0, 0] + K1[1, 1] + K2[0, 0] + K2[1, 1])
    q1 = normalize_points(p1, K1) * f
    q2 = normalize_points(p2, K2) * f
    Kf = np.array([[f, 0.0, 0.0], [0.0, f, 0.0], [0.0, 0.0, 1.0]])
    return essential_relapose(q1, q2, Kf, rthres, prob, protocol="patch2pix")
