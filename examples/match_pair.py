"""Match one image pair with Patch2Pix and save the figure and the matches.

    python -m examples.match_pair IM1 IM2 --ckpt pretrained/patch2pix_pretrained.pth \\
        --out matches.png [--imsize 1024 --io_thres 0.5 --ksize 2 --H gt.txt]

Writes ``matches.png`` (the figure), ``matches.npz`` (``matches`` (N, 4), ``scores`` (N,),
``coarse`` (N, 4), image paths and sizes, and ``errors`` when ``--H`` is given) and
``matches.csv`` (one row ``x1,y1,x2,y2,score[,error]`` per match). All coordinates are in
ORIGINAL image pixels (x = column, y = row), whatever ``--imsize`` the network ran at.
With ``--H`` (a 3x3 homography from image 1 to image 2, .txt or .npy) the matches are
coloured by their reprojection error (green 0 px -> red >= 10 px) and MMA is printed.

From Python / a notebook, the library's matcher (``utils.eval.matcher``)::

    from utils.eval.matcher import Patch2PixMatcher
    matcher = Patch2PixMatcher("pretrained/patch2pix_pretrained.pth", imsize=1024)
    out = matcher("a.jpg", "b.jpg")  # keypoints0, keypoints1, scores, coarse

or this module's ``match_pair(net, "a.jpg", "b.jpg", imsize=512)``, which wraps it and adds
image sizes, saving and drawing (``res.matches``, ``res.scores``, ``res.coarse``).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import warnings
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from utils.common.cli import UsageError, make_parser, number, run_command

PROG = "examples.match_pair"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = REPO / "pretrained" / "patch2pix_pretrained.pth"
MAX_FIGURE_SIDE = 2048  # longer side (px) of each image in the figure; larger ones are scaled


@dataclass
class PairMatches:
    """Matches of one image pair, in original image pixels.

    Attributes:
        matches: (N, 4) float rows (x1, y1, x2, y2).
        scores: (N,) match probabilities (NCN scores for coarse-only matching).
        coarse: (N, 4) the coarse (patch-level) match each row was refined from.
        im1, im2: image paths.
        size1, size2: (width, height) of the original images.
    """

    matches: np.ndarray
    scores: np.ndarray
    coarse: np.ndarray
    im1: str
    im2: str
    size1: tuple[int, int]
    size2: tuple[int, int]

    def __len__(self) -> int:
        return len(self.matches)

    def errors(self, H: np.ndarray) -> np.ndarray:
        """(N,) reprojection errors (px in image 2) under the homography H: image 1 -> 2."""
        from utils.eval.hpatches import reprojection_errors

        return reprojection_errors(self.matches, H)

    def save(self, stem: str | os.PathLike, H: np.ndarray | None = None) -> tuple[Path, Path]:
        """Write ``<stem>.npz`` and ``<stem>.csv`` (with an error column when H is given)
        atomically as a set (both complete files, or neither).

        Returns:
            The two paths.
        Raises:
            WriteError (an OSError) naming the file that could not be written.
        """
        from utils.common.setup_helper import write_atomic_set

        npz, csv = write_atomic_set(self.writers(stem, H))
        return npz, csv

    def writers(self, stem: str | os.PathLike, H: np.ndarray | None = None) -> dict[Path, Any]:
        """``{<stem>.npz: write, <stem>.csv: write}`` for ``write_atomic_set``."""
        stem = Path(stem)
        extra: dict[str, Any] = {}
        cols = [self.matches, self.scores[:, None]]
        header = "x1,y1,x2,y2,score"
        if H is not None:
            err = self.errors(H)
            extra = {"errors": err, "H": np.asarray(H, dtype=np.float64)}
            cols.append(err[:, None])
            header += ",error"
        arrays = dict(
            matches=self.matches,
            scores=self.scores,
            coarse=self.coarse,
            im1=self.im1,
            im2=self.im2,
            size1=np.array(self.size1),
            size2=np.array(self.size2),
            **extra,
        )
        table = np.concatenate(cols, axis=1) if len(self) else np.zeros((0, 5 + (H is not None)))
        text = io.StringIO()
        np.savetxt(text, table, delimiter=",", header=header, comments="", fmt="%.4f")
        csv_bytes = text.getvalue().encode("utf-8")
        return {
            Path(f"{stem}.npz"): lambda f: np.savez(f, **arrays),
            Path(f"{stem}.csv"): lambda f: f.write(csv_bytes),
        }


def match_pair(
    net: Any,
    im1_path: str | os.PathLike,
    im2_path: str | os.PathLike,
    imsize: int | None = 1024,
    io_thres: float = 0.5,
    ksize: int = 2,
    ncn_thres: float = 0.0,
    mutual: bool = True,
    eval_type: str | None = None,
) -> PairMatches:
    """Match two image files with a loaded model (``utils.eval.model_helper.load_model``).

    Args:
        net: a Patch2Pix model; a coarse-only (NCNet) model gives coarse matches.
        im1_path, im2_path: image files.
        imsize: longer side the images are resized to for the network (None: native);
            the matches are mapped back to original pixels.
        io_thres: keep matches with a score above it (all when none pass).
        ksize: relocalisation kernel size.
        ncn_thres: coarse score threshold.
        mutual: keep only mutual coarse matches.
        eval_type: 'fine' | 'mid' | 'coarse'; default 'fine', or 'coarse' for a model
            without regressors (``net.has_regressors()`` is False).

    Returns:
        A :class:`PairMatches` in original image pixels.
    """
    from utils.datasets.preprocess import image_size
    from utils.eval.matcher import Patch2PixMatcher

    if eval_type is None:
        eval_type = "fine" if net.has_regressors() else "coarse"
    matcher = Patch2PixMatcher(
        net,
        imsize=imsize,
        io_thres=io_thres,
        ksize=ksize,
        eval_type=eval_type,
        ncn_thres=ncn_thres,
        mutual=mutual,
    )
    out = matcher(im1_path, im2_path)
    return PairMatches(
        np.concatenate([out["keypoints0"], out["keypoints1"]], axis=1),
        out["scores"],
        out["coarse"],
        str(im1_path),
        str(im2_path),
        image_size(im1_path),
        image_size(im2_path),
    )


def default_regressor_config() -> Namespace:
    """The regressor configuration of the released Patch2Pix models (matching: panc 1),
    as the original's Namespace (`networks.config.RegressorConfig`'s defaults)."""
    from networks.config import RegressorConfig

    return RegressorConfig().to_namespace()


def init_untrained_model(device: Any = None, regressor_config: Namespace | None = None) -> Any:
    """A freshly initialised Patch2Pix (ImageNet backbone when cached locally), eval mode.

    Its refinement is untrained: matches are for exercising the pipeline only.
    """
    from networks.patch2pix import Patch2Pix
    from utils.eval.model_helper import default_device

    warnings.warn(
        "no checkpoint: using an UNTRAINED Patch2Pix (random regressors); its matches are "
        "not meaningful",
        stacklevel=2,
    )
    config = Namespace(
        training=False,
        device=device if device is not None else default_device(),
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=regressor_config or default_regressor_config(),
        regr_batch=1200,
        weights_dict=None,
    )
    return Patch2Pix(config).eval()


def find_checkpoint(root: str | os.PathLike = REPO) -> Path | None:
    """``pretrained/patch2pix_pretrained.pth`` if present, else the newest ``output/**/*.pth``."""
    rootp = Path(root)
    pre = rootp / "pretrained" / "patch2pix_pretrained.pth"
    if pre.is_file():
        return pre
    found = sorted(
        (p for p in (rootp / "output").rglob("*.pth") if p.is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    return found[-1] if found else None


def load_homography(path: str | os.PathLike) -> np.ndarray:
    """A 3x3 homography from a .npy file or a whitespace-separated text file."""
    p = Path(path)
    H = np.load(p) if p.suffix == ".npy" else np.loadtxt(p)
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (3, 3):
        raise ValueError(f"{p}: expected a 3x3 homography, got shape {H.shape}")
    from utils.eval.hpatches import check_homography

    check_homography(H, str(p))
    return H


def draw(
    res: PairMatches,
    H: np.ndarray | None = None,
    Npts: int | None = None,  # name as in plot_matches
    lines: bool = True,
    max_error: float = 10.0,
    sav_fig: str | os.PathLike | bool = False,
    dpi: float = 100,
    title: str | None = None,
    max_side: int | None = MAX_FIGURE_SIDE,
) -> Any:
    """Plot the matches on the two images (coloured by error when H is given).

    Images whose longer side exceeds `max_side` are drawn downscaled to it (the matches
    scaled with them), so that the figure stays bounded for very large images (a
    10000x10000 photo would otherwise make a 6.9 GB canvas); None draws at full size.

    Returns:
        The matplotlib Figure.
    """
    from utils.common.plotting import colors_from_values, plot_matches
    from utils.datasets.preprocess import open_image

    colors = None
    if H is not None and len(res):
        colors = colors_from_values(res.errors(H), 0.0, max_error, "RdYlGn", reverse=True)
    ims: list[Any] = [res.im1, res.im2]
    matches = np.array(res.matches, dtype=np.float64, copy=True).reshape(-1, 4)
    if max_side is not None:
        for k in (0, 1):
            im = open_image(ims[k])
            w, h = im.size
            if max(w, h) > max_side:
                im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
                matches[:, 2 * k] *= im.size[0] / w
                matches[:, 2 * k + 1] *= im.size[1] / h
            ims[k] = im
    return plot_matches(
        ims[0],
        ims[1],
        matches,
        Npts=Npts,
        lines=lines,
        radius=3,
        dpi=dpi,
        sav_fig=sav_fig,
        colors=colors,
        title=title,
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line options."""
    ap = make_parser(PROG, "Match an image pair with Patch2Pix.")
    ap.add_argument("im1", help="first image")
    ap.add_argument("im2", help="second image")
    ap.add_argument("--ckpt", default=str(DEFAULT_CKPT), help="checkpoint (.pth)")
    ap.add_argument(
        "--method",
        choices=["patch2pix", "nc"],
        default="patch2pix",
        help="'nc': NCNet weights, coarse matches only",
    )
    ap.add_argument("--out", default="matches.png", help="figure path; .npz/.csv beside it")
    ap.add_argument(
        "--imsize", type=number(int), default=1024, help="network longer side (<=0: native)"
    )
    ap.add_argument(
        "--io_thres", type=number(float, 0, 1), default=0.5, help="match score threshold"
    )
    ap.add_argument(
        "--ksize", type=number(int, 1, 16), default=2, help="relocalisation kernel size"
    )
    ap.add_argument(
        "--ncn_thres", type=number(float, 0, 1), default=0.0, help="coarse score threshold"
    )
    ap.add_argument(
        "--eval_type",
        choices=["fine", "mid", "coarse"],
        default=None,
        help="default: 'coarse' with --method nc (no regressors), else 'fine'",
    )
    ap.add_argument("--H", default=None, help="ground-truth homography 1->2 (.txt / .npy)")
    ap.add_argument(
        "--Npts", type=number(int, 1), default=None, help="draw at most this many matches"
    )
    ap.add_argument("--points", action="store_true", help="draw points instead of lines")
    ap.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda if any)")
    return ap


