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
from utils.common.safe_pickle import safe_load_pickle_or_npz
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
        path = info / f"{name}.npz"
        assert path.read_bytes()[:2] == b"\x80\x04"  # LoFTR's form: a protocol-4 pickle
        d = safe_load_pickle_or_npz(path)
        assert set(d) == {"image_paths", "depth_paths", "intrinsics", "poses", "pair_infos"}
        # what LoFTR's loader does with it: np.load returns the dict
        plain = np.load(path, allow_pickle=True)
        assert isinstance(plain, dict) and len(plain["pair_infos"]) == len(d["pair_infos"])
        assert isinstance(d["pair_infos"], list)
        scene = name[:4]
        for ij, overlap, central in d["pair_infos"]:
            assert ij.shape == (2,) and type(overlap) is np.float64 and central.shape == (4,)
            i, j = (int(v) for v in ij)
            assert lo <= overlap < hi
            for k in (i, j):
                assert d["image_paths"][k] == f"Undistorted_SfM/{scene}/images/{k:04d}.jpg"
                assert (md_root / d["image_paths"][k]).is_file()
                assert (md_root / d["depth_paths"][k]).is_file()
                assert d["poses"][k].shape == (4, 4) and d["intrinsics"][k].shape == (3, 3)
            # the central match is a true correspondence: x1 = K1 (R X0 + t) exactly
            T = d["poses"][j] @ np.linalg.inv(d["poses"][i])
            K0, K1 = d["intrinsics"][i], d["intrinsics"][j]
            E = pose2essential(T[:3, :3], T[:3, 3])
            x0 = np.linalg.solve(K0, np.r_[central[:2], 1.0])
            x1 = np.linalg.solve(K1, np.r_[central[2:], 1.0])
            assert abs(x1 @ E @ x0) < 1e-3
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


def _zip_copy(md_root: Path, dst: Path) -> Path:
    """The synthetic set's scene-info files rewritten as zip archives (np.savez)."""
    from data_pairs.synthetic.files import object_array

    info = md_root / SCENE_INFO_DIR
    dst.mkdir()
    (dst / LIST_FILE).write_text((info / LIST_FILE).read_text())
    for name in (info / LIST_FILE).read_text().split():
        d = safe_load_pickle_or_npz(info / f"{name}.npz")
        rows = [(tuple(int(v) for v in ij), ov, c) for ij, ov, c in d["pair_infos"]]
        np.savez(dst / f"{name}.npz", **{**d, "pair_infos": object_array(rows)})
    return dst


def test_zip_form_reads_the_same_pairs(md_root: Path, tmp_path: Path) -> None:
    zipped = _zip_copy(md_root, tmp_path / "zip_info")
    assert (zipped / "0015_0.1_0.3.npz").read_bytes()[:2] == b"PK"
    a, b = load_pairs(md_root / SCENE_INFO_DIR, md_root), load_pairs(zipped, md_root)
    assert [p.name for p in a] == [p.name for p in b] and len(a) > 0
    for p, q in zip(a, b):
        assert p.image0 == q.image0 and p.depth1 == q.depth1
        assert np.array_equal(p.T_0to1, q.T_0to1) and np.array_equal(p.K0, q.K0)


