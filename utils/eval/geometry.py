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

# api.md's names (the original's module), re-exported from utils.geometry, and the pose solver
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
]


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
    """Relative pose from pixel correspondences: OpenCV RANSAC essential matrix + recoverPose.

    Both images' points are moved to the normalised plane with their own K and then scaled by
    one common focal length f, so that the RANSAC threshold `rthres` is in pixels of that focal
    length: with `focal_norm` f is the mean focal length of the second camera
    ((fx₂ + fy₂) / 2, the "second camera's focal length" of training.md §6); without it, the
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
    n = len(p1)
    if n < max(5, min_matches):
        return None
    K1, K2 = as_f64(K1), as_f64(K2)
    if focal_norm:
        f = 0.5 * (K2[0, 0] + K2[1, 1])
    else:
        f = 0.25 * (K1[0, 0] + K1[1, 1] + K2[0, 0] + K2[1, 1])
    q1 = normalize_points(p1, K1) * f
    q2 = normalize_points(p2, K2) * f
    Kf = np.array([[f, 0.0, 0.0], [0.0, f, 0.0], [0.0, 0.0, 1.0]])
    E, mask = cv2.findEssentialMat(
        q1, q2, cameraMatrix=Kf, method=cv2.RANSAC, prob=prob, threshold=rthres
    )
    if E is None or mask is None or E.shape[0] < 3:
        return None
    inliers = mask.ravel().astype(bool)
    if inliers.sum() < 5:
        return None
    # The five-point solver may return up to 10 stacked solutions: keep the one with the
    # most points passing the chirality check.
    best: tuple[int, Array, Array] | None = None
    for k in range(E.shape[0] // 3):
        Ek = np.ascontiguousarray(E[3 * k : 3 * k + 3])
        ngood, R, t, _ = cv2.recoverPose(Ek, q1[inliers], q2[inliers], Kf)
        if best is None or ngood > best[0]:
            best = (int(ngood), R, t)
    assert best is not None
    _, R, t = best
    return np.asarray(R, np.float64), np.asarray(t, np.float64).reshape(3), inliers
