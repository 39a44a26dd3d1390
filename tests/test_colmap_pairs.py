"""Training on your own COLMAP reconstructions (issue 11): pairs, training, fine-tuning,
validation on a held-out reconstruction.

The reconstructions are PhotoTourism-like synthetic scenes (known cameras and poses, written
as COLMAP models by ``data_pairs.make_synthetic``). Their cameras cycle through
SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL (k = 0) and RADIAL (k1 = k2 = 0); the distortion is
zero, so rewriting every camera as PINHOLE gives the undistorted model that
``colmap image_undistorter`` would write — exactly what a user hands the pair command.
"""

from __future__ import annotations

import json
import shutil
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

import train_patch2pix
from data_pairs import make_synthetic
from data_pairs import precompute_immatch_val_ovs as pov
from data_pairs import prep_colmap_training_pairs as pcp
from utils.colmap.read_model import Camera, read_model, write_model
from utils.datasets import ImMatchDatasetMega
from utils.datasets.dataset_megadepth import load_pair_file
from utils.train.cli import parse_args
from utils.train.experiment import make_tags

W, H = 256, 160  # ratio 1.6: the crop rule cuts dw = 256 - 160 * 1.5 = 16 columns
SYN_VAL = Path("immatch_benchmark/val_dense")
TINY_TRAIN = (
    "--change_stride --conv_dims 8 8 --fc_dims 8 --ptmax 20 --batch 1 --train_size 160 96 "
    "--max_iters_per_epoch 1 --plot_counts 1 --val_imsize 160 --val_sample_max 2 "
    "--workers 0 --no_progress --device cpu --random_backbone --epochs 1"
).split()


def _undistorted_copy(src_dense: Path, dst_dense: Path, ext: str = ".bin") -> Path:
    """Copy a synthetic scene as an undistorted PINHOLE model + images (what
    colmap image_undistorter writes); returns the dense folder."""
    cams, ims, pts = read_model(src_dense / "sparse")
    pin = {}
    for cid, c in cams.items():
        if c.model == "PINHOLE":
            fx, fy, cx, cy = c.params
        else:  # SIMPLE_PINHOLE (f, cx, cy), SIMPLE_RADIAL / RADIAL (f, cx, cy, k...) with k = 0
            assert np.all(c.params[3:] == 0)
            fx = fy = c.params[0]
            cx, cy = c.params[1], c.params[2]
        pin[cid] = Camera("PINHOLE", c.width, c.height, np.array([fx, fy, cx, cy]))
    write_model(dst_dense / "sparse", pin, ims, pts, ext=ext)
    shutil.copytree(src_dense / "images", dst_dense / "images", dirs_exist_ok=True)
    return dst_dense


