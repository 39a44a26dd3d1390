"""Numpy measures: epipolar distances with exact expected values, pose errors, histograms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from networks.utils import sampson_dist
from utils.eval import measure
from utils.eval.measure import (
    cal_pass_rates,
    cal_selection_rate,
    check_inliers_distr,
    eval_matches_relapose,
)
from utils.geometry import (
    cal_quat_angle_error,
    cal_rot_angle_error,
    cal_vec_angle_error,
    pose2fund,
    qvec2rotmat,
    rotmat2qvec,
    sampson_distance,
    symmetric_epipolar_distance,
)

K = np.array([[400.0, 0, 320], [0, 400, 240], [0, 0, 1]])


def rectified_pair(n: int, seed: int = 0):
    """Rectified stereo (R = I, t along x): epipolar lines are the image rows."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(3, 8, n)])
    t = np.array([-0.5, 0.0, 0.0])
    x1 = X @ K.T
    x2 = (X + t) @ K.T
    return x1[:, :2] / x1[:, 2:], x2[:, :2] / x2[:, 2:], pose2fund(K, K, np.eye(3), t)


def test_rectified_exact_values():
    p1, p2, F = rectified_pair(30)
    d = np.linspace(-3, 3, 30)
    # true correspondences lie on the same row
    np.testing.assert_allclose(p1[:, 1], p2[:, 1], atol=1e-12)
    assert sampson_distance(p1, p2, F).max() < 1e-20
    # sliding along the epipolar line (x) keeps every distance zero
    along = p2 + np.column_stack([d, np.zeros(30)])
    assert sampson_distance(p1, along, F).max() < 1e-20
    assert symmetric_epipolar_distance(p1, along, F).max() < 1e-20
    # moving y2 by d: x2ᵀFx1 ∝ d, both line normals have unit (x, y)-norm up to the same
    # factor, so Sampson = d²/2, symmetric = 2 d², unsquared symmetric = 2 |d|
    shifted = p2 + np.column_stack([np.zeros(30), d])
    np.testing.assert_allclose(sampson_distance(p1, shifted, F), d**2 / 2, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        symmetric_epipolar_distance(p1, shifted, F), 2 * d**2, rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        symmetric_epipolar_distance(p1, shifted, F, sqrt=True), 2 * np.abs(d), rtol=1e-9
    )
    # Sampson does not depend on the scale of F (only through the 1e-8 guard)
    np.testing.assert_allclose(sampson_distance(p1, shifted, 3.0 * F), d**2 / 2, rtol=1e-9)


def test_general_pair_point_to_line_distance():
    # shift x2 off its epipolar line by d along the line normal: the image-2 term of the
    # symmetric distance is then exactly d²
    rng = np.random.default_rng(1)
    R = cv2.Rodrigues(np.array([0.05, 0.2, -0.03]))[0]
    t = np.array([1.0, 0.2, -0.1])
    K2 = np.array([[350.0, 0, 300], [0, 360, 220], [0, 0, 1]])
    F = pose2fund(K, K2, R, t)
    X = np.column_stack([rng.uniform(-2, 2, 20), rng.uniform(-1, 1, 20), rng.uniform(4, 9, 20)])
    x1 = X @ K.T
    x1 = x1[:, :2] / x1[:, 2:]
    x2 = (X @ R.T + t) @ K2.T
    x2 = x2[:, :2] / x2[:, 2:]
    lines = np.column_stack([x1, np.ones(20)]) @ F.T
    normals = lines[:, :2] / np.linalg.norm(lines[:, :2], axis=1, keepdims=True)
    d = rng.uniform(0.5, 4, 20)
    moved = x2 + d[:, None] * normals
    h2 = np.column_stack([moved, np.ones(20)])
    dist2 = np.abs(np.sum(h2 * lines, 1)) / np.linalg.norm(lines[:, :2], axis=1)
    np.testing.assert_allclose(dist2, d, rtol=1e-9)
    # Sampson ≤ the image-2 squared distance, and symmetric ≥ it
    assert (sampson_distance(x1, moved, F) <= d**2 * (1 + 1e-9)).all()
    assert (symmetric_epipolar_distance(x1, moved, F) >= d**2 * (1 - 1e-9)).all()


