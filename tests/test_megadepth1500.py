"""MegaDepth-1500: the synthetic set's layout, the protocol and the command, on known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from data_pairs.synthetic.megadepth1500 import (
    LIST_FILE,
    SCENE_FILES,
    SCENE_INFO_DIR,
    write_megadepth1500,
)
from utils.common.safe_pickle import safe_load_npz
from utils.eval import eval_megadepth1500
from utils.eval.megadepth1500 import (
    estimate_pose,
    evaluate_megadepth1500,
    load_pairs,
    oracle_matcher,
)
from utils.geometry import error_auc, pose2essential


@pytest.fixture(scope="module")
def md_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("md1500")
    counts = write_megadepth1500(
        root,
        pairs_per_file=3,
        n_images=6,
        width=160,
        height=120,
        supersample=1,
        log=lambda *a: None,
    )
    assert sum(counts.values()) >= 8
    return root


def test_layout_is_the_benchmarks(md_root: Path) -> None:
    info = md_root / SCENE_INFO_DIR
    names = (info / LIST_FILE).read_text().split()
    assert names == ["0015_0.1_0.3", "0015_0.3_0.5", "0022_0.1_0.3", "0022_0.3_0.5", "0022_0.5_0.7"]
    for name, (_, lo, hi) in zip(names, SCENE_FILES):
        d = safe_load_npz(info / f"{name}.npz")
        assert set(d) == {"image_paths", "depth_paths", "intrinsics", "poses", "pair_infos"}
        scene = name[:4]
        for (i, j), overlap, central in d["pair_infos"]:
            assert lo <= overlap < hi
            for k in (i, j):
                assert d["image_paths"][k] == f"Undistorted_SfM/{scene}/images/{k:04d}.jpg"
                assert (md_root / d["image_paths"][k]).is_file()
                assert (md_root / d["depth_paths"][k]).is_file()
                assert d["poses"][k].shape == (4, 4) and d["intrinsics"][k].shape == (3, 3)
            # the central matches are true correspondences: x1 = K1 (R X0 + t) exactly
            T = d["poses"][j] @ np.linalg.inv(d["poses"][i])
            K0, K1 = d["intrinsics"][i], d["intrinsics"][j]
            E = pose2essential(T[:3, :3], T[:3, 3])
            x0 = np.linalg.solve(K0, np.c_[central[:, :2], np.ones(len(central))].T)
            x1 = np.linalg.solve(K1, np.c_[central[:, 2:], np.ones(len(central))].T)
            assert np.abs(np.sum(x1 * (E @ x0), axis=0)).max() < 1e-3
        assert d["image_paths"][-1] is None  # an empty slot, as real files have


def test_ground_truth_matcher_scores_one(md_root: Path) -> None:
    info = md_root / SCENE_INFO_DIR
    pairs = load_pairs(info, md_root)
    res = evaluate_megadepth1500(info, md_root, oracle_matcher(pairs), progress=False)
    s = res["summary"]
    assert s["n_pairs"] == len(pairs) and s["failures"] == 0
    assert all(v > 0.999 for v in s["auc"].values()), s["auc"]
    assert s["precision"] == 1.0
    assert max(p["pose_error"] for p in res["pairs"]) < 0.05


def _rotated_matcher(pairs, theta_deg: float):
    """Ground-truth matches whose image-1 points are rotated by theta about camera 1's
    optical axis: the matches fit the pose (Rz R, Rz t), so the rotation error is theta and
    the translation error the angle between Rz t and t."""
    oracle = oracle_matcher(pairs)
    by_images = {(p.image0, p.image1): p for p in pairs}
    c, s = math.cos(math.radians(theta_deg)), math.sin(math.radians(theta_deg))
    Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def match(im0: str, im1: str) -> dict[str, np.ndarray]:
        m = oracle(im0, im1)
        K1 = by_images[(im0, im1)].K1
        H = K1 @ Rz @ np.linalg.inv(K1)
        q = np.c_[m[:, 2:], np.ones(len(m))] @ H.T
        return {"keypoints0": m[:, :2], "keypoints1": q[:, :2] / q[:, 2:]}

    return match, Rz


def test_known_rotation_error(md_root: Path) -> None:
    info = md_root / SCENE_INFO_DIR
    pairs = load_pairs(info, md_root)
    matcher, Rz = _rotated_matcher(pairs, 3.0)
    res = evaluate_megadepth1500(info, md_root, matcher, progress=False)
    for p, r in zip(pairs, res["pairs"]):
        t = p.T_0to1[:3, 3]
        e_t = math.degrees(math.acos(np.clip(t @ (Rz @ t) / (t @ t), -1, 1)))
        assert r["err_R"] == pytest.approx(3.0, abs=0.02)
        assert r["err_t"] == pytest.approx(min(e_t, 180 - e_t), abs=0.05)
        assert r["pose_error"] == pytest.approx(3.0, abs=0.02)  # e_t <= 3 by construction
    # n errors of 3°: the curve rises from (0, 0) to (3, 1/n), jumps to 1 at 3° and stays
    # there: area (3 / (2n) + T − 3) over T
    n = len(pairs)
    for T, v in res["summary"]["auc"].items():
        T = float(T)
        assert v == pytest.approx((3 / (2 * n) + T - 3) / T, abs=0.005)


def test_auc_on_hand_made_errors() -> None:
    # sorted [0, 2, 4, inf], recall steps of 1/4: the curve (0, 0) (0, .25) (2, .5) (4, .75),
    # flat at .75 beyond 4
    errs = [4.0, math.inf, 0.0, 2.0]
    assert error_auc(errs, (1, 5, 10)) == pytest.approx([0.25, 2.75 / 5, 6.5 / 10])
    assert error_auc([math.inf, math.inf], (5, 10, 20)) == [0.0, 0.0, 0.0]
    assert error_auc([1.0, float("nan")], (2,)) == pytest.approx([(0.25 + 0.5) / 2])


def test_failures_count_as_infinite(md_root: Path) -> None:
    info = md_root / SCENE_INFO_DIR
    pairs = load_pairs(info, md_root)
    oracle = oracle_matcher(pairs)
    first = pairs[0].image0, pairs[0].image1

    def fails_on_first(im0, im1):
        m = oracle(im0, im1)
        return m[:4] if (im0, im1) == first else m  # 4 matches: no pose

    res = evaluate_megadepth1500(info, md_root, fails_on_first, progress=False)
    assert res["pairs"][0]["pose_error"] == math.inf and res["summary"]["failures"] == 1
    n = len(pairs)
    for v in res["summary"]["auc"].values():
        assert v == pytest.approx((n - 1) / n, abs=1e-4)
    assert estimate_pose(np.zeros((4, 2)), np.zeros((4, 2)), np.eye(3), np.eye(3)) is None


def test_cli_oracle_json_and_errors(md_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "res" / "md.json"
    rc = eval_megadepth1500.main(
        [
            "--data_root",
            str(md_root),
            "--matcher",
            "oracle",
            "--max_pairs",
            "3",
            "--ransac",
            "usac",
            "--out",
            str(out),
            "--no_progress",
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data) >= {"config", "summary", "pairs"}
    assert len(data["pairs"]) == 3 and data["summary"]["n_pairs"] == 3
    assert data["config"]["ransac"] == "usac" and data["config"]["imsize"] == 1024
    assert data["summary"]["auc"]["5"] > 0.999
    assert "AUC @5°" in capsys.readouterr().out
    rc = eval_megadepth1500.main(["--data_root", str(tmp_path), "--matcher", "oracle"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and LIST_FILE in err
    assert eval_megadepth1500.main(["--data_root", str(md_root)]) == 2  # no --ckpt
    assert "--ckpt is required" in capsys.readouterr().err
    info = tmp_path / "binary_list"
    info.mkdir()
    (info / LIST_FILE).write_bytes(b"\x89PNG\r\n\x1a\n\x00")  # an image saved under the name
    rc = eval_megadepth1500.main(
        ["--data_root", str(md_root), "--scene_info", str(info), "--matcher", "oracle"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"{info / LIST_FILE}: not a text" in err


def test_cli_with_network(md_root: Path, tmp_path: Path, tiny_ckpt: Path) -> None:
    """A checkpoint runs end to end through the shared matcher flags (wiring, tiny images)."""
    out = tmp_path / "net.json"
    rc = eval_megadepth1500.main(
        [
            "--data_root",
            str(md_root),
            "--ckpt",
            str(tiny_ckpt),
            "--imsize",
            "128",
            "--device",
            "cpu",
            "--max_pairs",
            "2",
            "--out",
            str(out),
            "--no_progress",
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["config"]["matcher"] == "network" and data["config"]["imsize"] == 128
    assert all(p["n_matches"] > 0 for p in data["pairs"])


def test_writer_cli(tmp_path: Path, capsys) -> None:
    from data_pairs.synthetic import megadepth1500

    assert megadepth1500.main(["--out", str(tmp_path), "--images_per_scene", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("data_pairs.synthetic.megadepth1500: error: --images_per_scene")
    rc = megadepth1500.main(
        [
            "--out",
            str(tmp_path / "s"),
            "--images_per_scene",
            "3",
            "--width",
            "64",
            "--height",
            "48",
            "--supersample",
            "1",
        ]
    )
    assert rc == 0 and (tmp_path / "s" / SCENE_INFO_DIR / LIST_FILE).is_file()
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad_row, words",
    [
        (((0, 9), 0.5, 10), ["pair_infos[1]", "IndexError"]),  # no image 9
        (((0, 2), 0.5, 10), ["pair_infos[1]", "without an image"]),  # slot 2 is empty
        (((0, 1), 0.5, 10), ["pair_infos[1]", "ValueError"]),  # pose of image 1 is 3x3
        ((0, 0.5, 10), ["pair_infos[1]", "TypeError"]),  # no (i, j)
    ],
)
def test_malformed_pair_rows_name_file_and_row(tmp_path: Path, bad_row, words, capsys) -> None:
    from data_pairs.synthetic.files import object_array

    info = tmp_path / "si"
    info.mkdir()
    (info / LIST_FILE).write_text("s.npz\n")
    K = np.diag([100.0, 100.0, 1.0])
    poses = [np.eye(4), np.eye(3), None]
    np.savez(
        info / "s.npz",
        image_paths=object_array(["a.jpg", "b.jpg", None]),
        intrinsics=object_array([K, K, None]),
        poses=object_array(poses),
        pair_infos=object_array([((0, 0), 1.0, 5), bad_row]),
    )
    rc = eval_megadepth1500.main(
        ["--data_root", str(tmp_path), "--scene_info", str(info), "--matcher", "oracle"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{info / 's.npz'}" in err and all(w in err for w in words), err
