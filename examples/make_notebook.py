"""Write ``examples/visualize_matches.ipynb`` (outputs cleared) with nbformat.

    python -m examples.make_notebook

The notebook is generated so that its source stays reviewable here; edit this file and
re-run it rather than editing the .ipynb by hand.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from utils.common.cli import make_parser, run_command

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "visualize_matches.ipynb"

INTRO = """\
# Visualising Patch2Pix matches

Patch2Pix proposes patch-level matches with an NCNet-style coarse matcher and refines each
of them to pixel level with two local regressors (mid, then fine level). This notebook:

1. loads a model: `pretrained/patch2pix_pretrained.pth` if present, else the newest
   checkpoint under `output/`, else a freshly initialised (untrained) model — with a warning;
2. matches the example pairs in `examples/images/` with the library's matcher,
   `Patch2PixMatcher` (`matcher(image0, image1)`, as LightGlue users write it), and draws the
   coarse and the refined matches; the pairs come with their ground-truth homography, so
   every match is coloured by its reprojection error (green 0 px → red ≥ 10 px);
3. shows NCNet-only coarse matching (`load_model(..., method='nc')`);
4. refines the matches of another matcher with `refine_matches`.

It runs on CPU: keep `IMSIZE` small (256–384) there; use 1024 on a GPU.
The settings can also be given through environment variables (used by the tests)."""

SETTINGS = """\
import os

IMSIZE = int(os.environ.get("P2P_IMSIZE", 320))  # network longer side (CPU: 256-384, GPU: 1024)
IO_THRES = float(os.environ.get("P2P_IO_THRES", 0.5))  # keep refined matches above this score
KSIZE = 2  # relocalisation kernel size of the coarse matcher
NCN_THRES = 0.0  # coarse score threshold
NPTS = 300  # matches drawn per figure (None: all)
MAX_ERR = 10.0  # error (px) mapped to red
CKPT = os.environ.get("P2P_CKPT") or None  # None: pretrained/, else newest output/**/*.pth
NCN_CKPT = os.environ.get("P2P_NCN_CKPT") or None  # None: pretrained/ncn_ivd_5ep.pth if present
FIG_DIR = os.environ.get("P2P_FIG_DIR", "")  # save figures there ('' : do not save)"""

SETUP = """\
%matplotlib inline
import sys
from pathlib import Path

ROOT = Path.cwd()  # the repository root: the first parent folder holding networks/
while not (ROOT / "networks").is_dir() and ROOT != ROOT.parent:
    ROOT = ROOT.parent
sys.path.insert(0, str(ROOT))"""

IMPORTS = """\
import warnings

import numpy as np
from IPython.display import Markdown, display
from PIL import Image

from examples.make_example_pairs import list_pairs
from examples.match_pair import find_checkpoint, init_untrained_model, load_homography
from utils.common.plotting import colors_from_values, plot_matches
from utils.eval.hpatches import reprojection_errors, warp_points
from utils.eval.matcher import Patch2PixMatcher
from utils.eval.model_helper import load_model, refine_matches

fig_dir = Path(FIG_DIR) if FIG_DIR else None
if fig_dir is not None:
    fig_dir.mkdir(parents=True, exist_ok=True)


def show(fig, name):
    \"\"\"Display a figure in the notebook and save it as FIG_DIR/<name>.png.\"\"\"
    if fig_dir is not None:
        fig.savefig(fig_dir / f"{name}.png", dpi=fig.dpi)
    display(fig)"""

MODEL_MD = """\
## 1. Model
The checkpoint is chosen as described above; without any, an untrained model is built so
that the notebook still runs end to end — its matches are then meaningless."""

MODEL = """\
ckpt = Path(CKPT) if CKPT else find_checkpoint(ROOT)
if ckpt is not None:
    net = load_model(ckpt, method="patch2pix")
    trained = True
else:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = init_untrained_model()
    trained = False
    display(Markdown(
        "**⚠ No checkpoint found** (`pretrained/patch2pix_pretrained.pth` or `output/**/*.pth`): "
        "using an **untrained** model. Download the released weights "
        "(see the README) to see real matches."
    ))
    warnings.warn("no checkpoint found: matches come from an UNTRAINED model", stacklevel=1)
print(f"model: {ckpt if ckpt else 'untrained'} on {net.device}; upsample {net.upsample}")"""

