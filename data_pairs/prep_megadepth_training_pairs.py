"""Training pairs from MegaDepth's D2Net scene_info files (docs/file-formats.md §2).

For every ``<base_dir>/scene_info/<scene>.<k>.npz`` in sorted order (scene = the part of the
file name before the first dot), skipping the scenes of `exclude_tag`:

1. valid pairs: ordered pairs (a, b) with ``min_overlap_ratio ≤ overlap_matrix[a, b] < 1``
   (scale ratio unconstrained), visited in an order shuffled by one numpy RandomState(seed)
   that is shared by all scene files of the run;
2. image size from K (``w, h = 2·cx, 2·cy``): both images landscape (``w ≥ h``) and both
   admitting ``crop_from_bottom_right(w, h, im_target_ratio)``;
3. relative pose ``R12 = R2 R1ᵀ``, ``t12 = R2 (c1 − c2)``, stored as the quaternion ``q``
   (w, x, y, z) and ``R`` = the matrix of q;
4. ``F = pose2fund(K1, K2, R, t)``; the pair is rejected when the mean Sampson distance of
   the two images' observations of their shared 3D points exceeds `sampson_thres` (1 px²);
5. at most `max_scene_pairs` pairs per scene (the files of one scene share the budget and
   its entry).

Output ``<save_dir>/megadepth_pairs.ov{ov}_imrat{rat}.pair{max}.{exclude_tag}.npy``: a
numpy-saved dict ``{scene: {'ims': [Namespace(name, crop)], 'pairs': [Namespace(im1, im2,
overlap, K1, K2, t, q, R, crop1, crop2)]}}`` with image names relative to
``MegaDepth_undistort`` without the ``Undistorted_SfM/`` prefix (e.g.
``0000/images/123.jpg``); crops are (dw, dh) ints. Plain numpy reads it with
``np.load(path, allow_pickle=True).item()``; this project loads it (and the scene_info files)
with :mod:`utils.common.safe_pickle`, which refuses anything but data (docs/file-formats.md §6).

Usage::

    python -m data_pairs.prep_megadepth_training_pairs --base_dir data/MegaDepth_undistort \\
        --save_dir data_pairs [--min_overlap_ratio 0.35 --im_target_ratio 1.5 \\
        --max_scene_pairs 500 --exclude_tag excl_test --seed 0]
"""

from __future__ import annotations

import argparse
import sys
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_pairs import pair_selection
from data_pairs.pair_selection import SCENE_TABLE_KEYS, add_pair_images
from utils.common.cli import UsageError, make_parser, number, run_command
from utils.common.data_layout import SFM_PREFIX
from utils.common.safe_pickle import NpyFileError, safe_load_npy, safe_load_npz
from utils.common.setup_helper import save_npy_atomic

__all__ = [
    "EXCLUDED_SCENES",
    "pair_file_name",
    "strip_sfm_prefix",
    "load_scene_info",
    "scene_name_of",
    "scene_pairs",
    "generate_pairs",
    "load_pairs",
    "save_pairs",
    "main",
]

_EXCL_TEST = ("0024", "0021", "0025", "1589", "0019", "0008", "0032", "0063")
EXCLUDED_SCENES: dict[str, tuple[str, ...]] = {
    "excl_test": _EXCL_TEST,
    "excl_all": _EXCL_TEST + ("0015", "0022"),
    "none": (),
}


def pair_file_name(
    min_overlap_ratio: float, im_target_ratio: float, max_scene_pairs: int, exclude_tag: str
) -> str:
    """``megadepth_pairs.ov{ov}_imrat{rat}.pair{max}.{tag}.npy`` (numbers as Python prints)."""
    return (
        f"megadepth_pairs.ov{min_overlap_ratio}_imrat{im_target_ratio}"
        f".pair{max_scene_pairs}.{exclude_tag}.npy"
    )


def strip_sfm_prefix(path: str) -> str:
    """'Undistorted_SfM/0000/images/1.jpg' → '0000/images/1.jpg' (other paths unchanged)."""
    path, prefix = str(path), f"{SFM_PREFIX}/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def scene_name_of(scene_file: str | Path) -> str:
    """Scene name of a scene_info file: the part of its file name before the first dot."""
    return Path(scene_file).name.split(".")[0]


