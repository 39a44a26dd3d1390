"""Two-view geometry: fundamental matrices, relative poses, rotations and pose estimation.

Conventions (data-formats.md §2):
- A pose (R, t) maps world points to camera points, ``X_cam = R · X_world + t``; the camera
  centre is ``c = −Rᵀ t``.
- The relative pose (R12, t12) maps camera-1 points to camera-2 points,
  ``X2 = R12 · X1 + t12`` with ``R12 = R2 R1ᵀ`` and ``t12 = R2 (c1 − c2)``.
- Quaternions are (w, x, y, z), unit norm, as written by COLMAP.
- F satisfies ``x2ᵀ F x1 = 0`` for homogeneous pixel points x1 (image 1) and x2 (image 2).

All functions work in float64 numpy; array-likes (lists, CPU torch tensors) are accepted.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

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

Array = NDArray[np.float64]


def _as_f64(x: ArrayLike) -> Array:
    """Any array-like (list, numpy, CPU torch tensor) → float64 numpy array."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def skew(v: ArrayLike) -> Array:
    """Cross-product matrix [v]ₓ of a 3-vector.

    Args:
        v: (3,) vector.
    Returns:
        (3, 3) matrix with ``skew(v) @ u == np.cross(v, u)``.
    """
    x, y, z = _as_f64(v).reshape(3)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def pose2fund(K1: ArrayLike, K2: ArrayLike, R: ArrayLike, t: ArrayLike) -> Array:
    """Fundamental matrix of a camera pair from intrinsics and relative pose.

    Evaluates the original's formula ``F = K2⁻ᵀ · R · K1ᵀ · [K1 · Rᵀ · t]ₓ``, which equals
    ``K2⁻ᵀ [t]ₓ R K1⁻¹`` up to the positive factor det(K1) (the reference test vectors were
    recorded with this exact expression, so its scale is kept).

    Args:
        K1, K2: (3, 3) intrinsics of image 1 and image 2.
        R: (3, 3) relative rotation R12 (camera 1 → camera 2).
        t: (3,) relative translation t12 (any shape with 3 elements).
    Returns:
        (3, 3) float64 F with ``x2ᵀ F x1 = 0``.
    """
    K1, K2, R = _as_f64(K1), _as_f64(K2), _as_f64(R)
    t = _as_f64(t).reshape(3)
    return np.linalg.inv(K2).T @ R @ K1.T @ skew(K1 @ R.T @ t)


def pose2essential(R: ArrayLike, t: ArrayLike) -> Array:
    """Essential matrix ``E = [t]ₓ R`` (normalised coordinates: ``x2ᵀ E x1 = 0``).

    Args:
        R: (3, 3) relative rotation; t: (3,) relative translation.
    Returns:
        (3, 3) float64 E.
    """
    return skew(t) @ _as_f64(R)


def qvec2rotmat(qvec: ArrayLike) -> Array:
    """Rotation matrix of a quaternion (w, x, y, z).

    The quaternion is normalised first, so any nonzero multiple gives the same matrix.

    Args:
        qvec: (4,) quaternion (w, x, y, z).
    Returns:
        (3, 3) float64 rotation matrix.
    """
    q = _as_f64(qvec).reshape(4)
    n = np.linalg.norm(q)
    if n == 0:
        raise ValueError("qvec2rotmat: zero quaternion")
    w, x, y, z = q / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotmat2qvec(R: ArrayLike) -> Array:
    """Unit quaternion (w, x, y, z), w ≥ 0, of a rotation matrix.

    Uses the eigenvector of the symmetric 4×4 matrix of Bar-Itzhack (2000), which is stable
    for every rotation (including 180° turns) and tolerant to slightly non-orthogonal input.

    Args:
        R: (3, 3) rotation matrix.
    Returns:
        (4,) float64 quaternion with ``qvec2rotmat(q) ≈ R``.
    """
    m = _as_f64(R).reshape(3, 3)
    (r11, r12, r13), (r21, r22, r23), (r31, r32, r33) = m
    # Symmetric matrix whose dominant eigenvector is (x, y, z, w).
    k = (
        np.array(
            [
                [r11 - r22 - r33, r21 + r12, r31 + r13, r32 - r23],
                [r21 + r12, r22 - r11 - r33, r32 + r23, r13 - r31],
                [r31 + r13, r32 + r23, r33 - r11 - r22, r21 - r12],
                [r32 - r23, r13 - r31, r21 - r12, r11 + r22 + r33],
            ]
        )
        / 3.0
    )
    vals, vecs = np.linalg.eigh(k)
    x, y, z, w = vecs[:, np.argmax(vals)]
    q = np.array([w, x, y, z])
    if q[0] < 0:
        q = -q
    return q / np.linalg.norm(q)


