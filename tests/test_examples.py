"""examples/: the example pairs, the match_pair command / helper and the notebook.

The network runs from a tiny, predictable checkpoint: a random backbone, an identity
neighbourhood-consensus filter (coarse matches are then the mutual nearest neighbours of the
features) and regressors that output exactly zero offset. On a pair whose second image is
the first one enlarged 1.5x, the coarse matches are the identity in the network's frame, so
in original pixels they (and the refined ones) must satisfy (x2, y2) = 1.5 (x1, y1).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_scaled_pair
from PIL import Image

from examples.make_example_pairs import list_pairs, make_pair, write_pairs
from examples.match_pair import find_checkpoint, load_homography, match_pair, run
from utils.eval.hpatches import warp_points

REPO = Path(__file__).resolve().parents[1]
SCALE = 1.5


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt: Path) -> Path:
    return tiny_ckpt


@pytest.fixture(scope="module")
def net(tiny_net: torch.nn.Module) -> torch.nn.Module:
    return tiny_net  # tests/conftest.py


@pytest.fixture(scope="module")
def scaled_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Image 1 (320x240) and the same picture enlarged 1.5x (480x360)."""
    return write_scaled_pair(tmp_path_factory.mktemp("pair"), (320, 240))


def test_example_pairs_shipped_and_consistent(tmp_path: Path) -> None:
    pairs = list_pairs(REPO / "examples" / "images")
    assert len(pairs) >= 2 and all(h is not None for _, _, h in pairs)
    total = sum(p.stat().st_size for p in (REPO / "examples" / "images").iterdir())
    assert total < 500_000
    for p1, _, h_txt in pairs:
        h_npy = h_txt.with_suffix(".npy")
        assert np.allclose(load_homography(h_txt), load_homography(h_npy), rtol=1e-10)
        spec_name = p1.name[: -len("_1.jpg")]
        assert spec_name in {"astronaut", "coffee", "chelsea"}
    # the generator is deterministic and image 2 is image 1 seen through H
    from examples.make_example_pairs import PAIRS

    im1, im2, H = make_pair(PAIRS[0])
    assert np.allclose(H, load_homography(REPO / "examples" / "images" / "astronaut_H.npy"))
    xs, ys = np.meshgrid(np.arange(8, im1.shape[1] - 8, 6.0), np.arange(8, im1.shape[0] - 8, 6.0))
    p = np.stack([xs.ravel(), ys.ravel()], 1)
    q = np.rint(warp_points(p, H)).astype(int)
    ok = (q[:, 0] >= 0) & (q[:, 0] < im2.shape[1]) & (q[:, 1] >= 0) & (q[:, 1] < im2.shape[0])
    a = im1[p[ok, 1].astype(int), p[ok, 0].astype(int)].astype(float).ravel()
    b = im2[q[ok, 1], q[ok, 0]].astype(float).ravel()
    assert ok.sum() > 500 and np.corrcoef(a, b)[0, 1] > 0.8
    written = write_pairs(tmp_path, PAIRS[:1])
    assert written[0][0].read_bytes() == (REPO / "examples/images/astronaut_1.jpg").read_bytes()


def test_match_pair_original_frame(net: torch.nn.Module, scaled_pair: tuple[Path, Path]) -> None:
    p1, p2 = scaled_pair
    # imsize 192: image 1 -> 192x144 (scale 5/3), image 2 -> 192x144 (scale 2.5)
    res = match_pair(net, p1, p2, imsize=192, io_thres=0.5)
    assert len(res) > 50
    assert res.size1 == (320, 240) and res.size2 == (480, 360)
    err = np.linalg.norm(res.matches[:, 2:] - SCALE * res.matches[:, :2], axis=1)
    assert np.median(err) < 0.01 and np.mean(err < 0.01) > 0.95
    assert np.abs(res.matches - res.coarse).max() < 1e-3  # zero-offset regressors
    # coordinates reach beyond the network's 192-px frame: they are original pixels
    assert res.matches[:, 2].max() > 400 and res.matches[:, 0].max() > 260
    H = np.diag([SCALE, SCALE, 1.0])
    assert np.median(res.errors(H)) < 0.01
    coarse = match_pair(net, p1, p2, imsize=192, eval_type="coarse")
    cerr = np.linalg.norm(coarse.matches[:, 2:] - SCALE * coarse.matches[:, :2], axis=1)
    assert np.median(cerr) < 0.01


def test_refine_matches_frame(net: torch.nn.Module, scaled_pair: tuple[Path, Path]) -> None:
    """Other matcher's matches in the resized frame come back in original pixels."""
    from utils.eval.model_helper import refine_matches

    p1, p2 = scaled_pair
    seen = {}

    def perfect(g1: torch.Tensor, g2: torch.Tensor) -> np.ndarray:
        seen["shapes"] = (tuple(g1.shape), tuple(g2.shape))
        xs, ys = np.meshgrid(np.arange(20.0, 180.0, 20.0), np.arange(20.0, 130.0, 20.0))
        pts = np.stack([xs.ravel(), ys.ravel()], 1)
        return np.concatenate([pts, pts], 1)  # same content at the same resized pixel

    out, scores = refine_matches(p1, p2, net, perfect, io_thres=0.0, imsize=200)
    assert seen["shapes"] == ((1, 1, 150, 200), (1, 1, 150, 200))
    assert len(out) == len(scores) == 48
    assert np.allclose(out[:, 2:], SCALE * out[:, :2], atol=1e-3)
    assert np.allclose(out[:, :2].max(0), [160 * 1.6, 120 * 1.6], atol=1e-3)