def load_scene_info(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of a D2Net scene_info npz; its pickled object arrays may hold only data."""
    return safe_load_npz(path)


def scene_pairs(
    info: dict[str, np.ndarray],
    rng: np.random.RandomState,
    min_overlap_ratio: float = 0.35,
    im_target_ratio: float = 1.5,
    max_pairs: int = 500,
    sampson_thres: float = 1.0,
    stats: dict[str, int] | None = None,
) -> list[Namespace]:
    """Selected pairs of one scene_info file (the rules of :mod:`data_pairs.pair_selection`,
    image sizes from K, names without the ``Undistorted_SfM/`` prefix).

    Args:
        info: the npz arrays (see load_scene_info); rng: shuffles the valid pairs.
        max_pairs: stop after this many kept pairs (≤ 0: keep none).
        stats: optional dict that receives counts 'valid', 'size', 'sampson', 'kept'.
    Returns:
        the kept pair Namespaces, in visiting order.
    """
    table = {k: info[k] for k in SCENE_TABLE_KEYS}  # no 'image_sizes': (w, h) = (2cx, 2cy)
    return pair_selection.scene_pairs(
        table,
        rng,
        min_overlap_ratio,
        im_target_ratio,
        max_pairs,
        sampson_thres,
        stats,
        name_of=strip_sfm_prefix,
    )


def generate_pairs(
    base_dir: str | Path,
    min_overlap_ratio: float = 0.35,
    im_target_ratio: float = 1.5,
    max_scene_pairs: int = 500,
    exclude_tag: str = "excl_test",
    seed: int = 0,
    sampson_thres: float = 1.0,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, list[Namespace]]]:
    """Pairs of every scene under ``<base_dir>/scene_info`` (see the module docstring).

    Returns:
        {scene: {'ims': [Namespace(name, crop)], 'pairs': [Namespace(...)]}}; scenes with no
        kept pair are left out.
    """
    if exclude_tag not in EXCLUDED_SCENES:
        raise ValueError(f"unknown exclude_tag {exclude_tag!r}: use {sorted(EXCLUDED_SCENES)}")
    info_dir = Path(base_dir) / "scene_info"
    if not info_dir.is_dir():
        raise FileNotFoundError(f"scene_info folder not found: {info_dir}")
    files = sorted(info_dir.glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no scene_info/*.npz files in {info_dir}")
    excluded = set(EXCLUDED_SCENES[exclude_tag])
    rng = np.random.RandomState(seed)
    out: dict[str, dict[str, list[Namespace]]] = {}
    for f in files:
        scene = scene_name_of(f)
        if scene in excluded:
            log(f"{f.name}: scene {scene} excluded ({exclude_tag})")
            continue
        entry = out.setdefault(scene, {"ims": [], "pairs": []})
        budget = max_scene_pairs - len(entry["pairs"])
        stats: dict[str, int] = {}
        info = load_scene_info(f)
        missing = [k for k in SCENE_TABLE_KEYS if k not in info]
        if missing:
            raise NpyFileError(f"{f} is not a D2Net scene_info file: no {', '.join(missing)}")
        try:
            pairs = scene_pairs(
                info, rng, min_overlap_ratio, im_target_ratio, budget, sampson_thres, stats
            )
        except pair_selection.SceneDataError as e:
            raise pair_selection.SceneDataError(f"{f}: {e}") from None
        add_pair_images(entry, pairs)
        log(
            f"{f.name}: {stats['valid']} valid pairs, rejected {stats['size']} by size/crop "
            f"and {stats['sampson']} by Sampson distance, kept {stats['kept']}"
        )
    return {k: v for k, v in out.items() if v["pairs"]}


def load_pairs(path: str | Path) -> dict[str, dict[str, list[Namespace]]]:
    """Load a pair file (pickled argparse.Namespace objects; nothing but data is accepted)."""
    return safe_load_npy(path)


def save_pairs(pairs: dict, path: str | Path) -> Path:
    """numpy-save the pair dict to `path` atomically (temporary file, then rename)."""
    return save_npy_atomic(pairs, path)


PROG = "data_pairs.prep_megadepth_training_pairs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = make_parser(PROG, "Generate MegaDepth training pairs from D2Net scene_info files.")
    p.add_argument(
        "--base_dir",
        default="data/MegaDepth_undistort",
        help="MegaDepth_undistort folder holding scene_info/",
    )
    p.add_argument("--save_dir", default="data_pairs", help="where to write the pair file")
    p.add_argument("--min_overlap_ratio", type=number(float, 0, 1), default=0.35)
    p.add_argument("--im_target_ratio", type=float, default=1.5)
    p.add_argument("--max_scene_pairs", type=int, default=500)
    p.add_argument("--exclude_tag", default="excl_test", choices=sorted(EXCLUDED_SCENES))
    p.add_argument(
        "--sampson_thres",
        type=float,
        default=1.0,
        help="largest mean Sampson distance (px²) of a kept pair",
    )
    p.add_argument(
        "--seed", type=number(int, 0, 2**32 - 1), default=0, help="seed of the pair shuffling"
    )
    args = p.parse_args(argv)
    if args.max_scene_pairs < 1:
        p.error(f"--max_scene_pairs must be >= 1, got {args.max_scene_pairs}")
    return args


def _main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.base_dir).is_dir():
        raise UsageError(f"--base_dir {args.base_dir}: folder not found")
    if Path(args.save_dir).exists() and not Path(args.save_dir).is_dir():
        raise UsageError(f"--save_dir {args.save_dir}: exists and is not a folder")
    try:
        pairs = generate_pairs(
            args.base_dir,
            args.min_overlap_ratio,
            args.im_target_ratio,
            args.max_scene_pairs,
            args.exclude_tag,
            args.seed,
            args.sampson_thres,
        )
    except FileNotFoundError as err:
        raise UsageError(f"--base_dir {args.base_dir}: {err}") from None
    if not pairs:
        raise UsageError(
            f"--base_dir {args.base_dir}: no pair of any scene passed the selection "
            f"(overlap >= --min_overlap_ratio {args.min_overlap_ratio}, landscape images "
            f"near --im_target_ratio {args.im_target_ratio}, Sampson distance); nothing written"
        )
    name = pair_file_name(
        args.min_overlap_ratio, args.im_target_ratio, args.max_scene_pairs, args.exclude_tag
    )
    try:
        path = save_pairs(pairs, Path(args.save_dir) / name)
    except OSError as err:
        raise UsageError(f"--save_dir {args.save_dir}: cannot write {name}: {err}") from None
    n_pairs = sum(len(v["pairs"]) for v in pairs.values())
    print(f"wrote {path}: {len(pairs)} scenes, {n_pairs} pairs")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command; bad input gives one ``<prog>: error: ...`` line and exit code 2."""
    return run_command(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