def _loftr_file(path: Path, image_paths: list, n_pairs: int) -> None:
    """A scene-info file in LoFTR's exact form (docs/file-formats.md §7)."""
    import pickle

    from data_pairs.synthetic.files import object_array

    n = len(image_paths)
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    T = np.eye(4)
    T[0, 3] = 1.0
    info = {
        "image_paths": object_array(image_paths),
        "depth_paths": object_array([None] * n),
        "intrinsics": object_array([K] * n),
        "poses": object_array([np.eye(4), T] * (n // 2)),
        "pair_infos": [(np.array([0, 1]), np.float64(0.2), np.arange(4, dtype=np.float64))]
        * n_pairs,
    }
    path.write_bytes(pickle.dumps(info, protocol=4))


def test_loftr_form_gives_1500_pairs(tmp_path: Path) -> None:
    names = ["0022_0.1_0.3", "0015_0.1_0.3", "0015_0.3_0.5", "0022_0.3_0.5", "0022_0.5_0.7"]
    (tmp_path / LIST_FILE).write_text("\n".join(names) + "\n")
    for name in names:
        _loftr_file(
            tmp_path / f"{name}.npz", ["Undistorted_SfM/a.jpg", "Undistorted_SfM/b.jpg"], 300
        )
    pairs = load_pairs(tmp_path, tmp_path / "root")
    assert len(pairs) == 1500
    assert pairs[0].image0 == str(tmp_path / "root" / "Undistorted_SfM/a.jpg")
    assert pairs[0].T_0to1[0, 3] == 1.0 and pairs[0].depth0 is None


@pytest.mark.parametrize("bad", ["/etc/passwd", "../../secret.jpg", "Undistorted_SfM/../../x.jpg"])
def test_paths_leaving_the_data_root_are_refused(tmp_path: Path, bad: str, capsys) -> None:
    (tmp_path / LIST_FILE).write_text("s\n")
    _loftr_file(tmp_path / "s.npz", ["Undistorted_SfM/a.jpg", bad], 1)
    rc = eval_megadepth1500.main(
        [
            "--data_root",
            str(tmp_path),
            "--scene_info",
            str(tmp_path),
            "--matcher",
            "oracle",
            "--no_progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(tmp_path / "s.npz") in err and "outside the data root" in err and bad in err


def test_oracle_without_depth_maps_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / LIST_FILE).write_text("s\n")
    _loftr_file(tmp_path / "s.npz", ["Undistorted_SfM/a.jpg", "Undistorted_SfM/b.jpg"], 1)
    import pickle

    d = pickle.loads((tmp_path / "s.npz").read_bytes())
    d["depth_paths"][:] = ["d/a.h5", "d/b.h5"]
    (tmp_path / "s.npz").write_bytes(pickle.dumps(d, protocol=4))
    rc = eval_megadepth1500.main(
        [
            "--data_root",
            str(tmp_path),
            "--scene_info",
            str(tmp_path),
            "--matcher",
            "oracle",
            "--no_progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(tmp_path / "d" / "a.h5") in err and "not found" in err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.h5").write_bytes(b"not hdf5")
    rc = eval_megadepth1500.main(
        [
            "--data_root",
            str(tmp_path),
            "--scene_info",
            str(tmp_path),
            "--matcher",
            "oracle",
            "--no_progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "cannot read depth map" in err, err


def _loftr_estimate_pose(kpts0, kpts1, K0, K1, thresh=0.5, conf=0.99999):
    """LoFTR's src/utils/metrics.py estimate_pose, verbatim in substance."""
    import cv2

    if len(kpts0) < 5:
        return None
    kpts0 = (kpts0 - K0[[0, 1], [2, 2]][None]) / K0[[0, 1], [0, 1]][None]
    kpts1 = (kpts1 - K1[[0, 1], [2, 2]][None]) / K1[[0, 1], [0, 1]][None]
    ransac_thr = thresh / np.mean([K0[0, 0], K1[1, 1], K0[0, 0], K1[1, 1]])
    E, mask = cv2.findEssentialMat(
        kpts0, kpts1, np.eye(3), threshold=ransac_thr, prob=conf, method=cv2.RANSAC
    )
    if E is None:
        return None
    best_num_inliers = 0
    ret = None
    for _E in np.split(E, len(E) / 3):
        n, R, t, _ = cv2.recoverPose(_E, kpts0, kpts1, np.eye(3), 1e9, mask=mask)
        if n > best_num_inliers:
            ret = (R, t[:, 0], mask.ravel() > 0)
            best_num_inliers = n
    return ret


def test_five_matches_score_solutions_as_loftr_does() -> None:
    """With 5 matches OpenCV returns several essential matrices; every later solution is
    scored with the mask the previous recoverPose overwrote, as in LoFTR."""
    import cv2

    rng = np.random.default_rng(3)
    K = np.array([[400.0, 0, 160], [0, 400.0, 120], [0, 0, 1]])
    multi = differ = 0
    for _ in range(40):
        X = rng.uniform([-1, -1, 4], [1, 1, 8], (5, 3))
        a = rng.normal(size=3) * 0.2
        R, _ = cv2.Rodrigues(a)
        t = rng.normal(size=3)
        x0 = X @ K.T
        x1 = (X @ R.T + t) @ K.T
        k0, k1 = x0[:, :2] / x0[:, 2:], x1[:, :2] / x1[:, 2:]
        k1 = k1 + rng.normal(scale=0.3, size=k1.shape)
        cv2.setRNGSeed(0)
        ref = _loftr_estimate_pose(k0, k1, K, K)
        got = estimate_pose(k0, k1, K, K, seed=0)
        assert (ref is None) == (got is None)
        if ref is not None:
            assert np.allclose(ref[0], got[0], atol=1e-6) and np.allclose(ref[1], got[1], atol=1e-6)
            assert np.array_equal(ref[2], got[2])
        cv2.setRNGSeed(0)
        n0 = (k0 - K[:2, 2]) / 400.0
        n1 = (k1 - K[:2, 2]) / 400.0
        E, mask = cv2.findEssentialMat(n0, n1, np.eye(3), threshold=0.5 / 400, prob=0.99999)
        if E is not None and E.shape[0] > 3:
            multi += 1
            # the project's former loop (a fresh copy of the mask per solution)
            best, best_n = None, 0
            for k in range(E.shape[0] // 3):
                n, Rk, _, _ = cv2.recoverPose(
                    E[3 * k : 3 * k + 3], n0, n1, np.eye(3), 1e9, mask=mask.copy()
                )
                if n > best_n:
                    best_n, best = n, Rk
            differ += (
                ref is not None and best is not None and not np.allclose(best, ref[0], atol=1e-6)
            )
    print(multi, differ)
    assert multi > 0 and differ > 0  # the case the issue is about occurs, and matters
