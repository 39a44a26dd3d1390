"""Synthetic MegaDepth / PhotoTourism data: formats, exact geometry, COLMAP model I/O."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest
from PIL import Image as PILImage

from data_pairs import make_synthetic as ms
from data_pairs import synthetic as syn
from data_pairs.synthetic import textures
from utils.colmap import (
    Camera,
    Image,
    Point3D,
    camera_intrinsics,
    image_camera_center,
    image_pose,
    read_model,
    write_model,
)

SEED = 3
W, H = 160, 120
N_IMAGES = 4
SCENE = "9000"
VAL = "synthetic_val"
D2NET_KEYS = {
    "image_paths",
    "depth_paths",
    "intrinsics",
    "poses",
    "overlap_matrix",
    "scale_ratio_matrix",
    "angles",
    "n_points3D",
    "points3D_id_to_2D",
    "points3D_id_to_ndepth",
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A tiny data root: one training scene and one validation scene, 4 images each."""
    root = tmp_path_factory.mktemp("synthetic")
    args = ms.parse_args(
        [
            "--out",
            str(root),
            "--scenes",
            "1",
            "--images_per_scene",
            str(N_IMAGES),
            "--width",
            str(W),
            "--height",
            str(H),
            "--points",
            "800",
            "--supersample",
            "1",
            "--portrait_every",
            "4",
            "--seed",
            str(SEED),
        ]
    )
    names = ms.generate(args, log=lambda s: None)
    assert names == {"train": [SCENE], "val": [VAL]}
    return root


@pytest.fixture(scope="module")
def info(data_root) -> dict:
    path = data_root / "MegaDepth_undistort" / "scene_info" / f"{SCENE}.0.npz"
    with np.load(path, allow_pickle=True) as d:
        return {k: d[k] for k in d.files}


def _slots(info: dict) -> list[int]:
    return [i for i, p in enumerate(info["image_paths"]) if p is not None]


def _project(K, pose, X):
    cam = X @ pose[:3, :3].T + pose[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:3], cam[:, 2]


def _unproject(K, pose, xy, z):
    """World points of pixels xy (N, 2) at camera depths z (N,)."""
    ray = np.concatenate([xy, np.ones((len(xy), 1))], 1) @ np.linalg.inv(K).T
    cam = ray * z[:, None]
    return (cam - pose[:3, 3]) @ pose[:3, :3]


