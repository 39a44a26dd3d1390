"""Write a small synthetic data set in the HPatches sequences layout.

    python -m utils.eval.make_hpatches_synthetic --out data/hpatches-synthetic [--n_seqs 2]

Each sequence takes one photograph bundled with scikit-image as image 1 and warps it by
known random homographies (``cv2.warpPerspective``) into images 2..6:
- ``v_*`` (viewpoint): strong perspective changes (corners moved by up to `--v_shift` of the
  image size, plus a random rotation / scale), mild photometric jitter;
- ``i_*`` (illumination): nearly-identity homographies (corners moved by up to `--i_shift`)
  and strong photometric changes (gamma, gain, per-channel colour cast, noise).
Images are binary PPM (``1.ppm`` .. ``6.ppm``) and ``H_1_k`` holds the 3x3 homography from
image 1 to image k as whitespace-separated text, as in ``hpatches-sequences-release``; the
output folder can be given to ``utils.eval.eval_hpatches --root``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from utils.common.cli import UsageError, make_parser, run_command
from utils.eval.hpatches import write_homography

PROG = "utils.eval.make_hpatches_synthetic"

PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
)


def load_photo(name: str, max_side: int | None = None) -> np.ndarray:
    """A scikit-image sample photograph as (H, W, 3) uint8 RGB, optionally downscaled.

    Args:
        name: a ``skimage.data`` function name (e.g. 'astronaut').
        max_side: downscale (area interpolation) so that the longer side is at most this.
    """
    from skimage import data

    im = np.asarray(getattr(data, name)())
    if im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=2)
    im = np.ascontiguousarray(im[..., :3]).astype(np.uint8)
    if max_side is not None and max(im.shape[:2]) > max_side:
        s = max_side / max(im.shape[:2])
        size = (max(1, round(im.shape[1] * s)), max(1, round(im.shape[0] * s)))
        im = cv2.resize(im, size, interpolation=cv2.INTER_AREA)
    return im


def random_homography(
    width: int,
    height: int,
    rng: np.random.Generator,
    shift: float,
    max_angle_deg: float = 0.0,
    scale_range: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """A random homography that keeps most of a width x height image in view.

    The image is rotated by up to `max_angle_deg` and scaled about its centre, then each
    corner is moved independently by up to `shift` x the image size (perspective).

    Returns:
        (3, 3) float64 H mapping image-1 pixels to the warped image, H[2, 2] = 1.
    """
    src = np.array(
        [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=np.float64
    )
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    ang = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg))
    sc = rng.uniform(*scale_range)
    rot = sc * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = (src - centre) @ rot.T + centre
    dst = dst + rng.uniform(-shift, shift, size=(4, 2)) * np.array([width, height])
    H = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))
    H = np.asarray(H, dtype=np.float64)
    return H / H[2, 2]


def photometric(im: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random gamma / gain / colour cast / noise; strength 0 = unchanged, 1 = strong.

    Args:
        im: (H, W, 3) uint8 RGB.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if strength <= 0:
        return im.copy()
    x = im.astype(np.float64) / 255.0
    gamma = np.exp(rng.uniform(-0.7, 0.7) * strength)
    gain = np.exp(rng.uniform(-0.6, 0.4) * strength)
    cast = 1.0 + rng.uniform(-0.25, 0.25, size=3) * strength
    x = np.clip(x, 0.0, 1.0) ** gamma * gain * cast
    x = x + rng.normal(0.0, 0.01 * strength, size=x.shape)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_ppm(path: str | os.PathLike, im: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image as binary PPM (P6)."""
    if not cv2.imwrite(os.fspath(path), cv2.cvtColor(im, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def make_sequence(
    seq_dir: Path,
    im1: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    v_shift: float = 0.15,
    i_shift: float = 0.01,
) -> list[np.ndarray]:
    """Write one sequence (images 1..6 and H_1_2..H_1_6) into `seq_dir`.

    Args:
        seq_dir: the sequence folder (created).
        im1: (H, W, 3) uint8 RGB reference image.
        kind: 'i' (illumination) or 'v' (viewpoint).
        rng: random generator.
        v_shift, i_shift: maximal corner displacement (fraction of the image size).

    Returns:
        The 5 homographies H_1_k, k = 2..6, each (3, 3).
    """
    if kind not in ("i", "v"):
        raise ValueError(f"kind must be 'i' or 'v', got {kind!r}")
    seq_dir.mkdir(parents=True, exist_ok=True)
    h, w = im1.shape[:2]
    write_ppm(seq_dir / "1.ppm", im1)
    hs = []
    for k in range(2, 7):
        if kind == "v":
            # increasing difficulty along the sequence, as in HPatches
            f = 0.4 + 0.6 * (k - 2) / 4.0
            H = random_homography(w, h, rng, v_shift * f, 15.0 * f, (1.0 - 0.2 * f, 1.0 + 0.1 * f))
            strength = 0.15
        else:
            H = random_homography(w, h, rng, i_shift)
            strength = 1.0
        warped = cv2.warpPerspective(
            im1, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        write_ppm(seq_dir / f"{k}.ppm", photometric(warped, rng, strength))
        write_homography(seq_dir / f"H_1_{k}", H)
        hs.append(H)
    return hs


def make_synthetic_hpatches(
    out: str | os.PathLike,
    n_seqs: int = 2,
    seed: int = 0,
    max_side: int | None = 640,
    photos: Sequence[str] = PHOTOS,
) -> list[Path]:
    """Write `n_seqs` illumination and `n_seqs` viewpoint sequences under `out`.

    Args:
        out: output root (created).
        n_seqs: number of sequences of each kind.
        seed: random seed (same seed, same data).
        max_side: downscale the photographs to this longer side (None: native size).
        photos: scikit-image photograph names, used in turn.

    Returns:
        The sequence folders, sorted. Each is written into a hidden temporary folder and
        renamed into place when complete, so a failure leaves no half-written sequence.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    seqs = []
    for kind in ("i", "v"):
        for s in range(n_seqs):
            name = photos[(s + (0 if kind == "i" else n_seqs)) % len(photos)]
            seq = root / f"{kind}_synth{s:02d}_{name}"
            tmp = root / f".{seq.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                make_sequence(tmp, load_photo(name, max_side), kind, rng)
                if seq.exists():
                    shutil.rmtree(seq)
                tmp.rename(seq)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            seqs.append(seq)
    return sorted(seqs)


def _main(argv: Sequence[str] | None = None) -> int:
    ap = make_parser(PROG, __doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/hpatches-synthetic", help="output folder")
    ap.add_argument("--n_seqs", type=int, default=2, help="sequences of each kind (i_, v_)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max_side", type=int, default=640, help="longer image side (<=0: native)")
    args = ap.parse_args(argv)
    if args.n_seqs < 1:
        ap.error(f"--n_seqs must be >= 1, got {args.n_seqs}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    try:
        seqs = make_synthetic_hpatches(
            out, args.n_seqs, args.seed, args.max_side if args.max_side > 0 else None
        )
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write the data set: {e}") from None
    print(f"wrote {len(seqs)} sequences under {args.out}: " + ", ".join(p.name for p in seqs))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; bad input gives one ``<prog>: error:`` line, exit code 2."""
    return run_command(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