def test_homogeneous_inputs():
    p1, p2, F = rectified_pair(5)
    p2 = p2 + 1.0
    h1 = np.column_stack([p1, np.ones(5)])
    h2 = np.column_stack([p2, np.ones(5)])
    np.testing.assert_allclose(sampson_distance(h1, h2, F), sampson_distance(p1, p2, F))
    d = sampson_distance(p1, p2, F)
    np.testing.assert_allclose(sampson_distance(h1, h2, F, homos=False), d)
    with pytest.raises(ValueError):
        sampson_distance(p1, p2, F, homos=False)


def test_matches_reference_and_torch(refvec):
    g = refvec["geometry"]
    m = g["matches"].double().numpy()
    F = g["F"].numpy()
    d = sampson_distance(m[:, :2], m[:, 2:], F)
    np.testing.assert_allclose(d, g["sampson"].double().numpy(), rtol=1e-4, atol=1e-4)
    dt = sampson_dist(torch.from_numpy(m[:, :2]), torch.from_numpy(m[:, 2:]), torch.from_numpy(F))
    np.testing.assert_allclose(d, dt.numpy(), rtol=1e-10)


def test_angle_errors_known_values():
    assert cal_vec_angle_error([1, 0, 0], [1, 1, 0]) == pytest.approx(45.0)
    assert cal_vec_angle_error([1, 0, 0], [0, 2, 0]) == pytest.approx(90.0)
    # a translation direction is known up to sign
    assert cal_vec_angle_error([1, 0, 0], [-3, 0, 0]) == pytest.approx(0.0, abs=1e-6)
    assert cal_vec_angle_error([1, 0, 0], [-1, 1, 0]) == pytest.approx(45.0)
    assert cal_vec_angle_error([1, 0, 0], [-1, 1, 0], sign_invariant=False) == pytest.approx(135.0)
    assert np.isnan(cal_vec_angle_error([0, 0, 0], [1, 0, 0]))
    R30 = cv2.Rodrigues(np.array([0.0, 0.0, np.radians(30)]))[0]
    assert cal_rot_angle_error(R30, np.eye(3)) == pytest.approx(30.0)
    assert cal_rot_angle_error(R30, R30) == pytest.approx(0.0, abs=1e-6)
    assert cal_rot_angle_error(R30.T, R30) == pytest.approx(60.0)
    q30 = rotmat2qvec(R30)
    assert cal_quat_angle_error(q30, [1, 0, 0, 0]) == pytest.approx(30.0)
    assert cal_quat_angle_error(-q30, q30) == pytest.approx(0.0, abs=1e-6)


def _pose_pair(n: int, seed: int):
    rng = np.random.default_rng(seed)
    R = cv2.Rodrigues(np.array([0.02, 0.25, 0.05]))[0]
    t = np.array([0.9, 0.05, 0.2])
    K2 = np.array([[380.0, 0, 310], [0, 370, 250], [0, 0, 1]])
    X = np.column_stack([rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(4, 9, n)])
    x1 = X @ K.T
    x2 = (X @ R.T + t) @ K2.T
    matches = np.column_stack([x1[:, :2] / x1[:, 2:], x2[:, :2] / x2[:, 2:]])
    return matches, K2, R, t


def test_eval_matches_relapose():
    cv2.setRNGSeed(0)
    matches, K2, R, t = _pose_pair(150, 2)
    err_q, err_t, inliers = eval_matches_relapose(matches, K, K2, R, 5 * t, cv_thres=0.5)
    assert err_q < 0.1 and err_t < 0.1
    assert inliers.shape == (150,) and inliers.mean() > 0.95
    # a quaternion ground truth gives the same errors
    cv2.setRNGSeed(0)
    err_q2, err_t2, _ = eval_matches_relapose(matches, K, K2, rotmat2qvec(R), t)
    assert err_q2 == pytest.approx(err_q, abs=1e-3) and err_t2 == pytest.approx(err_t, abs=1e-3)
    # a wrong ground truth is measured as such
    cv2.setRNGSeed(0)
    R_off = qvec2rotmat([np.cos(np.radians(5)), 0, 0, np.sin(np.radians(5))]) @ R
    err_q3, _, _ = eval_matches_relapose(matches, K, K2, R_off, t)
    assert err_q3 == pytest.approx(10.0, abs=0.1)
    assert eval_matches_relapose(matches[:4], K, K2, R, t) is None


