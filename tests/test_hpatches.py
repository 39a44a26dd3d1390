"""HPatches metrics (exact values on constructed cases), data generator, runner and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.eval import eval_hpatches
from utils.eval.hpatches import (
    PairResult,
    corner_error,
    error_auc,
    estimate_homography,
    evaluate_hpatches,
    evaluate_pair,
    list_sequences,
    mma_curve,
    oracle_matcher,
    read_homography,
    reprojection_errors,
    summarize,
    warp_points,
    write_homography,
)
from utils.eval.make_hpatches_synthetic import make_synthetic_hpatches

H_T = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, -3.0], [0.0, 0.0, 1.0]])  # exact translation
H_P = np.array([[0.9, 0.1, 12.0], [-0.05, 1.1, 4.0], [1e-4, 2e-4, 1.0]])  # perspective


def _displaced(n_each: int, disp: list[float]) -> np.ndarray:
    """Matches under H_T whose image-2 points are displaced along x by `disp` (exact)."""
    rng = np.random.default_rng(0)
    rows = []
    for d in disp:
        p1 = rng.integers(0, 200, size=(n_each, 2)).astype(np.float64)
        p2 = p1 + H_T[:2, 2] + np.array([d, 0.0])
        rows.append(np.c_[p1, p2])
    return np.concatenate(rows)


def test_mma_known_curve() -> None:
    m = _displaced(4, [0.5, 2.5, 7.0])
    err = reprojection_errors(m, H_T)
    assert np.array_equal(np.sort(err), np.repeat([0.5, 2.5, 7.0], 4))
    curve = mma_curve(err)
    third = 1.0 / 3.0
    expected = [third, third, 2 * third, 2 * third, 2 * third, 2 * third, 1, 1, 1, 1]
    assert np.allclose(curve, expected, rtol=0, atol=1e-15)
    assert curve[6] == 1.0  # error exactly 7 counts at 7 px (<=)
    assert mma_curve(np.zeros(0)).tolist() == [0.0] * 10  # no match: accuracy 0


def test_reprojection_under_perspective() -> None:
    p1 = np.array([[0.0, 0.0], [100.0, 50.0], [30.0, 70.0]])
    p2 = warp_points(p1, H_P)
    x = np.array([0.0, 0.0, 1.0])
    assert np.allclose(p2[0], (H_P @ x)[:2] / (H_P @ x)[2])
    m = np.c_[p1, p2 + np.array([[3.0, 4.0]])]
    assert np.allclose(reprojection_errors(m, H_P), 5.0)


def test_perfect_homography() -> None:
    rng = np.random.default_rng(1)
    p1 = rng.uniform(0, 300, size=(50, 2))
    m = np.c_[p1, warp_points(p1, H_P)]
    H, inl = estimate_homography(m, ransac_thres=2.0)
    assert H is not None and inl.all()
    assert corner_error(H, H_P, 320, 240) < 1e-4  # OpenCV fits in float32
    assert corner_error(H_P, H_P, 320, 240) == 0.0
    mma, ce, n_inl = evaluate_pair(m, H_P, 320, 240)
    assert mma == [1.0] * 10 and ce < 1e-4 and n_inl == 50
    h2, _ = estimate_homography(m, solver="usac")
    assert h2 is not None and corner_error(h2, H_P, 320, 240) < 1e-3


def test_translated_homography_corner_error() -> None:
    shift = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 4.0], [0.0, 0.0, 1.0]])
    # every warped corner moves by (3, 4): corner error 5
    assert corner_error(shift @ H_P, H_P, 640, 480) == pytest.approx(5.0, abs=1e-9)
    assert corner_error(shift, np.eye(3), 640, 480) == 5.0
    # only a horizontal scale: corners (0,0),(w-1,0),(0,h-1),(w-1,h-1) move 0, 9, 0, 9
    sx = np.diag([1.01, 1.0, 1.0])
    assert corner_error(sx, np.eye(3), 901, 10) == pytest.approx(4.5, abs=1e-12)


def test_homography_failures() -> None:
    H, inl = estimate_homography(np.zeros((3, 4)))
    assert H is None and inl.shape == (3,) and not inl.any()
    assert corner_error(None, np.eye(3), 10, 10) == float("inf")
    mma, ce, _ = evaluate_pair(np.zeros((0, 4)), np.eye(3), 10, 10)
    assert mma == [0.0] * 10 and ce == float("inf")
    with pytest.raises(ValueError):
        estimate_homography(np.zeros((10, 4)), solver="nope")


def test_error_auc_exact() -> None:
    assert error_auc([2.0], [5.0]) == pytest.approx([0.8])
    assert error_auc([0.0, 0.0], [1.0, 3.0]) == pytest.approx([1.0, 1.0])
    assert error_auc([], [1.0]) == [0.0]
    errs = [0.0, 2.0, 4.0, float("inf")]
    assert error_auc(errs, [1, 3, 5, 10]) == pytest.approx([0.25, 1.25 / 3, 0.55, 0.65])


def test_summarize_exact() -> None:
    mk = [0.5] * 10
    pairs = [
        PairResult("i_a", 2, 10, [1.0] * 10, 0.0),
        PairResult("i_a", 3, 20, [0.0] * 10, 2.0),
        PairResult("v_b", 2, 30, mk, 4.0),
        PairResult("v_b", 3, 0, [0.0] * 10, float("inf")),
    ]
    s = summarize(pairs)
    assert s["illumination"]["n_pairs"] == 2 and s["viewpoint"]["n_seqs"] == 1
    assert s["illumination"]["mma"]["1"] == 0.5 and s["viewpoint"]["mma"]["10"] == 0.25
    assert s["all"]["mma"]["5"] == pytest.approx(0.375)
    assert s["all"]["mean_matches"] == 15.0
    assert list(s["all"]["homography_correct"].values()) == [0.25, 0.5, 0.75, 0.75]
    assert list(s["all"]["homography_auc"].values()) == pytest.approx([0.25, 1.25 / 3, 0.55, 0.65])
    assert s["viewpoint"]["homography_failures"] == 1
    assert s["illumination"]["homography_correct"]["1"] == 0.5


def test_homography_file_roundtrip(tmp_path: Path) -> None:
    write_homography(tmp_path / "H_1_2", H_P)
    lines = (tmp_path / "H_1_2").read_text().strip().splitlines()
    assert len(lines) == 3 and all(len(ln.split()) == 3 for ln in lines)
    assert np.allclose(read_homography(tmp_path / "H_1_2"), H_P, rtol=1e-11, atol=0)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hpatches")
    make_synthetic_hpatches(root, n_seqs=1, seed=0, max_side=128)
    return root


def test_synthetic_layout(synth_root: Path) -> None:
    seqs = list_sequences(synth_root)
    assert [p.name[:2] for p in seqs] == ["i_", "v_"]
    for seq in seqs:
        w, h = Image.open(seq / "1.ppm").size
        assert max(w, h) == 128
        for k in range(1, 7):
            assert (seq / f"{k}.ppm").read_bytes()[:2] == b"P6"  # binary PPM
        for k in range(2, 7):
            H = read_homography(seq / f"H_1_{k}")
            assert H.shape == (3, 3) and H[2, 2] == pytest.approx(1.0)
    # image k is image 1 warped by H_1_k: compare the pixel under a warped grid point
    seq = seqs[1]
    im1 = np.asarray(Image.open(seq / "1.ppm")).astype(np.float64)
    im6 = np.asarray(Image.open(seq / "6.ppm")).astype(np.float64)
    m = oracle_matcher(step=4, margin=2)(str(seq / "1.ppm"), str(seq / "6.ppm"))
    assert len(m) > 100
    a = im1[m[:, 1].astype(int), m[:, 0].astype(int)]
    b = im6[np.rint(m[:, 3]).astype(int), np.rint(m[:, 2]).astype(int)]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.7


def test_runner_with_ground_truth_matcher(synth_root: Path) -> None:
    res = evaluate_hpatches(synth_root, oracle_matcher(step=8), progress=False)
    s = res["summary"]
    assert s["all"]["n_pairs"] == 10 and s["illumination"]["n_pairs"] == 5
    for sub in ("illumination", "viewpoint", "all"):
        assert list(s[sub]["mma"].values()) == [1.0] * 10
        assert list(s[sub]["homography_correct"].values()) == [1.0] * 4
        assert s[sub]["homography_auc"]["1"] > 0.99
    assert len(res["pairs"]) == 10 and res["pairs"][0]["k"] == 2


def test_runner_with_displaced_matcher(synth_root: Path) -> None:
    gt = oracle_matcher(step=8)

    def noisy(p1: str, p2: str) -> tuple[np.ndarray, np.ndarray, None]:
        m = gt(p1, p2)
        m[::2, 2] += 2.5  # half of the matches 2.5 px off along x
        return m, np.ones(len(m)), None  # the (matches, scores, coarse) tuple is accepted

    res = evaluate_hpatches(synth_root, noisy, progress=False, max_seqs=1)
    mma = [res["summary"]["all"]["mma"][str(t)] for t in range(1, 11)]
    n = np.array([p["n_matches"] for p in res["pairs"]])
    half = np.mean(np.ceil(n / 2) / n)  # rows 0, 2, 4, ... are displaced
    assert mma[:2] == pytest.approx([1 - half] * 2, abs=1e-12)
    assert mma[2:] == [1.0] * 8


def test_cli_oracle(synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "res" / "hp.json"
    rc = eval_hpatches.main(
        ["--root", str(synth_root), "--matcher", "oracle", "--out", str(out), "--no_progress"]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data) >= {"config", "summary", "pairs"}
    assert data["summary"]["all"]["mma"]["1"] == 1.0
    assert data["config"]["solver"] == "ransac"
    capsys.readouterr()
    assert eval_hpatches.main(["--root", str(synth_root)]) == 2  # no checkpoint
    err = capsys.readouterr().err.strip()
    assert err == "utils.eval.eval_hpatches: error: --ckpt is required (or use --matcher oracle)"
    assert eval_hpatches.main(["--root", str(tmp_path / "none"), "--matcher", "oracle"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "none") in err


def test_exclusion(synth_root: Path) -> None:
    names = [p.name for p in list_sequences(synth_root)]
    assert list_sequences(synth_root, exclude=[names[0]])[0].name == names[1]
    assert eval_hpatches.parse_exclude("d2net")[0] == "i_contruction"
    assert eval_hpatches.parse_exclude("none") == ()
    assert eval_hpatches.parse_exclude("a, b") == ("a", "b")