PAIRS_MD = """\
## 2. Coarse and refined matches on the example pairs
`matcher(image0, image1)` takes paths, numpy arrays (H, W, 3), PIL images or [0, 1] tensors
and returns `keypoints0`, `keypoints1` (the refined matches), `scores` and `coarse` (the
patch-level match each of them comes from), all in the **input images' pixels**. With the
ground-truth homography H (image 1 → image 2) the reprojection error of a match is
`‖H(x1, y1) − (x2, y2)‖`."""

PAIRS = """\
pairs = list_pairs(ROOT / "examples" / "images")
matcher = Patch2PixMatcher(net, imsize=IMSIZE, io_thres=IO_THRES, ksize=KSIZE,
                           ncn_thres=NCN_THRES)
rows = []
for im1, im2, h_path in pairs:
    name = im1.name[: -len("_1.jpg")]
    out = matcher(im1, im2)
    refined = np.concatenate([out["keypoints0"], out["keypoints1"]], axis=1)
    H = load_homography(h_path) if h_path is not None else None
    for kind, m in (("coarse", out["coarse"]), ("refined", refined)):
        if H is not None:
            err = reprojection_errors(m, H)
            colors = colors_from_values(err, 0.0, MAX_ERR, "RdYlGn", reverse=True)
            rows.append((name, kind, len(m), *[np.mean(err <= t) for t in (1, 3, 5)],
                         np.median(err) if len(err) else np.nan))
        else:
            colors = colors_from_values(out["scores"], 0.0, 1.0, "viridis")
        fig = plot_matches(im1, im2, m, Npts=NPTS, lines=True, radius=2, dpi=100,
                           colors=colors, title=f"{name}: {kind} ({len(m)} matches)")
        show(fig, f"{name}_{kind}")

header = f"{'pair':<10} {'level':<8} {'N':>5} {'MMA@1':>6} {'MMA@3':>6} {'MMA@5':>6} {'med.err':>8}"
print(header)
for r in rows:
    print(f"{r[0]:<10} {r[1]:<8} {r[2]:>5d} {r[3]:6.3f} {r[4]:6.3f} {r[5]:6.3f} {r[6]:8.2f}")"""

NCN_MD = """\
## 3. NCNet-only coarse matching
The coarse stage of Patch2Pix is an NCNet. As in the original notebook, NCNet weights
(`pretrained/ncn_ivd_5ep.pth`) are loaded with `load_model(..., method='nc')` and matched
with `eval_type='coarse'` (matches at the centres of the stride-8 cells, relocalised by
`ksize`). Without that file, the coarse part of the model above is used."""

NCN = """\
ncn_path = Path(NCN_CKPT) if NCN_CKPT else ROOT / "pretrained" / "ncn_ivd_5ep.pth"
if ncn_path.is_file():
    ncnet = load_model(ncn_path, method="nc")
else:
    print(f"{ncn_path} not found: using the coarse stage of the model above")
    ncnet = net
im1, im2, h_path = pairs[0]
ncn_matcher = Patch2PixMatcher(ncnet, imsize=IMSIZE, io_thres=0.0, ksize=KSIZE,
                               ncn_thres=NCN_THRES, eval_type="coarse")
out = ncn_matcher(im1, im2)
m_nc = np.concatenate([out["keypoints0"], out["keypoints1"]], axis=1)
H = load_homography(h_path) if h_path is not None else None
colors = None
if H is not None:
    err = reprojection_errors(m_nc, H)
    colors = colors_from_values(err, 0.0, MAX_ERR, "RdYlGn", reverse=True)
    mma = [round(float(np.mean(err <= t)), 3) for t in (1, 3, 5, 10)]
    print("NCNet coarse MMA@1/3/5/10px:", mma)
fig = plot_matches(im1, im2, m_nc, Npts=NPTS, lines=True, radius=3, dpi=100, colors=colors,
                   title=f"NCNet coarse ({len(m_nc)})")
show(fig, "ncnet_coarse")"""