def test_match_pair_cli(ckpt: Path, scaled_pair: tuple[Path, Path], tmp_path: Path) -> None:
    p1, p2 = scaled_pair
    h = tmp_path / "H.txt"
    np.savetxt(h, np.diag([SCALE, SCALE, 1.0]))
    out = tmp_path / "res" / "matches.png"
    res = run(
        [
            str(p1),
            str(p2),
            "--ckpt",
            str(ckpt),
            "--out",
            str(out),
            "--imsize",
            "192",
            "--io_thres",
            "0.5",
            "--H",
            str(h),
            "--device",
            "cpu",
        ]
    )
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape == (360, 320 + 10 + 480, 3) and png.std() > 10
    npz = np.load(out.with_suffix(".npz"))
    assert np.array_equal(npz["matches"], res.matches)
    assert npz["errors"].shape == (len(res),) and np.median(npz["errors"]) < 0.01
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["x1", "y1", "x2", "y2", "score", "error"]
    table = np.array(rows[1:], dtype=float)
    assert table.shape == (len(res), 6)
    assert np.allclose(table[:, :4], res.matches, atol=1e-4)


def test_find_checkpoint(tmp_path: Path) -> None:
    assert find_checkpoint(tmp_path) is None
    (tmp_path / "output" / "a").mkdir(parents=True)
    old, new = tmp_path / "output" / "a" / "old.pth", tmp_path / "output" / "new.pth"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (1, 1))
    assert find_checkpoint(tmp_path) == new
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / "patch2pix_pretrained.pth").write_bytes(b"x")
    assert find_checkpoint(tmp_path).name == "patch2pix_pretrained.pth"


@pytest.mark.slow
def test_notebook_executes_in_jupyter(ckpt: Path, tmp_path: Path) -> None:
    """The installed jupyter runs the notebook with the project's kernel ("patch2pix")."""
    import nbformat

    jupyter = Path(sys.executable).with_name("jupyter")
    assert jupyter.is_file(), f"{jupyter} missing: jupyter is in requirements-dev.txt"
    for app in ("notebook", "lab", "nbconvert"):  # what the README tells users to run
        assert subprocess.run([jupyter, app, "--version"], capture_output=True).returncode == 0
    path = REPO / "examples" / "visualize_matches.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "patch2pix"
    specs = json.loads(
        subprocess.run(
            [jupyter, "kernelspec", "list", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert "patch2pix" in specs["kernelspecs"], "run scripts/setup_env.sh (registers it)"
    kernel_python = specs["kernelspecs"]["patch2pix"]["spec"]["argv"][0]
    assert Path(kernel_python).parent == Path(sys.executable).parent  # this environment's
    for cell in nb.cells:  # stored outputs are cleared
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    figs = tmp_path / "figs"
    env = {
        **os.environ,
        "P2P_CKPT": str(ckpt),
        "P2P_IMSIZE": "192",
        "P2P_FIG_DIR": str(figs),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "2",
    }
    proc = subprocess.run(
        [
            jupyter,
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            str(path),
            "--ExecutePreprocessor.timeout=300",
            "--output-dir",
            str(tmp_path),
            "--output",
            "executed.ipynb",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    names = {p.name for p in figs.glob("*.png")}
    for stem in ("astronaut", "coffee", "chelsea"):
        assert {f"{stem}_coarse.png", f"{stem}_refined.png"} <= names
    assert {"ncnet_coarse.png", "refine_input.png", "refine_refined.png"} <= names
    im = np.asarray(Image.open(figs / "astronaut_refined.png").convert("RGB"))
    assert im.std() > 10
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # figures displayed inline
    text = "".join(o.get("text", "") for o in outputs)
    assert "MMA@1" in text and "tiny.pth" in text


def test_eval_hpatches_cli_with_network(ckpt: Path, tmp_path: Path) -> None:
    """The HPatches CLI runs a checkpoint end to end (wiring and output; tiny images)."""
    import json

    from utils.eval import eval_hpatches
    from utils.eval.make_hpatches_synthetic import make_synthetic_hpatches

    root = tmp_path / "hp"
    seqs = make_synthetic_hpatches(root, n_seqs=1, max_side=128)
    out = tmp_path / "r.json"
    eval_hpatches.main(
        [  # the illumination sequence only (5 pairs), to stay fast
            "--ckpt",
            str(ckpt),
            "--root",
            str(root),
            "--imsize",
            "128",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--no_progress",
            "--exclude",
            seqs[1].name,
        ]
    )
    res = json.loads(out.read_text())
    assert res["summary"]["all"]["n_pairs"] == 5 and res["config"]["imsize"] == 128
    assert res["summary"]["viewpoint"]["n_pairs"] == 0
    assert res["summary"]["all"]["mean_matches"] > 0
    # the summary's MMA@t is the mean over the pairs of each pair's fraction of matches
    mma = res["summary"]["illumination"]["mma"]
    assert list(mma) == [str(t) for t in range(1, 11)]
    pairs = [p for p in res["pairs"] if p["seq"] == seqs[0].name]
    assert sorted(p["k"] for p in pairs) == [2, 3, 4, 5, 6]
    for i, t in enumerate(mma):
        assert mma[t] == pytest.approx(np.mean([p["mma"][i] for p in pairs]), abs=1e-12)
    for p in pairs:  # a fraction of the pair's own matches: count / n_matches
        counts = np.array(p["mma"]) * p["n_matches"]
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)


def test_notebook_matches_its_generator() -> None:
    """The committed notebook is what examples/make_notebook.py writes (edit the generator)."""
    import nbformat

    from examples.make_notebook import NOTEBOOK, build

    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in stored.cells] == [c.source for c in build().cells]
