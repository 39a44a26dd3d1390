"""Training-pair generation (docs/file-formats.md §2) and validation overlaps (§4)."""

from __future__ import annotations

import re
import shutil
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from data_pairs import make_synthetic as ms
from data_pairs import precompute_immatch_val_ovs as pov
from data_pairs import prep_megadepth_training_pairs as prep
from utils.colmap import Camera, Image, Point3D, read_model, write_model
from utils.datasets.preprocess import crop_from_bottom_right

PAIR_FIELDS = {"im1", "im2", "overlap", "K1", "K2", "t", "q", "R", "crop1", "crop2"}


def _quat_to_R(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit quaternion (w, x, y, z), written out independently."""
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _fundamental(K1, K2, R, t) -> np.ndarray:
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(K2).T @ tx @ R @ np.linalg.inv(K1)


def _sampson(x1, x2, F) -> np.ndarray:
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], 1)
    h2 = np.concatenate([x2, np.ones((len(x2), 1))], 1)
    Fx1, Ftx2 = h1 @ F.T, h2 @ F
    num = (h2 * Fx1).sum(1) ** 2
    return num / (Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2)


@pytest.fixture(scope="module")
def mega(tmp_path_factory) -> Path:
    """Tiny MegaDepth_undistort: scene 5000 (5 images, the 5th portrait) and copies of its
    scene file as 0008 (excl_test), 0015 (excl_all only) and 5001 (one pose perturbed)."""
    root = tmp_path_factory.mktemp("pairs_data")
    npz = ms.make_megadepth_scene(
        root,
        "5000",
        0,
        seed=5,
        n_images=5,
        width=160,
        height=120,
        n_points=800,
        supersample=1,
        portrait_every=5,
    )
    info_dir = npz.parent
    shutil.copy(npz, info_dir / "0008.0.npz")
    shutil.copy(npz, info_dir / "0015.0.npz")
    with np.load(npz, allow_pickle=True) as d:
        arrays = {k: d[k] for k in d.files}
    slot = next(i for i, p in enumerate(arrays["image_paths"]) if p is not None)
    ang = np.deg2rad(3.0)
    rot = np.array([[1, 0, 0], [0, np.cos(ang), -np.sin(ang)], [0, np.sin(ang), np.cos(ang)]])
    poses = arrays["poses"].copy()
    pose = poses[slot].copy()
    pose[:3, :3] = rot @ pose[:3, :3]
    poses[slot] = pose
    arrays["poses"] = poses
    np.savez(info_dir / "5001.0.npz", **arrays)
    return root / "MegaDepth_undistort"


@pytest.fixture(scope="module")
def scene_arrays(mega) -> dict:
    return prep.load_scene_info(mega / "scene_info" / "5000.0.npz")


def test_cli_writes_named_file_with_structure(mega, tmp_path, capsys):
    assert prep.main(["--base_dir", str(mega), "--save_dir", str(tmp_path)]) == 0
    path = tmp_path / "megadepth_pairs.ov0.35_imrat1.5.pair500.excl_test.npy"
    assert "excl_test" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    pairs = prep.load_pairs(path)
    assert sorted(pairs) == ["0015", "5000", "5001"]  # 0008 is excluded
    for entry in pairs.values():
        assert set(entry) == {"ims", "pairs"} and entry["pairs"]
        for im in entry["ims"]:
            assert isinstance(im, Namespace) and set(vars(im)) == {"name", "crop"}
        for p in entry["pairs"]:
            assert isinstance(p, Namespace) and set(vars(p)) == PAIR_FIELDS
        names = [im.name for im in entry["ims"]]
        assert len(set(names)) == len(names)
        assert set(names) == {p.im1 for p in entry["pairs"]} | {p.im2 for p in entry["pairs"]}
    assert prep.pair_file_name(0.35, 1.5, 500, "excl_test") == path.name


def test_every_pair_is_valid(mega, scene_arrays):
    pairs = prep.generate_pairs(mega, log=lambda s: None)["5000"]
    slot_of = {
        p[len("Undistorted_SfM/") :]: i
        for i, p in enumerate(scene_arrays["image_paths"])
        if p is not None
    }
    crops = {im.name: im.crop for im in pairs["ims"]}
    ov, poses, K = scene_arrays["overlap_matrix"], scene_arrays["poses"], scene_arrays["intrinsics"]
    obs = scene_arrays["points3D_id_to_2D"]
    portrait = [n for n, i in slot_of.items() if K[i][0, 2] < K[i][1, 2]]
    assert len(portrait) == 1
    for p in pairs["pairs"]:
        a, b = slot_of[p.im1], slot_of[p.im2]
        assert not p.im1.startswith("Undistorted_SfM") and p.im1.startswith("5000/images/")
        assert (mega / p.im1).is_file() and (mega / p.im2).is_file()
        assert p.overlap == ov[a, b] and 0.35 <= p.overlap < 1
        assert portrait[0] not in (p.im1, p.im2)
        for name, crop, i in ((p.im1, p.crop1, a), (p.im2, p.crop2, b)):
            w, h = round(2 * K[i][0, 2]), round(2 * K[i][1, 2])
            assert crop == crop_from_bottom_right(w, h, 1.5) == crops[name]
            assert (w - crop[0]) / (h - crop[1]) == pytest.approx(1.5, abs=0.01)
        np.testing.assert_array_equal(p.K1, K[a])
        np.testing.assert_array_equal(p.K2, K[b])
        # relative pose, quaternion ↔ matrix
        R1, t1, R2, t2 = poses[a][:3, :3], poses[a][:3, 3], poses[b][:3, :3], poses[b][:3, 3]
        np.testing.assert_allclose(p.R, R2 @ R1.T, atol=1e-10)
        np.testing.assert_allclose(p.t, R2 @ (-R1.T @ t1 + R2.T @ t2), atol=1e-10)
        assert np.linalg.norm(p.q) == pytest.approx(1.0)
        np.testing.assert_allclose(_quat_to_R(p.q), p.R, atol=1e-12)
        # Sampson check on the shared 3D points' observations
        shared = sorted(obs[a].keys() & obs[b].keys())
        x1 = np.array([obs[a][k] for k in shared])
        x2 = np.array([obs[b][k] for k in shared])
        assert _sampson(x1, x2, _fundamental(p.K1, p.K2, p.R, p.t)).mean() <= 1.0
    assert len(pairs["pairs"]) >= 3


def test_sfm_prefix_is_stripped_as_a_folder():
    """The pair files drop D2Net's first folder, and only when it is a whole folder name."""
    from utils.common.data_layout import SFM_PREFIX

    assert SFM_PREFIX == "Undistorted_SfM"
    assert prep.strip_sfm_prefix("Undistorted_SfM/0000/images/1.jpg") == "0000/images/1.jpg"
    assert prep.strip_sfm_prefix("0000/images/1.jpg") == "0000/images/1.jpg"
    assert prep.strip_sfm_prefix("Undistorted_SfMx/a.jpg") == "Undistorted_SfMx/a.jpg"


def test_excluded_scenes_and_bad_poses(mega):
    stats: list[str] = []
    pairs = prep.generate_pairs(mega, exclude_tag="excl_all", log=stats.append)
    assert sorted(pairs) == ["5000", "5001"]
    assert any("0008" in s and "excluded" in s for s in stats)
    assert any("0015" in s and "excluded" in s for s in stats)
    # 5001 is 5000 with one camera rotated by 3°: its pairs fail the Sampson check
    info = prep.load_scene_info(mega / "scene_info" / "5000.0.npz")
    bad_slot = next(i for i, p in enumerate(info["image_paths"]) if p is not None)
    bad = info["image_paths"][bad_slot][len("Undistorted_SfM/") :]
    good_names = {n for p in pairs["5000"]["pairs"] for n in (p.im1, p.im2)}
    bad_names = {n for p in pairs["5001"]["pairs"] for n in (p.im1, p.im2)}
    assert bad in good_names and bad not in bad_names
    n_rejected = [
        int(re.search(r"(\d+) by Sampson", s).group(1)) for s in stats if s.startswith("5001")
    ]
    assert n_rejected and n_rejected[0] > 0
    with pytest.raises(ValueError, match="exclude_tag"):
        prep.generate_pairs(mega, exclude_tag="excl_nothing")


def test_max_pairs_and_seeded_order(mega):
    a = prep.generate_pairs(mega, max_scene_pairs=2, seed=1, log=lambda s: None)
    b = prep.generate_pairs(mega, max_scene_pairs=2, seed=1, log=lambda s: None)
    full = prep.generate_pairs(mega, seed=1, log=lambda s: None)
    for scene in a:
        assert len(a[scene]["pairs"]) == 2
        assert [(p.im1, p.im2) for p in a[scene]["pairs"]] == [
            (p.im1, p.im2) for p in b[scene]["pairs"]
        ]
    assert [(p.im1, p.im2) for p in a["0015"]["pairs"]] == [
        (p.im1, p.im2) for p in full["0015"]["pairs"][:2]
    ]


def test_missing_scene_info(tmp_path, capsys):
    assert prep.main(["--base_dir", str(tmp_path), "--save_dir", str(tmp_path)]) == 2
    assert "scene_info" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Validation overlaps
# --------------------------------------------------------------------------------------


def _hand_model(root: Path) -> Path:
    """4 images with known 3D point sets (names chosen so that (max, min) matters)."""
    sets = {
        "b.jpg": list(range(1, 11)),  # A: 10 points
        "a.jpg": [1, 2, 3, 4] + list(range(11, 17)),  # B: 10 points, 4 shared with A
        "d.jpg": list(range(1, 11)),  # C: same points as A → overlap 1, left out
        "c.jpg": [1, 2, 3],  # D: 3 points, all shared → 3 / max(.,.) = 0.3
    }
    cams, ims, obs = {}, {}, {}
    for k, (name, pids) in enumerate(sets.items(), start=1):
        cams[k] = Camera("SIMPLE_PINHOLE", 100, 80, np.array([100.0, 50.0, 40.0]))
        pid = np.array(pids + [-1, -1])  # plus two untriangulated keypoints
        xys = np.random.default_rng(k).uniform(0, 80, (len(pid), 2))
        ims[k] = Image(name, k, np.array([1.0, 0, 0, 0]), np.array([0, 0, float(k)]), pid, xys)
        for p in pids:
            obs.setdefault(p, []).append(k)
    pts = {p: Point3D(np.array([0.0, 0.0, 5.0]), np.array(v)) for p, v in obs.items()}
    sparse = root / "hand" / "dense" / "sparse"
    write_model(sparse, cams, ims, pts)
    return sparse


def test_val_overlap_definition_hand_built(tmp_path):
    sparse = _hand_model(tmp_path)
    names, ov = pov.pair_overlaps(read_model(sparse)[1])
    assert names == ["b.jpg", "a.jpg", "d.jpg", "c.jpg"]
    expected = np.array(
        [
            [0, 0.4, 1.0, 0.3],
            [0.4, 0, 0.4, 0.3],
            [1.0, 0.4, 0, 0.3],
            [0.3, 0.3, 0.3, 0],
        ]
    )
    np.testing.assert_allclose(ov, expected)
    path = pov.precompute_scene_overlaps(sparse.parent, log=lambda s: None)
    assert path == sparse / "ov_pairs.npy"
    got = pov.load_ov_pairs(path)
    assert sorted(got) == [0.1, 0.2, 0.3, 0.4, 0.5]
    all_pairs = {
        ("b.jpg", "a.jpg"),
        ("d.jpg", "b.jpg"),
        ("c.jpg", "b.jpg"),
        ("d.jpg", "a.jpg"),
        ("c.jpg", "a.jpg"),
        ("d.jpg", "c.jpg"),
    }
    for o in (0.1, 0.2, 0.3):
        assert set(got[o]) == all_pairs - {("d.jpg", "b.jpg")}  # overlap 1 is left out
    assert set(got[0.4]) == {("b.jpg", "a.jpg"), ("d.jpg", "a.jpg")}
    assert got[0.5] == []
    for pairs in got.values():
        assert all(isinstance(p, tuple) and p[0] > p[1] for p in pairs)


def test_val_overlaps_reused_when_complete(tmp_path):
    sparse = _hand_model(tmp_path)
    logs: list[str] = []
    path = pov.precompute_scene_overlaps(sparse.parent, log=logs.append)
    first = path.read_bytes()
    # a complete file is reused, even if its content differs from a fresh computation
    with open(path, "wb") as f:
        np.save(f, {o: [("z", "y")] for o in pov.OVERLAPS}, allow_pickle=True)
    pov.precompute_scene_overlaps(sparse.parent, log=logs.append)
    assert "reused" in logs[-1] and pov.load_ov_pairs(path)[0.1] == [("z", "y")]
    # an incomplete, unreadable or refused file is recomputed, saying why; and so is any
    # file with overwrite=True
    with open(path, "wb") as f:
        np.save(f, {0.1: []}, allow_pickle=True)
    pov.precompute_scene_overlaps(sparse.parent, log=logs.append)
    assert path.read_bytes() == first
    assert (
        logs[-2] == f"{path}: exists but lacks overlap levels [0.2, 0.3, 0.4, 0.5]; recomputing it"
    )
    path.write_bytes(first[: len(first) // 2])  # truncated
    pov.precompute_scene_overlaps(sparse.parent, log=logs.append)
    assert logs[-2].startswith(f"{path}: exists but was refused (") and path.read_bytes() == first
    with open(path, "wb") as f:  # a pickle that would call a function when loaded
        np.save(f, np.array([print], dtype=object), allow_pickle=True)
    pov.precompute_scene_overlaps(sparse.parent, log=logs.append)
    assert "exists but was refused (UnsafePickleError" in logs[-2], logs[-2]
    assert path.read_bytes() == first
    pov.precompute_scene_overlaps(sparse.parent, overwrite=True, log=logs.append)
    assert path.read_bytes() == first
    assert sorted(p.name for p in sparse.iterdir() if "ov_pairs" in p.name) == ["ov_pairs.npy"]


def test_val_overlaps_cli_on_synthetic_scene(tmp_path, capsys):
    dense = ms.make_val_scene(
        tmp_path,
        "synthetic_val",
        0,
        seed=2,
        n_images=4,
        width=96,
        height=64,
        n_points=400,
        supersample=1,
        portrait_every=0,
    )
    root = tmp_path / "immatch_benchmark" / "val_dense"
    assert pov.main(["--data_root", str(root)]) == 0
    got = pov.load_ov_pairs(dense / "sparse" / "ov_pairs.npy")
    images = read_model(dense / "sparse")[1]
    pts = {im.name: set(im.point3D_ids[im.point3D_ids >= 0].tolist()) for im in images.values()}
    for o, pairs in got.items():
        want = set()
        for na in pts:
            for nb in pts:
                if na < nb:
                    v = len(pts[na] & pts[nb]) / max(len(pts[na]), len(pts[nb]))
                    if o <= v < 1:
                        want.add((nb, na))
        assert set(pairs) == want and len(pairs) == len(want)
    assert got[0.1]
    assert pov.main(["--data_root", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_notebook_runs_the_same_code(mega, tmp_path, monkeypatch):
    """data_pairs/prep_megadepth_training_pairs.ipynb executes headless and writes the same
    pair file as the command."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "MegaDepth_undistort").symlink_to(mega)
    (tmp_path / "data_pairs").mkdir()
    monkeypatch.setenv("PYTHONPATH", str(repo))
    nb = nbformat.read(repo / "data_pairs" / "prep_megadepth_training_pairs.ipynb", 4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    kernel = "patch2pix" if "patch2pix" in KernelSpecManager().find_kernel_specs() else "python3"
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    written = tmp_path / "data_pairs" / prep.pair_file_name(0.35, 1.5, 500, "excl_test")
    assert written.is_file()
    assert prep.main(["--base_dir", str(mega), "--save_dir", str(tmp_path / "cli")]) == 0
    from_nb = prep.load_pairs(written)
    from_cli = prep.load_pairs(tmp_path / "cli" / written.name)
    assert sorted(from_nb) == sorted(from_cli) == ["0015", "5000", "5001"]
    for scene in from_nb:
        a = [(p.im1, p.im2) for p in from_nb[scene]["pairs"]]
        b = [(p.im1, p.im2) for p in from_cli[scene]["pairs"]]
        assert a == b and len(a) > 0
