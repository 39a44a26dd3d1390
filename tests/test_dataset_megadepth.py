"""ImMatchDatasetMega on a tiny MegaDepth-format fixture with known cameras and 3D points."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from utils.common.imagenet import IMAGENET_MEAN, IMAGENET_STD
from utils.datasets import ImMatchDatasetMega
from utils.datasets.preprocess import crop_from_bottom_right
from utils.geometry import qvec2rotmat, relative_pose, rotmat2qvec, sampson_distance

WT, HT = 60, 40  # small training resolution for speed


def rot(axis, deg):
    a = np.asarray(axis, dtype=np.float64)
    return cv2.Rodrigues(a / np.linalg.norm(a) * np.radians(deg))[0]


# name → (w, h, focal, world-to-camera R, camera centre)
CAMERAS = {
    "0000/images/a.png": (160, 100, 120.0, np.eye(3), np.zeros(3)),
    "0000/images/b.png": (
        150,
        100,
        110.0,
        rot([0.1, 1, 0.2], 8.0),
        np.array([1.0, 0.4, 0.1]),
    ),
    "0000/images/c.png": (
        140,
        100,
        130.0,
        rot([1, 0, 0], 5.0) @ rot([0, 1, 0], -6.0),
        np.array([-0.8, 0.2, 0.1]),
    ),
    "0001/images/d.png": (90, 60, 70.0, np.eye(3), np.zeros(3)),
}
PAIRS = [
    ("0000/images/a.png", "0000/images/b.png"),
    ("0000/images/a.png", "0000/images/c.png"),
    ("0000/images/b.png", "0000/images/c.png"),
]


def camera(name):
    """K (3, 3), R (3, 3), t (3,), (w, h) of a fixture image."""
    w, h, f, R, c = CAMERAS[name]
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    return K, R, -R @ c, (w, h)


def world_points(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(-4, 4, n), rng.uniform(-3, 3, n), rng.uniform(6, 10, n)])


def project(name, X):
    """World points → pixels (N, 2) in the original image of `name`."""
    K, R, t, _ = camera(name)
    x = (X @ R.T + t) @ K.T
    return x[:, :2] / x[:, 2:]


def build_fixture(root: Path, pairs=PAIRS) -> Path:
    """Write the images under root/MegaDepth_undistort and a pair file; return its path."""
    rng = np.random.default_rng(7)
    mega = root / "MegaDepth_undistort"
    data: dict = {}
    for name, (w, h, *_rest) in CAMERAS.items():
        path = mega / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(path)
        scene = name.split("/")[0]
        K, *_ = camera(name)
        crop = crop_from_bottom_right(int(2 * K[0, 2]), int(2 * K[1, 2]))
        entry = data.setdefault(scene, {"ims": [], "pairs": []})
        entry["ims"].append(Namespace(name=name, crop=crop))
    for n1, n2 in pairs:
        K1, R1, t1, size1 = camera(n1)
        K2, R2, t2, size2 = camera(n2)
        R12, t12 = relative_pose(R1, t1, R2, t2)
        q = rotmat2qvec(R12)
        data[n1.split("/")[0]]["pairs"].append(
            Namespace(
                im1=n1,
                im2=n2,
                overlap=0.5,
                K1=K1,
                K2=K2,
                t=t12,
                q=q,
                R=qvec2rotmat(q),
                crop1=crop_from_bottom_right(*size1),
                crop2=crop_from_bottom_right(*size2),
            )
        )
    pair_file = root / "pairs.npy"
    np.save(pair_file, data, allow_pickle=True)
    return pair_file


@pytest.fixture(scope="module")
def mega(tmp_path_factory):
    root = tmp_path_factory.mktemp("mega")
    return root, build_fixture(root)


def cropped_size(name):
    w, h = CAMERAS[name][:2]
    dw, dh = crop_from_bottom_right(w, h)
    return w - dw, h - dh


def test_fixture_crops_are_hand_values():
    assert crop_from_bottom_right(160, 100) == (10, 0)
    assert crop_from_bottom_right(150, 100) == (0, 0)
    assert crop_from_bottom_right(140, 100) == (2, 8)


def test_F_agrees_with_projected_points(mega):
    root, pair_file = mega
    ds = ImMatchDatasetMega(root, pair_file, wt=WT, ht=HT, item_type="pair")
    assert len(ds) == 3
    X = world_points()
    for i, (n1, n2) in enumerate(PAIRS):
        item = ds[i]
        assert item["im_pair_refs"] == (n1, n2)
        F = item["F"]
        assert F.shape == (3, 3) and F.dtype == torch.float32
        (w1, h1), (w2, h2) = cropped_size(n1), cropped_size(n2)
        x1, x2 = project(n1, X), project(n2, X)
        # points visible in both cropped images
        vis = ((x1 >= 0) & (x1 < [w1, h1])).all(1) & ((x2 >= 0) & (x2 < [w2, h2])).all(1)
        assert vis.sum() >= 20
        x1, x2 = x1[vis], x2[vis]
        s1, s2 = np.array([WT / w1, HT / h1]), np.array([WT / w2, HT / h2])
        d = sampson_distance(x1 * s1, x2 * s2, F.double().numpy())
        assert d.max() < 1e-2, (i, d.max())
        # negative controls: ignoring the crop (every pair has a cropped image) or the
        # resize breaks the constraint
        (w1o, h1o), (w2o, h2o) = CAMERAS[n1][:2], CAMERAS[n2][:2]
        wrong = sampson_distance(
            x1 * [WT / w1o, HT / h1o], x2 * [WT / w2o, HT / h2o], F.double().numpy()
        )
        assert wrong.max() > 1e-2, (i, wrong.max())
        assert sampson_distance(x1, x2, F.double().numpy()).max() > 1.0
        # shifting the second points by one training pixel across the epipolar line is seen
        assert sampson_distance(x1 * s1, x2 * s2 + [0, 1.0], F.double().numpy()).mean() > 0.05


def test_item_images_and_intrinsics(mega):
    root, pair_file = mega
    ds = ImMatchDatasetMega(root, pair_file, wt=WT, ht=HT, item_type="pair")
    item = ds[1]  # a.png (crop 10, 0) with c.png (crop 2, 8)
    for key, name in (("src_im", "0000/images/a.png"), ("pos_im", "0000/images/c.png")):
        arr = np.asarray(Image.open(root / "MegaDepth_undistort" / name).convert("RGB"))
        w, h = cropped_size(name)
        im = Image.fromarray(arr[:h, :w]).resize((WT, HT), Image.Resampling.BICUBIC)
        x = (np.asarray(im, np.float64) / 255 - IMAGENET_MEAN) / IMAGENET_STD
        expect = torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))
        assert item[key].shape == (3, HT, WT)
        torch.testing.assert_close(item[key], expect, atol=1e-6, rtol=0)
    K1 = camera("0000/images/a.png")[0]
    expect_K1 = np.diag([WT / 150, HT / 100, 1.0]) @ K1
    np.testing.assert_allclose(item["K1"].numpy(), expect_K1, rtol=1e-6)
    K2 = camera("0000/images/c.png")[0]
    np.testing.assert_allclose(item["K2"].numpy(), np.diag([WT / 138, HT / 92, 1]) @ K2, rtol=1e-6)
    assert "neg_im" not in item
    # F is cached per pair and stays the same
    assert torch.equal(ds[1]["F"], item["F"])


def test_triplet_default_size_and_loader(mega):
    root, pair_file = mega
    ds = ImMatchDatasetMega(root, pair_file)  # defaults: 480x320, triplet
    item = ds[0]
    assert item["src_im"].shape == (3, 320, 480) and item["pos_im"].shape == (3, 320, 480)
    assert item["neg_im"].shape == (3, 320, 480)
    assert item["neg_im_ref"] == "0001/images/d.png"  # the only image of another scene
    small = ImMatchDatasetMega(root, pair_file, wt=WT, ht=HT, item_type="pair")
    batch = next(iter(DataLoader(small, batch_size=2, shuffle=False)))
    assert batch["src_im"].shape == (2, 3, HT, WT) and batch["F"].shape == (2, 3, 3)
    # the MegaDepth_undistort folder itself is accepted as the root; scene_list filters
    only = ImMatchDatasetMega(
        root / "MegaDepth_undistort", pair_file, scene_list=["0000"], wt=WT, ht=HT, item_type="pair"
    )
    assert len(only) == 3


def test_errors_name_the_missing_path(mega, tmp_path):
    root, pair_file = mega
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        ImMatchDatasetMega(tmp_path / "no_such_root", pair_file)
    with pytest.raises(FileNotFoundError, match="MegaDepth_undistort"):
        ImMatchDatasetMega(tmp_path, pair_file)
    with pytest.raises(FileNotFoundError, match="missing_pairs.npy"):
        ImMatchDatasetMega(root, tmp_path / "missing_pairs.npy")
    with pytest.raises(ValueError, match="9999"):
        ImMatchDatasetMega(root, pair_file, scene_list=["9999"])
    with pytest.raises(ValueError, match="item_type"):
        ImMatchDatasetMega(root, pair_file, item_type="quad")
    # triplets need a second scene for negatives
    with pytest.raises(ValueError, match="two scenes"):
        ImMatchDatasetMega(root, pair_file, scene_list=["0000"])


def test_missing_image_is_named(tmp_path):
    pair_file = build_fixture(tmp_path)
    (tmp_path / "MegaDepth_undistort" / "0000/images/c.png").unlink()
    ds = ImMatchDatasetMega(tmp_path, pair_file, wt=WT, ht=HT, item_type="pair")
    ds[0]  # a, b still load
    with pytest.raises(FileNotFoundError, match="0000/images/c.png"):
        ds[1]
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="bad.npy"):
        ImMatchDatasetMega(tmp_path, bad)