@pytest.fixture(scope="module")
def recs(tmp_path_factory) -> Path:
    """Three synthetic reconstructions (6 images of 256x160, the 3rd one portrait):

    - ``mine/castle/dense``, ``mine/tower/dense``: undistorted training reconstructions;
    - ``mine/castle/dense/sparse_txt``: the castle model in COLMAP's text format;
    - ``heldout/hall/dense``: the held-out validation reconstruction;
    - ``syn``: the generator's own output (distorted camera models).
    """
    root = tmp_path_factory.mktemp("colmap_recs")
    rc = make_synthetic.main(
        [
            "--out",
            str(root / "syn"),
            "--scenes",
            "0",
            "--val_scenes",
            "3",
            "--val_images",
            "6",
            "--images_per_scene",
            "6",
            "--width",
            str(W),
            "--height",
            str(H),
            "--points",
            "500",
            "--supersample",
            "1",
            "--portrait_every",
            "3",
            "--no_ov_pairs",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    val = root / "syn" / SYN_VAL
    castle = _undistorted_copy(val / "synthetic_val" / "dense", root / "mine/castle/dense")
    _undistorted_copy(val / "synthetic_val" / "dense", root / "txt", ext=".txt")
    shutil.copytree(root / "txt/sparse", castle / "sparse_txt")
    _undistorted_copy(val / "synthetic_val_1" / "dense", root / "mine/tower/dense")
    _undistorted_copy(val / "synthetic_val_2" / "dense", root / "heldout/hall/dense")
    return root


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = pcp.main(argv)
    except SystemExit as e:  # argparse's own errors (unknown flag, missing --out)
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _expected_pairs(dense: Path, min_overlap: float) -> dict[tuple[str, str], float]:
    """The selection written out independently from the model: ordered pairs with
    min_overlap <= |shared| / |points of a| < 1 between landscape images (all 256x160 ones
    admit the 1.5 crop) whose shared observations have mean Sampson <= 1 px²."""
    cams, ims, _ = read_model(dense / "sparse")
    pts = {i: {int(p) for p in im.point3D_ids if p >= 0} for i, im in ims.items()}
    out = {}
    for a in ims:
        for b in ims:
            if a == b or not pts[a]:
                continue
            ov = len(pts[a] & pts[b]) / len(pts[a])
            ca, cb = cams[ims[a].camera_id], cams[ims[b].camera_id]
            if min_overlap <= ov < 1 and ca.width >= ca.height and cb.width >= cb.height:
                out[(ims[a].name, ims[b].name)] = ov
    return out


def _project(K: np.ndarray, R: np.ndarray, t: np.ndarray, X: np.ndarray) -> np.ndarray:
    x = (K @ (R @ X.T + t[:, None])).T
    return x[:, :2] / x[:, 2:]


def _sampson(x1: np.ndarray, x2: np.ndarray, F: np.ndarray) -> np.ndarray:
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], 1)
    h2 = np.concatenate([x2, np.ones((len(x2), 1))], 1)
    Fx1, Ftx2 = h1 @ F.T, h2 @ F
    num = (h2 * Fx1).sum(1) ** 2
    return num / (Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2)