def _check_inputs(ap: argparse.ArgumentParser, args: argparse.Namespace) -> np.ndarray | None:
    """Every check that needs no model, so that bad input fails before any work.

    Returns:
        the homography of ``--H`` (or None).
    Raises:
        UsageError naming the argument and the file.
    """
    import torch
    from matplotlib.figure import Figure

    from utils.datasets.preprocess import open_image

    if args.ksize < 1:
        ap.error(f"--ksize must be >= 1, got {args.ksize}")
    if args.method == "nc" and args.eval_type in ("fine", "mid"):
        ap.error(
            f"--eval_type {args.eval_type} needs the regressors, but --method nc loads "
            "NCNet weights, which have no regressors: use --eval_type coarse"
        )
    for flag, path in (("im1", args.im1), ("im2", args.im2)):
        try:
            open_image(path).close()  # decodes it all: a truncated file fails here
        except (OSError, ValueError) as e:
            raise UsageError(f"{flag}: {e}") from None
    H = None
    if args.H:
        try:
            H = load_homography(args.H)
        except (OSError, ValueError) as e:
            raise UsageError(f"--H {args.H}: {' '.join(str(e).split())}") from None
    out = Path(args.out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in Figure().canvas.get_supported_filetypes():
        raise UsageError(
            f"--out {out}: '{out.suffix}' is not an image format matplotlib "
            "writes (use e.g. .png, .pdf, .svg)"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create its folder: {e.strerror or e}") from None
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"--out {out}: the folder {out.parent} is not writable")
    stem = out.parent / out.stem
    for p in (out, Path(f"{stem}.npz"), Path(f"{stem}.csv")):
        if p.is_dir():
            raise UsageError(f"--out {out}: {p} is a folder")
    if args.device:
        try:
            dev = torch.device(args.device)
        except (RuntimeError, ValueError):
            raise UsageError(
                f"--device {args.device}: not a device (use cpu, cuda or cuda:N)"
            ) from None
        if dev.type not in ("cpu", "cuda"):
            raise UsageError(f"--device {args.device}: only cpu and cuda devices are supported")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
        if dev.type == "cuda" and dev.index is not None:
            if dev.index >= torch.cuda.device_count():
                raise UsageError(
                    f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)"
                )
    return H


