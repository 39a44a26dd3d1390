"""Overlapping image pairs of the PhotoTourism validation scenes (docs/file-formats.md §4).

For every scene ``<data_root>/<scene>/dense`` with a COLMAP model in ``dense/sparse``, writes
``dense/sparse/ov_pairs.npy``: a numpy-saved dict ``{overlap: [(name_a, name_b), ...]}`` for
the overlaps 0.1 0.2 0.3 0.4 0.5, where

    overlap(a, b) = |3D points observed in both a and b| / max(|points of a|, |points of b|)

("points of a" = the distinct 3D points that image a observes), each list holding the
unordered pairs with ``ov ≤ overlap < 1`` as ``(max(name), min(name))``, in image-id order.
A file that already holds every requested overlap is reused (``--overwrite`` recomputes).

Usage::

    python -m data_pairs.precompute_immatch_val_ovs --data_root data/immatch_benchmark/val_dense
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy import sparse

from utils.colmap.read_model import Image, read_images
from utils.common.cli import UsageError, make_parser, run_command
from utils.common.safe_pickle import safe_load_npy
from utils.common.setup_helper import save_npy_atomic

__all__ = [
    "OVERLAPS",
    "OV_FILE",
    "pair_overlaps",
    "overlap_pairs",
    "load_ov_pairs",
    "precompute_scene_overlaps",
    "find_scenes",
    "main",
]

OVERLAPS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
OV_FILE = "ov_pairs.npy"


def pair_overlaps(images: dict[int, Image]) -> tuple[list[str], np.ndarray]:
    """Overlap of every image pair of a COLMAP model.

    Args:
        images: {image_id: Image} as returned by ``utils.colmap.read_model``.
    Returns:
        names (n,) in image-id order and the symmetric (n, n) float64 matrix
        ``|shared points| / max(|points of a|, |points of b|)`` (0 on the diagonal and where
        an image has no 3D points).
    """
    ids = sorted(images)
    names = [images[i].name for i in ids]
    rows, cols = [], []
    for r, iid in enumerate(ids):
        pids = np.unique(np.asarray(images[iid].point3D_ids, dtype=np.int64))
        pids = pids[pids >= 0]
        rows.append(np.full(len(pids), r, np.int64))
        cols.append(pids)
    n = len(ids)
    if n == 0:
        return names, np.zeros((0, 0))
    row = np.concatenate(rows)
    col = np.concatenate(cols)
    _, col = np.unique(col, return_inverse=True)
    m = int(col.max()) + 1 if len(col) else 0
    inc = sparse.csr_matrix((np.ones(len(row)), (row, col)), shape=(n, m))
    shared = (inc @ inc.T).toarray()
    counts = np.diag(shared).copy()
    denom = np.maximum(counts[:, None], counts[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        ov = np.where(denom > 0, shared / np.where(denom > 0, denom, 1), 0.0)
    np.fill_diagonal(ov, 0.0)
    return names, ov


def overlap_pairs(
    names: Sequence[str], ov: np.ndarray, overlaps: Iterable[float] = OVERLAPS
) -> dict[float, list[tuple[str, str]]]:
    """{ov: [(max(name), min(name)), ...]} of the pairs a < b with ``ov ≤ overlap < 1``.

    Args:
        names: (n,) image names; ov: (n, n) symmetric overlap matrix (see pair_overlaps).
    """
    a_idx, b_idx = np.triu_indices(len(names), k=1)
    vals = ov[a_idx, b_idx] if len(names) else np.zeros(0)
    out: dict[float, list[tuple[str, str]]] = {}
    for thr in overlaps:
        sel = np.nonzero((vals >= thr) & (vals < 1))[0]
        out[float(thr)] = [
            (max(names[a_idx[k]], names[b_idx[k]]), min(names[a_idx[k]], names[b_idx[k]]))
            for k in sel
        ]
    return out


def load_ov_pairs(path: str | Path) -> dict[float, list[tuple[str, str]]]:
    """Load an ``ov_pairs.npy`` file (a pickled dict; nothing but data is accepted)."""
    return safe_load_npy(path)


def _why_not_reusable(path: Path, overlaps: Iterable[float]) -> str | None:
    """None when `path` holds every overlap level, else why it must be recomputed."""
    try:
        d = load_ov_pairs(path)
    except Exception as err:  # unreadable, truncated or refused (unsafe pickle) file
        first = (str(err).strip().splitlines() or [""])[0][:160]
        return f"was refused ({type(err).__name__}: {first})"
    if not isinstance(d, dict):
        return f"holds a {type(d).__name__}, not a dict of overlap levels"
    missing = [o for o in overlaps if o not in d]
    return f"lacks overlap levels {missing}" if missing else None


def precompute_scene_overlaps(
    scene_dir: str | Path,
    overlaps: Iterable[float] = OVERLAPS,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write (or reuse) ``<scene_dir>/sparse/ov_pairs.npy`` for one scene.

    Args:
        scene_dir: a scene's ``dense`` folder (holding ``sparse/``), or the scene folder
            above it.
    Returns:
        the path of the overlap file.
    """
    scene_dir = Path(scene_dir)
    if not (scene_dir / "sparse").is_dir() and (scene_dir / "dense" / "sparse").is_dir():
        scene_dir = scene_dir / "dense"
    sparse_dir = scene_dir / "sparse"
    target = sparse_dir / OV_FILE
    overlaps = [float(o) for o in overlaps]
    if not overwrite and target.is_file():
        why = _why_not_reusable(target, overlaps)
        if why is None:
            log(f"{target}: exists and is complete, reused")
            return target
        log(f"{target}: exists but {why}; recomputing it")
    names, ov = pair_overlaps(read_images(sparse_dir))
    pairs = overlap_pairs(names, ov, overlaps)
    save_npy_atomic(pairs, target)
    counts = ", ".join(f"{o}: {len(pairs[o])}" for o in overlaps)
    log(f"{target}: {len(names)} images, pairs per overlap {{{counts}}}")
    return target


