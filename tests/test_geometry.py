"""Two-view geometry (utils.geometry): F from poses, relative poses, quaternions, AUC, and
OpenCV pose recovery (utils.eval.geometry)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import utils.eval.geometry as eval_geometry
import utils.geometry as geo
from utils.eval.geometry import matches2relapose_cv
from utils.geometry import (
    abs2relapose,
    as_f64,
    cal_rot_angle_error,
    cal_vec_angle_error,
    error_auc,
    normalize_points,
    pose2essential,
    pose2fund,
    qvec2rotmat,
    relative_pose,
    rotmat2qvec,
    skew,
)


def rot(axis, deg: float) -> np.ndarray:
    """Rotation matrix of `deg` degrees about `axis` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    return cv2.Rodrigues(a * np.radians(deg))[0]


def project(K: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(N, 3) camera-frame points → (N, 2) pixels."""
    x = X @ K.T
    return x[:, :2] / x[:, 2:]


K1 = np.array([[500.0, 0, 320], [0, 480, 240], [0, 0, 1]])
K2 = np.array([[420.0, 0, 300], [0, 430, 200], [0, 0, 1]])
R12 = rot([0.2, 1.0, 0.1], 12.0)
t12 = np.array([-1.0, 0.15, 0.3])


def scene_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random camera-1 points at depth 4..10 and the same points in camera 2."""
    rng = np.random.default_rng(seed)
    X1 = np.column_stack([rng.uniform(-3, 3, n), rng.uniform(-2, 2, n), rng.uniform(4, 10, n)])
    X2 = X1 @ R12.T + t12
    assert (X2[:, 2] > 0).all()
    return X1, X2


def test_skew_is_cross_product():
    v, u = np.array([1.0, -2.0, 3.0]), np.array([0.5, 4.0, -1.0])
    np.testing.assert_allclose(skew(v) @ u, np.cross(v, u))
    np.testing.assert_allclose(skew(v), -skew(v).T)


def test_quaternion_known_values():
    s = np.sqrt(0.5)
    Rz90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(qvec2rotmat([s, 0, 0, s]), Rz90, atol=1e-15)
    np.testing.assert_allclose(rotmat2qvec(Rz90), [s, 0, 0, s], atol=1e-15)
    # non-unit input is normalised; w < 0 is flipped to the w ≥ 0 representative
    np.testing.assert_allclose(qvec2rotmat([2 * s, 0, 0, 2 * s]), Rz90, atol=1e-15)
    np.testing.assert_allclose(rotmat2qvec(qvec2rotmat([-s, 0, 0, -s])), [s, 0, 0, s], atol=1e-15)
    # 180° about x: w = 0, sign of the vector part is free
    q = rotmat2qvec(np.diag([1.0, -1.0, -1.0]))
    np.testing.assert_allclose(np.abs(q), [0, 1, 0, 0], atol=1e-15)
    np.testing.assert_allclose(qvec2rotmat([0, 1, 0, 0]), np.diag([1.0, -1.0, -1.0]), atol=1e-15)


def test_quaternion_roundtrip_random():
    rng = np.random.default_rng(1)
    for _ in range(50):
        q = rng.normal(size=4)
        q = q / np.linalg.norm(q) * np.sign(q[0])
        R = qvec2rotmat(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-14)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(rotmat2qvec(R), q, atol=1e-12)


def test_relative_pose_known_answer():
    # camera 1 at the origin, camera 2 one unit to the right, both looking along +z
    R12_, t12_ = relative_pose(np.eye(3), np.zeros(3), np.eye(3), np.array([-1.0, 0, 0]))
    np.testing.assert_allclose(R12_, np.eye(3))
    np.testing.assert_allclose(t12_, [-1.0, 0, 0])
    # a point 5 m in front of camera 1 is at x = −1 in camera 2
    np.testing.assert_allclose(R12_ @ [0, 0, 5.0] + t12_, [-1.0, 0, 5.0])


def test_relative_pose_composes_world_points():
    rng = np.random.default_rng(2)
    R1, R2 = rot(rng.normal(size=3), 40.0), rot(rng.normal(size=3), -25.0)
    t1, t2 = rng.normal(size=3), rng.normal(size=3)
    Xw = rng.normal(size=(20, 3))
    X1, X2 = Xw @ R1.T + t1, Xw @ R2.T + t2
    R, t = relative_pose(R1, t1, R2, t2)
    np.testing.assert_allclose(X1 @ R.T + t, X2, atol=1e-12)
    # the original's form: camera centres and quaternions → (t12, q12)
    c1, c2 = -R1.T @ t1, -R2.T @ t2
    t_q, q12 = abs2relapose(c1, c2, rotmat2qvec(R1), rotmat2qvec(R2))
    np.testing.assert_allclose(t_q, t, atol=1e-12)
    np.testing.assert_allclose(qvec2rotmat(q12), R, atol=1e-12)


def test_pose2fund_epipolar_constraint_and_scale():
    X1, X2 = scene_points(50)
    x1, x2 = project(K1, X1), project(K2, X2)
    F = pose2fund(K1, K2, R12, t12)
    h1 = np.column_stack([x1, np.ones(len(x1))])
    h2 = np.column_stack([x2, np.ones(len(x2))])
    res = np.einsum("ni,ij,nj->n", h2, F, h1)
    assert np.abs(res).max() < 1e-9 * np.abs(F).max() * 640**2
    # the original's formula equals det(K1) · K2⁻ᵀ [t]ₓ R K1⁻¹ exactly
    F_std = np.linalg.inv(K2).T @ skew(t12) @ R12 @ np.linalg.inv(K1)
    np.testing.assert_allclose(F, np.linalg.det(K1) * F_std, rtol=1e-12, atol=1e-12 * abs(F).max())
    np.testing.assert_allclose(pose2essential(R12, t12), K2.T @ F_std @ K1, atol=1e-12)
    # torch tensors are accepted
    Ft = pose2fund(*(torch.from_numpy(a) for a in (K1, K2, R12, t12)))
    np.testing.assert_array_equal(Ft, F)


def test_pose2fund_reproduces_reference_vector(refvec):
    g = refvec["geometry"]
    F = pose2fund(g["K1"], g["K2"], g["R"], g["t"])
    ref = g["F"].numpy()
    assert np.abs(F - ref).max() <= 1e-10 * np.abs(ref).max()


def test_normalize_points():
    pts = np.array([[320.0, 240.0], [820.0, 720.0]])
    np.testing.assert_allclose(normalize_points(pts, K1), [[0.0, 0.0], [1.0, 1.0]])


def test_matches2relapose_cv_recovers_known_pose():
    cv2.setRNGSeed(0)
    X1, X2 = scene_points(200, seed=3)
    p1, p2 = project(K1, X1), project(K2, X2)
    ret = matches2relapose_cv(p1, p2, K1, K2, rthres=0.5)
    assert ret is not None
    R, t, inliers = ret
    assert R.shape == (3, 3) and t.shape == (3,) and inliers.shape == (200,)
    assert inliers.dtype == bool and inliers.mean() > 0.95
    assert cal_rot_angle_error(R, R12) < 0.1
    assert cal_vec_angle_error(t, t12) < 0.1
    # recoverPose's chirality check gives the true direction, not just the line
    assert np.dot(t, t12) > 0
    assert np.linalg.norm(t) == pytest.approx(1.0)


@pytest.mark.parametrize("protocol", ["patch2pix", "loftr"])
def test_one_pose_solver_recovers_known_pose(protocol):
    """essential_relapose is the one home of the RANSAC + best-recoverPose loop: the
    validation (matches2relapose_cv) and MegaDepth-1500 (estimate_pose) both call it."""
    from unittest import mock

    from utils.eval import geometry as eg
    from utils.eval import megadepth1500 as md

    X1, X2 = scene_points(200, seed=5)
    p1, p2 = project(K1, X1), project(K2, X2)
    ret = eg.essential_relapose(
        normalize_points(p1, K1),
        normalize_points(p2, K2),
        np.eye(3),
        1e-3,
        0.99999,
        protocol=protocol,
        seed=0,
    )
    assert ret is not None
    R, t, inl = ret
    assert cal_rot_angle_error(R, R12) < 0.1 and cal_vec_angle_error(t, t12) < 0.1
    assert np.dot(t, t12) > 0 and inl.mean() > 0.95
    calls = []
    real = eg.essential_relapose

    def spy(*a, **k):
        calls.append(k.get("protocol"))
        return real(*a, **k)

    with (
        mock.patch.object(eg, "essential_relapose", spy),
        mock.patch.object(md, "essential_relapose", spy),
    ):
        assert eg.matches2relapose_cv(p1, p2, K1, K2) is not None
        got = md.estimate_pose(p1, p2, K1, K2)
    assert calls == ["patch2pix", "loftr"]
    assert cal_rot_angle_error(got[0], R12) < 0.1 and cal_vec_angle_error(got[1], t12) < 0.1


def test_matches2relapose_cv_rejects_outliers():
    cv2.setRNGSeed(0)
    X1, X2 = scene_points(200, seed=4)
    p1, p2 = project(K1, X1), project(K2, X2)
    rng = np.random.default_rng(5)
    bad = rng.choice(200, 60, replace=False)
    p2 = p2.copy()
    p2[bad] += rng.uniform(20, 60, size=(60, 2)) * rng.choice([-1, 1], size=(60, 2))
    R, t, inliers = matches2relapose_cv(p1, p2, K1, K2, rthres=0.5)
    assert not inliers[bad].any()
    assert inliers.sum() >= 130
    assert cal_rot_angle_error(R, R12) < 0.1
    assert cal_vec_angle_error(t, t12) < 0.1


def test_matches2relapose_cv_too_few_matches():
    X1, X2 = scene_points(4)
    assert matches2relapose_cv(project(K1, X1), project(K2, X2), K1, K2) is None
    assert matches2relapose_cv(np.zeros((0, 2)), np.zeros((0, 2)), K1, K2) is None
    with pytest.raises(ValueError):
        matches2relapose_cv(np.zeros((6, 2)), np.zeros((5, 2)), K1, K2)


def test_api_names_stay_importable_from_utils_eval_geometry():
    """The names other tools import (docs/architecture.md §8) still import from
    utils.eval.geometry and are the one implementation."""
    for name in (
        "pose2fund",
        "abs2relapose",
        "relative_pose",
        "qvec2rotmat",
        "rotmat2qvec",
        "quat2mat",
        "mat2quat",
        "skew",
        "pose2essential",
        "normalize_points",
    ):
        assert getattr(eval_geometry, name) is getattr(geo, name), name
        assert name in eval_geometry.__all__
    assert "matches2relapose_cv" in eval_geometry.__all__


def test_as_f64_accepts_lists_arrays_and_tensors():
    out = as_f64(torch.tensor([[1, 2]], dtype=torch.int32))
    assert out.dtype == np.float64 and out.tolist() == [[1.0, 2.0]]
    assert as_f64([3, 4]).tolist() == [3.0, 4.0] and as_f64(np.float32(0.5)) == 0.5


def test_error_auc_exact_values():
    # one error at 5: recall rises linearly from (0, 0) to (5, 1), then stays at 1
    assert error_auc([5.0], (10,)) == pytest.approx([0.75])
    # an error equal to the threshold is not counted (SuperGlue's convention: the curve is cut
    # before it, at recall 0), only one strictly below it
    assert error_auc([5.0], (5,)) == [0.0]
    assert error_auc([4.0], (5,)) == pytest.approx([0.5 * 4 / 5 + 1 / 5])
    assert error_auc([2.0], [5.0]) == pytest.approx([0.8])
    assert error_auc([0.0, 0.0], (5, 10)) == pytest.approx([1.0, 1.0])
    # failures (inf / NaN) are never recalled: half the pairs fail → at most 0.5
    assert error_auc([0.0, np.inf], (10,)) == pytest.approx([0.5])
    assert error_auc([np.inf, np.nan], (5,)) == [0.0]
    assert error_auc([], (1.0, 3.0)) == [0.0, 0.0]
    # four pairs, one failed: the curve runs through (0, 0) (0.5, 1/4) (2, 1/2) (4, 3/4) and
    # stays at 3/4. t = 3: (0.5·¼/2 + 1.5·(¼+½)/2 + 1·½) / 3 = 1.125 / 3
    errs = [4.0, 0.5, np.inf, 2.0]
    assert error_auc(errs, (1, 3, 5)) == pytest.approx([0.1875, 0.375, 0.525])
    # the default thresholds are 5, 10, 20 (t = 20: (0.0625 + 0.5625 + 1.25 + 16·¾) / 20)
    assert error_auc(errs) == pytest.approx([0.525, 0.6375, 0.69375])
    # any iterable (a generator) and a tensor give the same
    assert error_auc(e for e in errs) == pytest.approx([0.525, 0.6375, 0.69375])
    assert error_auc(torch.tensor(errs), (3,)) == pytest.approx([0.375])
    with pytest.raises(ValueError, match="positive"):
        error_auc([1.0], (0,))