REFINE_MD = """\
## 4. Refining another matcher's matches
`refine_matches(im1, im2, net, coarse_matcher, io_thres, imsize)` runs any coarse matcher
on the (resized) greyscale images and refines its matches with Patch2Pix's regressors.
Here the "other matcher" is a stand-in: ground-truth correspondences on a grid, each moved
by up to ±6 px of noise; a trained model should bring most of them back close to 0 px."""

REFINE = """\
im1, im2, h_path = pairs[0]
H = load_homography(h_path)
w1, h1 = Image.open(im1).size
w2, h2 = Image.open(im2).size
rng = np.random.default_rng(0)


def noisy_gt_matcher(gray1, gray2):
    \"\"\"(1,1,H1,W1), (1,1,H2,W2) -> (N, 4) noisy true matches in those images' pixels.\"\"\"
    s1 = gray1.shape[-1] / w1, gray1.shape[-2] / h1
    s2 = gray2.shape[-1] / w2, gray2.shape[-2] / h2
    xs, ys = np.meshgrid(np.arange(16, w1 - 16, 24.0), np.arange(16, h1 - 16, 24.0))
    p1 = np.stack([xs.ravel(), ys.ravel()], 1)
    p2 = warp_points(p1, H)
    ok = (p2[:, 0] > 8) & (p2[:, 0] < w2 - 8) & (p2[:, 1] > 8) & (p2[:, 1] < h2 - 8)
    p2 = p2[ok] + rng.uniform(-6, 6, size=(ok.sum(), 2))
    return np.concatenate([p1[ok] * s1, p2 * s2], 1)


noisy, _ = refine_matches(im1, im2, net, noisy_gt_matcher, imsize=IMSIZE, coarse_only=True)
rng = np.random.default_rng(0)  # same noise for the refined run
refined, scores = refine_matches(im1, im2, net, noisy_gt_matcher, io_thres=0.0, imsize=IMSIZE)
e0, e1 = reprojection_errors(noisy, H), reprojection_errors(refined, H)
print(f"{len(noisy)} matches: median error {np.median(e0):.2f} px -> {np.median(e1):.2f} px "
      f"after refinement" + ("" if trained else " (untrained model)"))
for tag, m, e in (("input", noisy, e0), ("refined", refined, e1)):
    fig = plot_matches(im1, im2, m, lines=False, radius=3, dpi=100,
                       colors=colors_from_values(e, 0.0, MAX_ERR, "RdYlGn", reverse=True),
                       title=f"{tag}: median error {np.median(e):.2f} px")
    show(fig, f"refine_{tag}")"""


def build() -> nbformat.NotebookNode:
    """The notebook, without outputs."""
    nb = new_notebook()
    nb.cells = [
        new_markdown_cell(INTRO),
        new_code_cell(SETTINGS),
        new_code_cell(SETUP),
        new_code_cell(IMPORTS),
        new_markdown_cell(MODEL_MD),
        new_code_cell(MODEL),
        new_markdown_cell(PAIRS_MD),
        new_code_cell(PAIRS),
        new_markdown_cell(NCN_MD),
        new_code_cell(NCN),
        new_markdown_cell(REFINE_MD),
        new_code_cell(REFINE),
    ]
    nb.metadata["kernelspec"] = {
        "name": "patch2pix",
        "display_name": "Patch2Pix (.venv)",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def _main(argv: Sequence[str] | None = None) -> None:
    make_parser(
        "examples.make_notebook", f"Write {NOTEBOOK.name} (outputs cleared) next to this file."
    ).parse_args(argv)
    nb = build()
    nbformat.validate(nb)
    nbformat.write(nb, NOTEBOOK)
    print(f"wrote {NOTEBOOK}")


def main(argv: Sequence[str] | None = None) -> int:
    """Write the notebook next to this file."""
    return run_command("examples.make_notebook", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