def find_scenes(data_root: str | Path) -> list[Path]:
    """Sorted ``<data_root>/<scene>/dense`` folders that hold a ``sparse`` model folder."""
    root = Path(data_root)
    return sorted(p / "dense" for p in root.iterdir() if (p / "dense" / "sparse").is_dir())


PROG = "data_pairs.precompute_immatch_val_ovs"


def _main(argv: list[str] | None = None) -> int:
    p = make_parser(PROG, "Write dense/sparse/ov_pairs.npy for every validation scene.")
    p.add_argument(
        "--data_root",
        default="data/immatch_benchmark/val_dense",
        help="folder holding <scene>/dense/{images,sparse}",
    )
    p.add_argument("--scenes", nargs="*", default=None, help="only these scenes")
    p.add_argument("--overlaps", type=float, nargs="+", default=list(OVERLAPS))
    p.add_argument("--overwrite", action="store_true", help="recompute existing files")
    args = p.parse_args(argv)
    bad = [o for o in args.overlaps if not 0 < o < 1]
    if bad:
        p.error(f"--overlaps must lie in (0, 1), got {bad}")
    root = Path(args.data_root)
    if not root.is_dir():
        raise UsageError(f"--data_root {root}: folder not found")
    if args.scenes:
        scenes = [root / s / "dense" for s in args.scenes]
        missing = [str(s / "sparse") for s in scenes if not (s / "sparse").is_dir()]
        if missing:
            raise UsageError(f"--scenes: no COLMAP model folder {', '.join(missing)}")
    else:
        scenes = find_scenes(root)
    if not scenes:
        raise UsageError(f"--data_root {root}: no <scene>/dense/sparse folders under it")
    for sc in scenes:
        try:
            precompute_scene_overlaps(sc, args.overlaps, overwrite=args.overwrite)
        except (OSError, ValueError) as err:  # missing / unreadable COLMAP model
            raise UsageError(f"{sc / 'sparse'}: {' '.join(str(err).split())}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command; bad input gives one ``<prog>: error: ...`` line and exit code 2."""
    return run_command(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
