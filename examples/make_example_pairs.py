"""Generate the example image pairs shipped in ``examples/images/``.

    python -m examples.make_example_pairs [--out examples/images]

Each pair is a scikit-image photograph (image 1) and a view of it through a known
homography with a moderate viewpoint change and a photometric change (image 2, on a
canvas of a different size and aspect ratio, so that per-image rescaling is exercised).
Written per pair ``<name>_1.jpg``, ``<name>_2.jpg`` and the ground truth ``<name>_H.txt``
/ ``<name>_H.npy``: the 3x3 homography mapping pixels (x, y) of image 1 to image 2,
``x2 ~ H @ (x1, y1, 1)``. Deterministic (fixed seeds); total size about 150 KB.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from utils.common.cli import UsageError, make_parser, run_command
from utils.common.setup_helper import save_npy_atomic, write_atomic
from utils.eval.make_hpatches_synthetic import load_photo, photometric, random_homography

HERE = Path(__file__).resolve().parent
MODULE = "examples.make_example_pairs"


@dataclass(frozen=True)
class PairSpec:
    """How one example pair is made."""

    name: str  # scikit-image photograph
    max_side: int  # longer side of image 1
    out_size: tuple[int, int]  # (width, height) of image 2
    shift: float  # corner perturbation (fraction of the size)
    angle: float  # maximal in-plane rotation (degrees)
    zoom: float  # scale of image 2 relative to image 1 (about the centre)
    light: float  # photometric change strength
    seed: int


PAIRS: tuple[PairSpec, ...] = (
    PairSpec("astronaut", 384, (352, 320), 0.08, 12.0, 0.85, 0.5, 11),
    PairSpec("coffee", 400, (400, 300), 0.10, 8.0, 1.05, 0.8, 12),
    PairSpec("chelsea", 384, (320, 288), 0.06, 15.0, 0.8, 0.3, 13),
)


def make_pair(spec: PairSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build one pair.

    Returns:
        im1 (H1, W1, 3) uint8, im2 (H2, W2, 3) uint8 and H (3, 3) float64 from image 1
        to image 2.
    """
    rng = np.random.default_rng(spec.seed)
    im1 = load_photo(spec.name, spec.max_side)
    h1, w1 = im1.shape[:2]
    w2, h2 = spec.out_size
    H = random_homography(w1, h1, rng, spec.shift, spec.angle, (1.0, 1.0))
    # centre image 1's warped centre in image 2 and apply the zoom
    c = H @ np.array([(w1 - 1) / 2.0, (h1 - 1) / 2.0, 1.0])
    c = c[:2] / c[2]
    move = np.array(
        [
            [spec.zoom, 0.0, (w2 - 1) / 2.0 - spec.zoom * c[0]],
            [0.0, spec.zoom, (h2 - 1) / 2.0 - spec.zoom * c[1]],
            [0.0, 0.0, 1.0],
        ]
    )
    H = move @ H
    H = H / H[2, 2]
    im2 = cv2.warpPerspective(
        im1, H, (w2, h2), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return im1, photometric(im2, rng, spec.light), H


def write_pairs(
    out: str | os.PathLike, pairs: Sequence[PairSpec] = PAIRS, quality: int = 85
) -> list[tuple[Path, Path, Path]]:
    """Write every pair (JPEG images, H as .txt and .npy) into `out`.

    Returns:
        (im1_path, im2_path, H_txt_path) per pair.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in pairs:
        im1, im2, H = make_pair(spec)
        p1, p2 = root / f"{spec.name}_1.jpg", root / f"{spec.name}_2.jpg"
        for path, im in ((p1, im1), (p2, im2)):
            write_atomic(
                path, lambda f, im=im: Image.fromarray(im).save(f, format="JPEG", quality=quality)
            )
        ht = root / f"{spec.name}_H.txt"
        text = io.StringIO()
        np.savetxt(text, H, fmt="%.12g")
        data = text.getvalue().encode()
        write_atomic(ht, lambda f, data=data: f.write(data))
        save_npy_atomic(H, root / f"{spec.name}_H.npy")
        written.append((p1, p2, ht))
    return written


def list_pairs(root: str | os.PathLike = HERE / "images") -> list[tuple[Path, Path, Path | None]]:
    """The example pairs found in `root`: (im1, im2, H .txt file or None), sorted by name."""
    rootp = Path(root)
    out = []
    for p1 in sorted(rootp.glob("*_1.jpg")):
        stem = p1.name[: -len("_1.jpg")]
        p2 = rootp / f"{stem}_2.jpg"
        if p2.exists():
            ht = rootp / f"{stem}_H.txt"
            out.append((p1, p2, ht if ht.exists() else None))
    return out


def _main(argv: Sequence[str] | None = None) -> None:
    ap = make_parser(MODULE, "Write the example pairs with ground-truth H.")
    ap.add_argument("--out", default=str(HERE / "images"), help="output folder")
    ap.add_argument("--quality", type=int, default=85, help="JPEG quality (1-100)")
    args = ap.parse_args(argv)
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be in 1..100, got {args.quality}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    for p1, p2, ht in write_pairs(args.out, quality=args.quality):
        print(f"{p1}  {p2}  {ht}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m examples.make_example_pairs``; returns the exit code."""
    return run_command(MODULE, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