def _quat_to_R(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


@pytest.fixture(scope="module")
def castle_pairs(recs, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("castle_pairs") / "pairs.npy"
    rc = pcp.main(
        [
            "--model",
            str(recs / "mine/castle/dense/sparse"),
            "--images",
            str(recs / "mine/castle/dense/images"),
            "--out",
            str(out),
            "--min_overlap",
            "0.2",
        ]
    )
    assert rc == 0
    return load_pair_file(out)


def test_pairs_overlaps_and_F_match_the_known_geometry(recs, castle_pairs):
    dense = recs / "mine/castle/dense"
    cams, ims, pts3d = read_model(dense / "sparse")
    by_name = {im.name: im for im in ims.values()}
    assert list(castle_pairs) == ["castle"]  # named after the folder above dense/sparse
    entry = castle_pairs["castle"]
    assert entry["image_dir"] == str((dense / "images").resolve())
    expected = _expected_pairs(dense, 0.2)
    got = {(p.im1, p.im2): p for p in entry["pairs"]}
    assert len(expected) >= 10 and set(got) == set(expected)  # nothing failed Sampson
    portrait = {
        im.name for im in ims.values() if cams[im.camera_id].width < cams[im.camera_id].height
    }
    assert portrait and not portrait & {n for pair in got for n in pair}
    for (n1, n2), p in got.items():
        assert p.overlap == pytest.approx(expected[(n1, n2)], abs=1e-12)
        assert p.crop1 == p.crop2 == (16, 0)
        i1, i2 = by_name[n1], by_name[n2]
        c1, c2 = cams[i1.camera_id].params, cams[i2.camera_id].params
        K1 = np.array([[c1[0], 0, c1[2]], [0, c1[1], c1[3]], [0, 0, 1]])
        K2 = np.array([[c2[0], 0, c2[2]], [0, c2[1], c2[3]], [0, 0, 1]])
        np.testing.assert_allclose(p.K1, K1)
        np.testing.assert_allclose(p.K2, K2)
        R1, R2 = _quat_to_R(i1.qvec), _quat_to_R(i2.qvec)
        np.testing.assert_allclose(p.R, R2 @ R1.T, atol=1e-9)
        np.testing.assert_allclose(_quat_to_R(p.q), p.R, atol=1e-9)
        c1w, c2w = -R1.T @ i1.tvec, -R2.T @ i2.tvec
        np.testing.assert_allclose(p.t, R2 @ (c1w - c2w), atol=1e-9)
        tx = np.array([[0, -p.t[2], p.t[1]], [p.t[2], 0, -p.t[0]], [-p.t[1], p.t[0], 0]])
        F = np.linalg.inv(p.K2).T @ tx @ p.R @ np.linalg.inv(p.K1)
        # true correspondences: every 3D point of the scene projected into both cameras
        X = np.stack([pt.xyz for pt in pts3d.values()])
        x1 = _project(K1, R1, i1.tvec, X)
        x2 = _project(K2, R2, i2.tvec, X)
        h1 = np.concatenate([x1, np.ones((len(x1), 1))], 1)
        h2 = np.concatenate([x2, np.ones((len(x2), 1))], 1)
        algebraic = np.abs(np.einsum("ni,ij,nj->n", h2, F / np.linalg.norm(F), h1))
        assert algebraic.max() < 1e-8
        assert _sampson(x1, x2, F).max() < 1e-12
        # the stored observations of the shared points: mean Sampson small (<= 1 px²)
        shared = set(i1.point3D_ids[i1.point3D_ids >= 0]) & set(i2.point3D_ids)
        o1 = np.array([i1.xys[list(i1.point3D_ids).index(s)] for s in sorted(shared)])
        o2 = np.array([i2.xys[list(i2.point3D_ids).index(s)] for s in sorted(shared)])
        assert _sampson(o1, o2, F).mean() <= 1.0
    assert {im.name for im in entry["ims"]} == {n for pair in got for n in pair}
    assert all(im.crop == (16, 0) for im in entry["ims"])


def test_text_model_gives_the_same_pairs(recs, castle_pairs, tmp_path):
    out = tmp_path / "txt.npy"
    dense = recs / "mine/castle/dense"
    assert (dense / "sparse_txt/points3D.txt").is_file()
    assert (
        pcp.main(
            [
                "--model",
                str(dense / "sparse_txt"),
                "--images",
                str(dense / "images"),
                "--scene",
                "castle",
                "--out",
                str(out),
                "--min_overlap",
                "0.2",
            ]
        )
        == 0
    )
    txt = load_pair_file(out)["castle"]
    ref = castle_pairs["castle"]
    assert [(p.im1, p.im2) for p in txt["pairs"]] == [(p.im1, p.im2) for p in ref["pairs"]]
    for a, b in zip(txt["pairs"], ref["pairs"]):
        assert a.overlap == b.overlap and a.crop1 == b.crop1 and a.crop2 == b.crop2
        for k in ("K1", "K2", "t", "q", "R"):
            np.testing.assert_allclose(getattr(a, k), getattr(b, k), atol=1e-9)


def test_directed_overlaps_known_answer():
    ov = pcp.directed_overlaps(
        [np.array([1, 2, 3, 4, -1]), np.array([3, 4, 5]), np.array([-1, -1]), np.array([4, 4, 9])]
    )
    expected = np.array(
        [
            [-1, 2 / 4, 0, 1 / 4],
            [2 / 3, -1, 0, 1 / 3],
            [-1, -1, -1, -1],
            [1 / 2, 1 / 2, 0, -1],
        ]
    )
    np.testing.assert_allclose(ov, expected)


def test_zero_distortion_models_are_accepted_as_pinhole(recs, castle_pairs, tmp_path):
    """The generator's own model (SIMPLE_RADIAL / RADIAL with k = 0, which COLMAP's
    image_undistorter leaves unchanged) gives the pairs of its PINHOLE copy."""
    dense = recs / "syn" / SYN_VAL / "synthetic_val" / "dense"
    models = {c.model for c in read_model(dense / "sparse")[0].values()}
    assert {"SIMPLE_RADIAL", "RADIAL"} <= models
    out = tmp_path / "p.npy"
    assert (
        pcp.main(
            [
                "--model",
                str(dense / "sparse"),
                "--images",
                str(dense / "images"),
                "--scene",
                "castle",
                "--out",
                str(out),
                "--min_overlap",
                "0.2",
            ]
        )
        == 0
    )
    got, ref = load_pair_file(out)["castle"]["pairs"], castle_pairs["castle"]["pairs"]
    assert [(p.im1, p.im2) for p in got] == [(p.im1, p.im2) for p in ref]
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.K1, b.K1)
        np.testing.assert_allclose(a.t, b.t)


def test_distorted_model_refused_then_accepted_after_image_undistorter(
    recs, tmp_path, castle_pairs, capsys
):
    """A model with lens distortion is refused with the fix; the output of COLMAP's
    image_undistorter (pycolmap.undistort_images, the same library code) is accepted."""
    import pycolmap

    cams, ims, pts = read_model(recs / "mine/castle/dense/sparse")
    distorted = {
        cid: Camera(
            "SIMPLE_RADIAL",
            c.width,
            c.height,
            np.array([c.params[0], c.params[2], c.params[3], 1e-4]),
        )
        for cid, c in cams.items()
    }
    model = write_model(tmp_path / "distorted", distorted, ims, pts)
    images = recs / "mine/castle/dense/images"
    out = tmp_path / "p.npy"
    rc, _, err = _run(["--model", str(model), "--images", str(images), "--out", str(out)], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("data_pairs.prep_colmap_training_pairs: error: --model ")
    assert "camera 1 has the model SIMPLE_RADIAL with distortion" in lines[0]
    assert f"colmap image_undistorter --image_path {images} --input_path {model}" in lines[0]
    assert not out.exists()

    und = tmp_path / "undistorted"
    pycolmap.undistort_images(str(und), str(model), str(images))
    assert {c.model for c in read_model(und / "sparse")[0].values()} == {"PINHOLE"}
    rc, _, err = _run(
        [
            "--model",
            str(und / "sparse"),
            "--images",
            str(und / "images"),
            "--scene",
            "castle",
            "--out",
            str(out),
            "--min_overlap",
            "0.2",
        ],
        capsys,
    )
    assert rc == 0, err
    got = load_pair_file(out)["castle"]["pairs"]
    # k = 1e-4 moves points by < 0.01 px: the same pairs as the undistorted original
    assert {(p.im1, p.im2) for p in got} == {
        (p.im1, p.im2) for p in castle_pairs["castle"]["pairs"]
    }


def test_several_scenes_scenes_file_and_relative_image_dirs(recs, tmp_path, capsys):
    sf = recs / "scenes.txt"
    sf.write_text(
        "# name model images\ncastle mine/castle/dense/sparse mine/castle/dense/images"
        "\n\ntower  mine/tower/dense/sparse   mine/tower/dense/images  # second\n"
    )
    out = tmp_path / "both.npy"
    rc, stdout, _ = _run(
        ["--scenes_file", str(sf), "--out", str(out), "--data_root", str(recs / "mine")], capsys
    )
    assert rc == 0 and "2 scenes" in stdout
    both = load_pair_file(out)
    assert list(both) == ["castle", "tower"]
    assert both["castle"]["image_dir"] == "castle/dense/images"
    assert both["tower"]["image_dir"] == "tower/dense/images"
    ds = ImMatchDatasetMega(recs / "mine", out, wt=160, ht=96, item_type="triplet")
    assert len(ds) == len(both["castle"]["pairs"]) + len(both["tower"]["pairs"])
    item = ds[len(ds) - 1]  # a tower pair; its negative comes from castle
    assert item["src_im"].shape == item["neg_im"].shape == (3, 96, 160)
    assert (recs / "mine/castle/dense/images" / item["neg_im_ref"]).is_file()
    # the images resolve against the data root given to training, not the working folder
    with pytest.raises(FileNotFoundError, match="image folder of scene castle"):
        ImMatchDatasetMega(recs / "heldout", out, wt=160, ht=96, item_type="pair")


def test_default_scene_names():
    assert pcp.default_scene_name("work/castle/dense/sparse") == "castle"
    assert pcp.default_scene_name("work/castle/sparse/0") == "castle"
    assert pcp.default_scene_name("/tmp/tower/model") == "tower"


def _exp_dir(argv: list[str]) -> Path:
    a = parse_args(argv)
    return make_tags(a).exp_dir(a.out_dir)


@pytest.mark.slow
def test_finetune_on_own_pairs_with_heldout_validation(recs, tiny_ckpt, tmp_path, capsys):
    """The README's path: pairs → held-out overlaps → one training step from a checkpoint
    (--ckpt) on the new pairs, validated on the held-out reconstruction (--val_root)."""
    pair_dir = tmp_path / "pairs"
    assert (
        pcp.main(
            [
                "--model",
                str(recs / "mine/castle/dense/sparse"),
                "--images",
                str(recs / "mine/castle/dense/images"),
                "--out",
                str(pair_dir / "my_pairs.npy"),
            ]
        )
        == 0
    )
    assert pov.main(["--data_root", str(recs / "heldout")]) == 0
    assert (recs / "heldout/hall/dense/sparse/ov_pairs.npy").is_file()
    capsys.readouterr()
    argv = [
        "--pair_root",
        str(pair_dir),
        "--match_npy",
        "my_pairs.npy",
        "--data_root",
        str(tmp_path / "absent"),
        "--val_root",
        str(recs / "heldout"),
        "--ckpt",
        str(tiny_ckpt),
        "-o",
        str(tmp_path / "out"),
        *TINY_TRAIN,
    ]
    assert train_patch2pix.main(argv) == 0, capsys.readouterr().err[-2000:]
    exp = _exp_dir(argv)
    assert (exp / "last_ckpt.pth").is_file() and (exp / "ckpt_ep1.pth").is_file()
    log = (exp / "log.txt").read_text()
    n_pairs = len(load_pair_file(pair_dir / "my_pairs.npy")["castle"]["pairs"])
    assert f"data: {n_pairs} pairs" in log and str(tiny_ckpt) in log
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r.get("kind") == "val"]
    assert len(val) == 1 and val[0]["per_scene"] == {"hall": 2}
    assert 0 <= val[0]["mean_err"] <= 180


def test_val_root_without_overlaps_is_a_usage_error(recs, tmp_path, capsys, castle_pairs):
    bare = tmp_path / "val"
    shutil.copytree(recs / "mine/tower", bare / "tower")  # no sparse/ov_pairs.npy
    argv = [
        "--pair_root",
        str(tmp_path),
        "--match_npy",
        "p.npy",
        "--val_root",
        str(bare),
        "-o",
        str(tmp_path / "out"),
        *TINY_TRAIN,
    ]
    np.save(tmp_path / "p.npy", castle_pairs, allow_pickle=True)
    assert train_patch2pix.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train_patch2pix: error: --val_root ")
    assert "precompute_immatch_val_ovs" in err[-1]
    assert not (tmp_path / "out").exists()


def _bad_cases(recs: Path, tmp: Path) -> list[tuple[list[str], list[str]]]:
    c = recs / "mine/castle/dense"
    good = ["--model", str(c / "sparse"), "--images", str(c / "images")]
    no_points = tmp / "no_points"
    shutil.copytree(c / "sparse", no_points)
    (no_points / "points3D.bin").unlink()
    missing_im = tmp / "missing_im"
    shutil.copytree(c / "images", missing_im)
    first = sorted(missing_im.iterdir())[0]
    first.unlink()
    small = tmp / "small"
    shutil.copytree(c / "images", small)
    from PIL import Image as PILImage

    PILImage.new("RGB", (64, 40)).save(small / first.name)
    focal0 = tmp / "focal0"
    cams, ims, pts = read_model(c / "sparse")
    cid0 = sorted(cams)[0]
    cams[cid0] = Camera("PINHOLE", cams[cid0].width, cams[cid0].height, np.array([0.0, 0.0, 1, 1]))
    write_model(focal0, cams, ims, pts)
    bad_sf = tmp / "scenes.txt"
    bad_sf.write_text("castle a b\nonly_two fields\n")
    return [
        (["--model", str(tmp / "nowhere"), "--images", str(c / "images")], ["--model", "nowhere"]),
        (["--model", str(no_points), "--images", str(c / "images")], ["--model", "points3D.bin"]),
        (
            ["--model", str(c / "sparse"), "--images", str(tmp / "noimages")],
            ["--images", "noimages", "not found"],
        ),
        (["--model", str(c / "sparse")], ["--images", "once per --model"]),
        (good + ["--scene", "a", "--scene", "b"], ["--scene", "once per --model"]),
        (good + good, ["--scene", "both named 'castle'"]),
        (
            ["--model", str(c / "sparse"), "--images", str(missing_im)],
            ["--images", first.name, "not found"],
        ),
        (["--model", str(c / "sparse"), "--images", str(small)], ["--images", first.name, "64x40"]),
        (["--scenes_file", str(bad_sf)], ["--scenes_file", "line 2"]),
        (["--scenes_file", str(tmp / "none.txt")], ["--scenes_file", "none.txt"]),
        (["--scenes_file", str(bad_sf)] + good, ["--scenes_file"]),
        ([], ["--model is required"]),
        (good + ["--min_overlap", "1.5"], ["--min_overlap"]),
        (good + ["--max_pairs", "0"], ["--max_pairs"]),
        (good + ["--im_target_ratio", "2"], ["--im_target_ratio"]),
        (good + ["--sampson_thres", "0"], ["--sampson_thres"]),
        (good + ["--data_root", str(tmp / "nodir")], ["--data_root", "nodir"]),
        (good + ["--min_overlap", "0.999"], ["no pair", "nothing written"]),
        (good + ["--bogus"], ["--bogus"]),
        (
            ["--model", str(focal0), "--images", str(c / "images")],
            ["--model", "focal0", f"camera {cid0}", "focal length fx=0"],
        ),
    ]


def test_bad_input_one_line_exit_2_nothing_written(recs, tmp_path, capsys):
    for k, (args, needles) in enumerate(_bad_cases(recs, tmp_path)):
        out = tmp_path / f"out{k}" / "pairs.npy"
        out_flag = ["--out", str(out)]
        rc, _, err = _run(args + out_flag, capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, (args, err)
        assert lines[0].startswith("data_pairs.prep_colmap_training_pairs: error: "), lines
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        assert not out.parent.exists(), args
    (tmp_path / "dir.npy").mkdir()
    for out, needle in ((tmp_path / "p.txt", ".npy"), (tmp_path / "dir.npy", "is a folder")):
        rc, _, err = _run(
            [
                "--model",
                str(recs / "mine/castle/dense/sparse"),
                "--images",
                str(recs / "mine/castle/dense/images"),
                "--out",
                str(out),
            ],
            capsys,
        )
        assert rc == 2 and "--out" in err and needle in err
    assert not (tmp_path / "p.txt").exists()


def test_pair_namespace_fields(castle_pairs):
    p = castle_pairs["castle"]["pairs"][0]
    assert isinstance(p, Namespace)
    assert set(vars(p)) == {"im1", "im2", "overlap", "K1", "K2", "t", "q", "R", "crop1", "crop2"}