# Names of the original's transforms3d helpers.
quat2mat = qvec2rotmat
mat2quat = rotmat2qvec


def relative_pose(
    R1: ArrayLike, t1: ArrayLike, R2: ArrayLike, t2: ArrayLike
) -> tuple[Array, Array]:
    """Relative pose of camera 2 w.r.t. camera 1 from two world-to-camera poses.

    Args:
        R1, R2: (3, 3) world-to-camera rotations; t1, t2: (3,) translations.
    Returns:
        R12 (3, 3) = R2 R1ᵀ and t12 (3,) = R2 (c1 − c2), with c = −Rᵀ t, so that
        ``X2 = R12 X1 + t12`` for camera-frame points X1, X2.
    """
    R1, R2 = _as_f64(R1).reshape(3, 3), _as_f64(R2).reshape(3, 3)
    t1, t2 = _as_f64(t1).reshape(3), _as_f64(t2).reshape(3)
    c1 = -R1.T @ t1
    c2 = -R2.T @ t2
    return R2 @ R1.T, R2 @ (c1 - c2)


def abs2relapose(
    c1: ArrayLike, c2: ArrayLike, q1: ArrayLike, q2: ArrayLike
) -> tuple[Array, Array]:
    """Relative pose from absolute poses given as camera centres and quaternions.

    This is the original's signature (camera centres first, then world-to-camera rotation
    quaternions (w, x, y, z)); see :func:`relative_pose` for the (R, t) form.

    Args:
        c1, c2: (3,) camera centres in world coordinates (``c = −Rᵀ t``).
        q1, q2: (4,) world-to-camera rotation quaternions (w, x, y, z).
    Returns:
        (t12, q12): (3,) translation ``R2 (c1 − c2)`` and (4,) quaternion of ``R2 R1ᵀ``.
    """
    R1, R2 = qvec2rotmat(q1), qvec2rotmat(q2)
    c1, c2 = _as_f64(c1).reshape(3), _as_f64(c2).reshape(3)
    t12 = R2 @ (c1 - c2)
    q12 = rotmat2qvec(R2 @ R1.T)
    return t12, q12


def normalize_points(pts: ArrayLike, K: ArrayLike) -> Array:
    """Pixel points → normalised image-plane points ``K⁻¹ [x, y, 1]ᵀ`` (first two coords).

    Args:
        pts: (N, 2) pixel coordinates (x, y); K: (3, 3) intrinsics.
    Returns:
        (N, 2) float64 normalised coordinates.
    """
    pts = _as_f64(pts).reshape(-1, 2)
    homo = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    xn = np.linalg.solve(_as_f64(K), homo.T).T  # (N, 3)
    return xn[:, :2] / xn[:, 2:]


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
    p1 = _as_f64(p1).reshape(-1, 2)
    p2 = _as_f64(p2).reshape(-1, 2)
    if len(p1) != len(p2):
        raise ValueError(f"matches2relapose_cv: {len(p1)} points in image 1, {len(p2)} in image 2")
    n = len(p1)
    if n < max(5, min_matches):
        return None
    K1, K2 = _as_f64(K1), _as_f64(K2)
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