def test_megadepth_layout(data_root, info):
    mega = data_root / "MegaDepth_undistort"
    assert set(info) == D2NET_KEYS
    slots = _slots(info)
    assert len(slots) == N_IMAGES and len(info["image_paths"]) == N_IMAGES + 1  # one None slot
    for i in slots:
        rel = info["image_paths"][i]
        assert rel.startswith(f"Undistorted_SfM/{SCENE}/images/")
        K = info["intrinsics"][i]
        w, h = int(round(2 * K[0, 2])), int(round(2 * K[1, 2]))
        assert (w, h) in ((W, H), (H, W))
        for p in (mega / rel, mega / rel[len("Undistorted_SfM/") :]):  # both layouts resolve
            with PILImage.open(p) as im:
                assert im.size == (w, h) and im.mode == "RGB"
        dpath = info["depth_paths"][i]
        assert dpath.startswith(f"phoenix/S6/zl548/MegaDepth_v1/{SCENE}/dense0/depths/")
        with h5py.File(mega / dpath, "r") as f:
            depth = f["depth"][()]
        assert depth.shape == (h, w) and depth.dtype == np.float32
        assert (depth > 0).mean() > 0.5
        R = info["poses"][i][:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_array_equal(info["poses"][i][3], [0, 0, 0, 1])
    assert int(info["n_points3D"]) > 0


def test_observations_reproject_exactly(info):
    """Each observation, lifted to 3D with its normalised depth, lands on every other one."""
    slots = _slots(info)
    lifted: dict[int, list[np.ndarray]] = {}
    for i in slots:
        K, pose = info["intrinsics"][i], info["poses"][i]
        obs, nd = info["points3D_id_to_2D"][i], info["points3D_id_to_ndepth"][i]
        assert obs.keys() == nd.keys() and len(obs) > 10
        ids = sorted(obs)
        assert max(ids) < int(info["n_points3D"])
        xy = np.array([obs[p] for p in ids])
        assert (xy >= 0).all() and (xy[:, 0] < 2 * K[0, 2]).all() and (xy[:, 1] < 2 * K[1, 2]).all()
        z = np.array([nd[p] for p in ids]) * 0.5 * (K[0, 0] + K[1, 1])
        X = _unproject(K, pose, xy, z)
        for p, x in zip(ids, X):
            lifted.setdefault(p, []).append(x)
    n_checked = 0
    for i in slots:
        K, pose = info["intrinsics"][i], info["poses"][i]
        obs = info["points3D_id_to_2D"][i]
        ids = sorted(obs)
        X = np.array([lifted[p][0] for p in ids])
        xy, z = _project(K, pose, X)
        np.testing.assert_allclose(xy, np.array([obs[p] for p in ids]), atol=1e-6)
        n_checked += len(ids)
    # every point is seen at least twice, and all its lifts agree
    for xs in lifted.values():
        assert len(xs) >= 2
        np.testing.assert_allclose(np.array(xs), np.repeat(xs[:1], len(xs), 0), atol=1e-7)
    assert n_checked > 50


def test_depth_maps_match_geometry(data_root, info):
    """Depth maps: on the rendered surfaces, consistent with poses across images."""
    mega = data_root / "MegaDepth_undistort"
    scene = syn.build_scene(syn.scene_rng(SEED, syn.KIND_TRAIN, 0, syn.STREAM_GEOMETRY))
    slots = _slots(info)
    depths = {}
    for i in slots:
        with h5py.File(mega / info["depth_paths"][i], "r") as f:
            depths[i] = f["depth"][()].astype(np.float64)
    rng = np.random.default_rng(0)
    a, others = slots[0], slots[1:]
    K, pose, depth = info["intrinsics"][a], info["poses"][a], depths[a]
    rows, cols = np.nonzero(depth > 0)
    pick = rng.choice(len(rows), 400, replace=False)
    rows, cols = rows[pick], cols[pick]
    xy = np.stack([cols + 0.5, rows + 0.5], 1)  # pixel centres (COLMAP convention)
    X = _unproject(K, pose, xy, depth[rows, cols])
    # 1. every unprojected pixel lies on one of the scene's rectangles
    rel = X[:, None, :] - scene.origin[None]
    plane = np.abs((rel * scene.normal[None]).sum(-1))
    s = (rel * scene.u[None]).sum(-1) / (scene.u**2).sum(1)
    r = (rel * scene.v[None]).sum(-1) / (scene.v**2).sum(1)
    inside = (s > -1e-4) & (s < 1 + 1e-4) & (r > -1e-4) & (r < 1 + 1e-4)
    dist = np.where(inside, plane, np.inf).min(1)
    assert np.all(dist < 1e-4 * depth[rows, cols])
    # 2. reprojected into other images, points visible there agree with their depth maps
    n_vis = 0
    for b in others:
        Kb, pb, db = info["intrinsics"][b], info["poses"][b], depths[b]
        hb, wb = db.shape
        xyb, zb = _project(Kb, pb, X)
        ok = (zb > 0.1) & (xyb[:, 0] >= 0) & (xyb[:, 0] < wb) & (xyb[:, 1] >= 0)
        ok &= xyb[:, 1] < hb
        center = -pb[:3, :3].T @ pb[:3, 3]
        idx = np.nonzero(ok)[0]
        if not len(idx):
            continue
        _, tau, _, _ = syn.cast_rays(scene, center, (X[idx] - center) / zb[idx, None])
        vis = idx[tau >= zb[idx] * (1 - 1e-6)]
        d = db[np.floor(xyb[vis, 1]).astype(int), np.floor(xyb[vis, 0]).astype(int)]
        assert np.mean(np.abs(d - zb[vis]) < 0.03 * zb[vis]) > 0.9
        n_vis += len(vis)
    assert n_vis > 100


def test_observation_depths_match_depth_maps(data_root, info):
    mega = data_root / "MegaDepth_undistort"
    for i in _slots(info):
        with h5py.File(mega / info["depth_paths"][i], "r") as f:
            depth = f["depth"][()]
        K = info["intrinsics"][i]
        obs, nd = info["points3D_id_to_2D"][i], info["points3D_id_to_ndepth"][i]
        xy = np.array(list(obs.values()))
        z = np.array([nd[p] for p in obs]) * 0.5 * (K[0, 0] + K[1, 1])
        d = depth[np.floor(xy[:, 1]).astype(int), np.floor(xy[:, 0]).astype(int)]
        np.testing.assert_allclose(d, z, rtol=0.011)


def test_overlap_scale_angle_matrices(info):
    n = len(info["image_paths"])
    obs, nd, poses = info["points3D_id_to_2D"], info["points3D_id_to_ndepth"], info["poses"]
    for a in range(n):
        for b in range(n):
            ov = info["overlap_matrix"][a, b]
            if a == b or obs[a] is None or obs[b] is None:
                assert ov == -1 and info["scale_ratio_matrix"][a, b] == -1
                continue
            shared = obs[a].keys() & obs[b].keys()
            assert ov == pytest.approx(len(shared) / len(obs[a]))
            if shared:
                ratios = [max(nd[a][p] / nd[b][p], nd[b][p] / nd[a][p]) for p in shared]
                assert info["scale_ratio_matrix"][a, b] == pytest.approx(min(ratios))
            cosang = np.clip(poses[a][2, :3] @ poses[b][2, :3], -1, 1)
            assert info["angles"][a, b] == pytest.approx(np.degrees(np.arccos(cosang)))
    valid = info["overlap_matrix"][info["overlap_matrix"] >= 0]
    assert valid.max() > 0.35  # the tiny scene still has training pairs


def test_val_model_reads_back(data_root):
    dense = data_root / "immatch_benchmark" / "val_dense" / VAL / "dense"
    cameras, images, points3D = read_model(dense / "sparse")
    assert len(images) == N_IMAGES and len(cameras) == N_IMAGES
    views = syn.sample_views(
        syn.scene_rng(SEED, syn.KIND_VAL, 0, syn.STREAM_VIEWS), N_IMAGES, W, H, portrait_every=4
    )
    rec = pycolmap.Reconstruction(str(dense / "sparse"))  # pycolmap itself reads it too
    assert rec.num_images() == N_IMAGES and rec.num_points3D() == len(points3D)
    models = set()
    for k, (_, im) in enumerate(sorted(images.items())):
        view = views[k]
        cam = cameras[im.camera_id]
        models.add(cam.model)
        np.testing.assert_allclose(camera_intrinsics(cam), view.K, atol=1e-9)
        assert (cam.width, cam.height) == (view.width, view.height)
        R, t = image_pose(im)
        np.testing.assert_allclose(R, view.R, atol=1e-9)
        np.testing.assert_allclose(t, view.t, atol=1e-9)
        np.testing.assert_allclose(image_camera_center(im), view.center, atol=1e-9)
        with PILImage.open(dense / "images" / im.name) as pim:
            assert pim.size == (cam.width, cam.height)
        # reprojection of each observed 3D point lands on its 2D point
        sel = im.point3D_ids >= 0
        assert sel.sum() > 10 and (~sel).sum() > 0  # untriangulated keypoints too
        X = np.array([points3D[int(p)].xyz for p in im.point3D_ids[sel]])
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = R, t
        xy, _ = _project(camera_intrinsics(cam), pose, X)
        np.testing.assert_allclose(xy, im.xys[sel], atol=1e-6)
    assert models == {"SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL"}
    for pid, pt in points3D.items():
        assert len(pt.image_ids) >= 2
        for iid in pt.image_ids:
            assert pid in set(images[int(iid)].point3D_ids.tolist())
    assert (dense / "sparse" / "ov_pairs.npy").is_file()


def test_read_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_model(tmp_path / "nowhere")
    (tmp_path / "cameras.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"images\.bin, points3D\.bin") as exc:
        read_model(tmp_path)
    assert str(tmp_path) in str(exc.value)
    with pytest.raises(ValueError, match="unsupported camera model"):
        camera_intrinsics(Camera("OPENCV", 10, 10, np.zeros(8)))


def test_write_read_roundtrip(tmp_path):
    q = np.array([0.9, 0.1, -0.2, 0.3])
    q /= np.linalg.norm(q)
    cams = {
        1: Camera("SIMPLE_PINHOLE", 100, 80, np.array([90.0, 50, 40])),
        2: Camera("RADIAL", 80, 100, np.array([95.0, 40, 50, 0.01, -0.02])),
    }
    ims = {
        3: Image(
            "x.jpg",
            1,
            q,
            np.array([0.1, 0.2, 0.3]),
            np.array([7, -1]),
            np.array([[1.5, 2.5], [3.0, 4.0]]),
        ),
        5: Image(
            "y.jpg",
            2,
            np.array([1.0, 0, 0, 0]),
            np.zeros(3),
            np.array([-1, 7]),
            np.array([[5.0, 6.0], [7.0, 8.0]]),
        ),
    }
    pts = {7: Point3D(np.array([1.0, 2.0, 3.0]), np.array([3, 5]))}
    for ext in (".bin", ".txt"):
        write_model(tmp_path / ext[1:], cams, ims, pts, ext=ext)
        c2, i2, p2 = read_model(tmp_path / ext[1:])
        assert list(c2) == [1, 2] and list(i2) == [3, 5] and list(p2) == [7]
        assert c2[2].model == "RADIAL" and c2[2].width == 80
        np.testing.assert_allclose(c2[2].params, cams[2].params)
        np.testing.assert_allclose(i2[3].qvec, q, atol=1e-12)
        np.testing.assert_array_equal(i2[3].point3D_ids, [7, -1])
        np.testing.assert_allclose(i2[5].xys, ims[5].xys)
        np.testing.assert_array_equal(np.sort(p2[7].image_ids), [3, 5])
    with pytest.raises(ValueError, match="unknown 3D point"):
        write_model(
            tmp_path / "bad", cams, {3: ims[3]._replace(point3D_ids=np.array([8, -1]))}, pts
        )


def test_generator_is_deterministic(tmp_path):
    """The same scene twice, once from keyword fields and once from a SceneSpec: same files."""
    kw = dict(
        seed=11, n_images=2, width=48, height=32, n_points=200, supersample=1, portrait_every=0
    )
    a = syn.make_megadepth_scene(tmp_path / "a", "5003", 3, **kw)
    b = syn.make_megadepth_scene(tmp_path / "b", "5003", 3, syn.SceneSpec(**kw))
    with np.load(a, allow_pickle=True) as da, np.load(b, allow_pickle=True) as db:
        for k in da.files:
            assert repr(da[k].tolist()) == repr(db[k].tolist()), k
    for f in sorted((tmp_path / "a" / "MegaDepth_undistort" / "5003" / "images").iterdir()):
        g = tmp_path / "b" / "MegaDepth_undistort" / "5003" / "images" / f.name
        assert f.read_bytes() == g.read_bytes()


def test_scene_spec_fields():
    spec = syn.scene_spec(None, seed=4, width=32)
    assert spec == syn.SceneSpec(
        seed=4, n_images=12, width=32, height=480, n_points=3000, supersample=2, portrait_every=6
    )
    assert syn.scene_spec(spec, n_images=3).n_images == 3 and spec.n_images == 12
    with pytest.raises(TypeError, match="n_image"):
        syn.make_val_scene(Path("unused"), "x", 0, n_image=3)


def test_old_hyphenated_flags_still_parse():
    """Old scripts' ``--images-per-scene`` spellings give the same arguments; --help hides them."""
    new = ms.parse_args(
        [
            "--images_per_scene",
            "5",
            "--val_scenes",
            "2",
            "--val_images=3",
            "--portrait_every",
            "0",
            "--none_entries",
            "2",
            "--first_scene_id",
            "9100",
            "--sfm_layout",
            "copy",
            "--no_ov_pairs",
        ]
    )
    old = ms.parse_args(
        [
            "--images-per-scene",
            "5",
            "--val-scenes",
            "2",
            "--val-images=3",
            "--portrait-every",
            "0",
            "--none-entries",
            "2",
            "--first-scene-id",
            "9100",
            "--sfm-layout",
            "copy",
            "--no-ov-pairs",
        ]
    )
    assert vars(old) == vars(new)
    assert (new.images_per_scene, new.val_scenes, new.val_images, new.first_scene_id) == (
        5,
        2,
        3,
        9100,
    )
    assert new.sfm_layout == "copy" and new.no_ov_pairs is True
    help_text = ms.build_parser().format_help()
    assert "--images_per_scene" in help_text and "--images-per-scene" not in help_text


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--images_per_scene", "1"], "--images_per_scene"),
        (["--width", "8"], "--width"),
        (["--supersample", "0"], "--supersample"),
        (["--sfm_layout", "hardlink"], "--sfm_layout"),
    ],
)
def test_cli_errors_are_one_line(argv, flag, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        ms.main(["--out", str(tmp_path), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("data_pairs.make_synthetic: error:") and flag in err
    assert len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_every_photo_texture_is_installed():
    """All 15 photographs load, from scikit-image's own data folder (no download)."""
    photos = textures.photo_textures()
    assert len(photos) == len(textures.PHOTO_TEXTURES) == 15
    greys = [name for (im, grey), name in zip(photos, textures.PHOTO_TEXTURES) if grey]
    assert greys == ["camera", "brick", "grass", "gravel", "coins", "clock", "moon", "text", "page"]
    im, _ = photos[0]  # astronaut.png: 512 x 512 RGB using the full 8-bit range, / 255
    assert im.shape == (512, 512, 3) and im.dtype == np.float32
    assert (float(im.min()), float(im.max())) == (0.0, 1.0)
    np.testing.assert_array_equal(im * 255, np.round(im * 255))


@pytest.mark.parametrize(
    "table, missing",
    [
        ({"astronaut": "no_such_image.png"}, "no_such_image.png"),
        ({"no_such_loader": "astronaut.png"}, "no_such_loader"),
    ],
)
def test_missing_texture_fails_loudly(monkeypatch, table, missing):
    """A texture that is not installed is an error naming it, never silently skipped."""
    monkeypatch.setattr(textures, "PHOTO_TEXTURES", {**textures.PHOTO_TEXTURES, **table})
    textures.photo_textures.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="synthetic texture") as exc:
            textures.photo_textures()
        assert missing in str(exc.value) and list(table)[0] in str(exc.value)
    finally:
        textures.photo_textures.cache_clear()


def test_synthetic_files_are_written_atomically(tmp_path):
    """The writers' image / depth / npz files go through write_atomic: a write that fails
    half-way leaves the previous file as it was and no temporary file beside it."""
    import pickle

    import h5py
    from PIL import Image as PILImage

    from data_pairs.synthetic.files import object_array, save_depth, save_jpeg, save_npz

    img = np.full((8, 12, 3), 200, np.uint8)
    save_jpeg(tmp_path / "a" / "x.jpg", img)
    assert np.abs(np.asarray(PILImage.open(tmp_path / "a" / "x.jpg"), int) - 200).max() <= 2
    depth = np.arange(6, dtype=np.float64).reshape(2, 3)
    save_depth(tmp_path / "d" / "x.h5", depth)
    with h5py.File(tmp_path / "d" / "x.h5", "r") as f:
        assert f["depth"].dtype == np.float32 and np.array_equal(f["depth"][()], depth)
    npz = tmp_path / "s.npz"
    save_npz(npz, a=object_array([None, {"k": 1}]))
    before = npz.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a lambda: not picklable
        save_npz(npz, a=object_array([lambda: 0]))
    assert npz.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "d", "s.npz"]