def run(argv: Sequence[str] | None = None) -> PairMatches:
    """The command's work: match, draw and save; returns the matches.

    Raises:
        UsageError (CheckpointError, NoRegressorsError, WriteError included) for bad input
        or an output that cannot be written; nothing is written then. The figure, ``.npz``
        and ``.csv`` are written atomically as one set: all three, or none of them.
    """
    from utils.common.setup_helper import write_atomic_set
    from utils.eval.model_helper import load_model

    ap = build_parser()
    args = ap.parse_args(argv)
    H = _check_inputs(ap, args)
    net = load_model(args.ckpt, method=args.method, device=args.device)
    eval_type = args.eval_type or ("coarse" if args.method == "nc" else "fine")
    res = match_pair(
        net,
        args.im1,
        args.im2,
        imsize=args.imsize if args.imsize > 0 else None,
        io_thres=args.io_thres,
        ksize=args.ksize,
        ncn_thres=args.ncn_thres,
        eval_type=eval_type,
    )
    out = Path(args.out)
    fig = draw(res, H, args.Npts, not args.points, title=f"{len(res)} matches")
    png = io.BytesIO()
    fig.savefig(png, format=out.suffix.lstrip(".").lower(), dpi=fig.dpi)
    writers = res.writers(out.parent / out.stem, H)
    writers[out] = lambda f: f.write(png.getvalue())
    npz, csv, _ = write_atomic_set(writers)
    print(f"{len(res)} matches; figure {out}, matches {npz} and {csv} (original pixels)")
    if H is not None and len(res):
        err = res.errors(H)
        print("MMA@1/3/5/10px: " + " ".join(f"{np.mean(err <= t):.3f}" for t in (1, 3, 5, 10)))
    return res


def _main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.match_pair``; bad input gives one
    ``examples.match_pair: error: ...`` line and exit code 2."""
    return run_command(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
