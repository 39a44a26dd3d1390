"""Two-view geometry, the single home used by datasets, pair generation, training and evaluation.

Fundamental / essential matrices from poses, relative poses, quaternion ↔ rotation,
Sampson and symmetric epipolar distances (numpy; their formula, :func:`epipolar_terms` and
the ``*_from_terms`` helpers, also serves the torch versions ``networks.utils.sampson_dist``
/ ``sym_epi_dist`` used in the training losses), rotation / direction angle errors and the
area under the cumulative error curve (AUC). RANSAC pose estimation from matches
(OpenCV) is ``utils.eval.geometry.matches2relapose_cv``.

Conventions (docs/file-formats.md §2):
- A pose (R, t) maps world points to camera points, ``X_cam = R · X_world + t``; the camera
  centre is ``c = −Rᵀ t``.
- The relative pose (R12, t12) maps camera-1 points to camera-2 points,
  ``X2 = R12 · X1 + t12`` with ``R12 = R2 R1ᵀ`` and ``t12 = R2 (c1 − c2)``.
- Quaternions are (w, x, y, z), unit norm, as written by COLMAP.
- F satisfies ``x2ᵀ F x1 = 0`` for homogeneous pixel points x1 (image 1) and x2 (image 2).
- Distances (docs/architecture.md, Conventions): the Sampson distance and the symmetric
  epipolar distance are squared (px²) unless `sqrt=True` is asked for.

All functions work in float64 numpy; array-likes (lists, CPU torch tensors) are accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "as_f64",
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
    "epipolar_terms",
    "sampson_from_terms",
    "symmetric_from_terms",
    "sampson_distance",
    "symmetric_epipolar_distance",
    "cal_vec_angle_error",
    "cal_rot_angle_error",
    "cal_quat_angle_error",
    "error_auc",
]

Array = NDArray[np.float64]


def as_f64(x: ArrayLike) -> Array:
    """Any array-like (list, numpy, torch tensor on any device) → float64 numpy array."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------------------
# Poses, rotations, fundamental matrices
# --------------------------------------------------------------------------------------
def skew(v: ArrayLike) -> Array:
    """Cross-product matrix [v]ₓ of a 3-vector.

    Args:
        v: (3,) vector.
    Returns:
        (3, 3) matrix with ``skew(v) @ u == np.cross(v, u)``.
    """
    x, y, z = as_f64(v).reshape(3)
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
    K1, K2, R = as_f64(K1), as_f64(K2), as_f64(R)
    t = as_f64(t).reshape(3)
    return np.linalg.inv(K2).T @ R @ K1.T @ skew(K1 @ R.T @ t)


def pose2essential(R: ArrayLike, t: ArrayLike) -> Array:
    """Essential matrix ``E = [t]ₓ R`` (normalised coordinates: ``x2ᵀ E x1 = 0``).

    Args:
        R: (3, 3) relative rotation; t: (3,) relative translation.
    Returns:
        (3, 3) float64 E.
    """
    return skew(t) @ as_f64(R)


def qvec2rotmat(qvec: ArrayLike) -> Array:
    """Rotation matrix of a quaternion (w, x, y, z).

    The quaternion is normalised first, so any nonzero multiple gives the same matrix.

    Args:
        qvec: (4,) quaternion (w, x, y, z).
    Returns:
        (3, 3) float64 rotation matrix.
    """
    q = as_f64(qvec).reshape(4)
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
    m = as_f64(R).reshape(3, 3)
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
    R1, R2 = as_f64(R1).reshape(3, 3), as_f64(R2).reshape(3, 3)
    t1, t2 = as_f64(t1).reshape(3), as_f64(t2).reshape(3)
    c1 = -R1.T @ t1
    c2 = -R2.T @ t2
    return R2 @ R1.T, R2 @ (c1 - c2)


def abs2relapose(c1: ArrayLike, c2: ArrayLike, q1: ArrayLike, q2: ArrayLike) -> tuple[Array, Array]:
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
    c1, c2 = as_f64(c1).reshape(3), as_f64(c2).reshape(3)
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
    pts = as_f64(pts).reshape(-1, 2)
    homo = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    xn = np.linalg.solve(as_f64(K), homo.T).T  # (N, 3)
    return xn[:, :2] / xn[:, 2:]


# --------------------------------------------------------------------------------------
# Epipolar distances
# --------------------------------------------------------------------------------------


def _to_homogeneous(pts: ArrayLike, homos: bool) -> Array:
    """(N, 2) → (N, 3) with a column of ones when `homos`; (N, 3) input is used as is."""
    pts = as_f64(pts)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"points must have shape (N, 2) or (N, 3), got {pts.shape}")
    if pts.shape[1] == 2:
        if not homos:
            raise ValueError("(N, 2) points need homos=True to be made homogeneous")
        pts = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    return pts