def test_check_inliers_distr_one_per_bin():
    vals = np.array([0.005, 0.5, 3, 7, 20, 30, 75, 200, 5000])
    hist, text = check_inliers_distr(vals, tag="fine", return_hist=True)
    np.testing.assert_allclose(hist, np.full(9, 1 / 9))
    assert text.startswith("fine n=1 mean=592.83")
    assert "[0,0.01)=11.1%" in text and "[2500,100000)=11.1%" in text
    # bins are left-closed: 0.01 falls in [0.01, 1)
    np.testing.assert_array_equal(check_inliers_distr([0.01], return_hist=True)[0][:2], [0, 1])
    assert check_inliers_distr(vals, tag="fine") == text


def test_check_inliers_distr_averages_pairs():
    # pair A: all in [0, 0.01); pair B: half in [1, 5), half in [50, 100); an empty pair is left out
    hist, text = check_inliers_distr(
        [np.zeros(4), np.array([2.0, 60.0]), np.zeros(0)], return_hist=True
    )
    expect = np.zeros(9)
    expect[0], expect[2], expect[6] = 0.5, 0.25, 0.25
    np.testing.assert_allclose(hist, expect)
    assert text.startswith("n=2 mean=15.50")
    hist, _ = check_inliers_distr([], return_hist=True)
    np.testing.assert_array_equal(hist, np.zeros(9))


def test_pass_rates_and_selection_rate():
    errs = [0.5, 2.0, 6.0, 20.0, np.nan]
    r = cal_pass_rates(errs)
    assert list(r) == list(range(1, 11))
    assert r[1] == pytest.approx(0.2) and r[5] == pytest.approx(0.4)
    assert r[10] == pytest.approx(0.6)
    assert cal_selection_rate(errs) == pytest.approx(0.34 * 0.2 + 0.33 * 0.4 + 0.33 * 0.6)
    assert cal_pass_rates([]) == {k: 0.0 for k in range(1, 11)}


def test_original_names_stay_importable():
    """The measure names other tools import (docs/architecture.md §8): utils.geometry's."""
    import utils.geometry as geo
    from utils.eval import hpatches

    assert measure.sampson_distance is geo.sampson_distance
    assert measure.symmetric_epipolar_distance is geo.symmetric_epipolar_distance
    assert hpatches.error_auc is geo.error_auc
    for name in (
        "sampson_distance",
        "symmetric_epipolar_distance",
        "eval_matches_relapose",
        "check_inliers_distr",
    ):
        assert name in measure.__all__ and callable(getattr(measure, name))


def test_torch_distances_are_the_numpy_formula():
    """networks.utils' differentiable distances equal utils.geometry's on the same points."""
    from networks.utils import sym_epi_dist

    p1, p2, F = rectified_pair(7, seed=3)
    p2 = p2 + np.random.default_rng(4).normal(0, 2.0, p2.shape)  # off the epipolar lines
    t1, t2, tF = (torch.from_numpy(a) for a in (p1, p2, F))
    np.testing.assert_allclose(sampson_dist(t1, t2, tF).numpy(), sampson_distance(p1, p2, F))
    for sqrt in (False, True):
        want = symmetric_epipolar_distance(p1, p2, F, sqrt=sqrt)
        got = sym_epi_dist(t1, t2, tF, sqrt=sqrt).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-9)
    # rectified: both epipolar lines are rows, so the unsquared distance is 2 |Δy| (px)
    np.testing.assert_allclose(
        sym_epi_dist(t1, t2, tF, sqrt=True).numpy(), 2 * np.abs(p2[:, 1] - p1[:, 1]), rtol=1e-9
    )
    np.testing.assert_allclose(
        sym_epi_dist(t1, t2, tF).numpy(), 2 * (p2[:, 1] - p1[:, 1]) ** 2, rtol=1e-9
    )
    x2 = t2.clone().requires_grad_(True)
    sym_epi_dist(t1, x2, tF, sqrt=True).sum().backward()
    assert torch.isfinite(x2.grad).all() and x2.grad[:, 1].abs().min() > 0