def epipolar_terms(x1, x2, F):
    """``x2ᵀFx1`` and the epipolar lines ``F x1``, ``Fᵀ x2`` of homogeneous point rows.

    The one formula of both epipolar distances, written once for numpy arrays and torch
    tensors alike (only ``@``, ``.T``, ``*`` and ``.sum``), so the numpy distances here and
    the differentiable ones of ``networks.utils`` are the same code.

    Args:
        x1, x2: (N, 3) homogeneous points (image 1, image 2); F: (3, 3), all of one kind.
    Returns:
        (x2ᵀFx1 (N,), rows F x1 (N, 3), rows Fᵀ x2 (N, 3)).
    """
    Fx1 = x1 @ F.T
    Ftx2 = x2 @ F
    return (x2 * Fx1).sum(-1), Fx1, Ftx2


def sampson_from_terms(x2tFx1, Fx1, Ftx2):
    """Squared Sampson distance from :func:`epipolar_terms` (numpy or torch)."""
    denom = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2 + 1e-8
    return x2tFx1**2 / denom


def symmetric_from_terms(x2tFx1, Fx1, Ftx2, sqrt: bool = False, eps: float = 0.0):
    """Symmetric epipolar distance from :func:`epipolar_terms` (numpy or torch).

    Squared (default) or, with `sqrt`, unsquared; `eps` is added inside each denominator
    (the torch version of the original adds 1e-8, the numpy one nothing).
    """
    n1 = Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2 + eps
    n2 = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + eps
    if sqrt:
        return abs(x2tFx1) * (1.0 / n1**0.5 + 1.0 / n2**0.5)
    return x2tFx1**2 * (1.0 / n1 + 1.0 / n2)


def _np_terms(pts1: ArrayLike, pts2: ArrayLike, F: ArrayLike, homos: bool):
    x1 = _to_homogeneous(pts1, homos)
    x2 = _to_homogeneous(pts2, homos)
    return epipolar_terms(x1, x2, as_f64(F).reshape(3, 3))


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
    return sampson_from_terms(*_np_terms(pts1, pts2, F, homos))


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
    return symmetric_from_terms(*_np_terms(pts1, pts2, F, True), sqrt=sqrt)


# --------------------------------------------------------------------------------------
# Pose errors and their AUC
# --------------------------------------------------------------------------------------


def cal_vec_angle_error(v_est: ArrayLike, v_gt: ArrayLike, sign_invariant: bool = True) -> float:
    """Angle (degrees) between two 3-vectors, e.g. estimated and true translation directions.

    Args:
        v_est, v_gt: (3,) vectors (any scale).
        sign_invariant: return ``min(err, 180 − err)`` (a translation from an essential matrix
            is known up to sign).
    Returns:
        Angle in [0, 90] (sign-invariant) or [0, 180]; NaN when a vector is zero.
    """
    a = as_f64(v_est).reshape(-1)
    b = as_f64(v_gt).reshape(-1)
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
    R_est = as_f64(R_est).reshape(3, 3)
    R_gt = as_f64(R_gt).reshape(3, 3)
    cos = np.clip((np.trace(R_est.T @ R_gt) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def cal_quat_angle_error(q_est: ArrayLike, q_gt: ArrayLike) -> float:
    """Rotation angle (degrees) between two quaternions (w, x, y, z): ``2 acos(|⟨q̂1, q̂2⟩|)``.

    Args:
        q_est, q_gt: (4,) quaternions (normalised here).
    Returns:
        Angle in [0, 180].
    """
    a = as_f64(q_est).reshape(4)
    b = as_f64(q_gt).reshape(4)
    d = abs(np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b)))
    return float(np.degrees(2.0 * np.arccos(np.clip(d, 0.0, 1.0))))


def error_auc(
    errors: ArrayLike | Iterable[float], thresholds: Sequence[float] = (5, 10, 20)
) -> list[float]:
    """Normalised area under the cumulative error curve (the SuperGlue / LoFTR convention).

    The recall curve passes through (0, 0) and (e_i, i / n) for the sorted errors
    e_1 ≤ … ≤ e_n, linear in between and flat after the last error below t; its area on
    [0, t] is divided by t. NaN / inf errors (failures) count as pairs never recalled. Used
    for pose errors (degrees) and HPatches corner errors (px) alike.

    Args:
        errors: (n,) errors (array, tensor, list or any iterable of numbers).
        thresholds: (T,) positive upper limits t.
    Returns:
        T floats in [0, 1] (0 for an empty error list).
    """
    if not hasattr(errors, "__len__") and not hasattr(errors, "detach"):
        errors = list(errors)  # a generator
    err = as_f64(errors).reshape(-1)
    n = err.size
    err = np.sort(err[np.isfinite(err)])
    out = []
    for t in thresholds:
        t = float(t)
        if not t > 0:
            raise ValueError(f"error_auc: thresholds must be positive, got {t}")
        if n == 0:
            out.append(0.0)
            continue
        k = int(np.searchsorted(err, t, side="left"))  # errors strictly below t
        xs = np.concatenate([[0.0], err[:k], [t]])
        ys = np.concatenate([[0.0], np.arange(1, k + 1) / n, [k / n]])
        out.append(float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0)) / t)
    return out
