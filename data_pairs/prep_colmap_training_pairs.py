"""Training pairs from your own COLMAP reconstructions (the MegaDepth pair rules, §2).

Each reconstruction (a *scene*) is an undistorted COLMAP model — the ``sparse`` folder that
``colmap image_undistorter --output_type COLMAP`` writes, binary or text — and its folder of
undistorted images. For every scene:

1. the registered images, in image-id order; every camera must be a pinhole camera —
   PINHOLE, SIMPLE_PINHOLE, or a perspective model whose distortion parameters are all zero,
   which image_undistorter leaves unchanged (lens distortion or fisheye projection is refused
   with the ``colmap image_undistorter`` command to run first); every image must exist in
   the image folder with the size of its camera;
2. overlaps from shared 3D points, as D2Net's MegaDepth ``overlap_matrix``:
   ``overlap[a, b] = |3D points of a ∩ 3D points of b| / |3D points of a|`` (ordered pairs);
3. the selection of :mod:`data_pairs.pair_selection` (overlap range, landscape images with a
   bottom-right crop to ``--im_target_ratio``, relative pose, F, mean Sampson distance of the
   shared observations ≤ ``--sampson_thres``, at most ``--max_pairs``), visiting the valid
   pairs in an order shuffled by one ``RandomState(--seed)`` shared by the scenes in order.
   Image sizes are the cameras' width and height (``2·cx, 2·cy`` after image_undistorter).

Output ``--out``: the pair file of docs/file-formats.md §2 — ``{scene: {'ims': [Namespace(name,
crop)], 'pairs': [Namespace(im1, im2, overlap, K1, K2, t, q, R, crop1, crop2)]}}`` — with
one documented extension: each scene entry also holds ``'image_dir'``, the image folder that
its image names (COLMAP's names) are relative to. It is stored as an absolute path, or,
with ``--data_root DIR``, relative to DIR; the training loader joins a relative
``image_dir`` to its own ``--data_root``. Scenes without ``image_dir`` (MegaDepth pair
files) keep reading ``<data_root>/MegaDepth_undistort/<name>``.

Scenes are given by repeating ``--model M --images I`` (optionally ``--scene NAME`` once per
model; by default the name of the folder above ``sparse`` / ``dense`` / ``sparse/0``), or by
``--scenes_file FILE``: one scene per line, ``NAME MODEL_DIR IMAGE_DIR`` separated by
whitespace, ``#`` starting a comment, relative paths taken from the file's folder.

Usage::

    python -m data_pairs.prep_colmap_training_pairs --model work/castle/dense/sparse \\
        --images work/castle/dense/images --out data_pairs/my_pairs.npy \\
        [--min_overlap 0.35 --im_target_ratio 1.5 --max_pairs 500 --sampson_thres 1.0 \\
         --seed 0 --data_root DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from scipy import sparse

from data_pairs.pair_selection import add_pair_images, scene_pairs
from utils.colmap.read_model import Camera, Image, image_pose, pinhole_intrinsics, read_model
from utils.common.cli import UsageError, make_parser, run_command
from utils.common.setup_helper import save_npy_atomic

__all__ = [
    "PINHOLE_MODELS",
    "SceneInput",
    "directed_overlaps",
    "scene_table",
    "generate_colmap_pairs",
    "read_scenes_file",
    "default_scene_name",
    "check_pinhole",
    "main",
]

PROG = "data_pairs.prep_colmap_training_pairs"
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")
# Folder names that say nothing about the scene (skipped when naming a scene by its path).
_GENERIC_DIRS = {"sparse", "dense", "undistorted", "colmap", "model", "models", "reconstruction"}


@dataclass(frozen=True)
class SceneInput:
    """One reconstruction: scene name, COLMAP model folder, image folder."""

    name: str
    model: Path
    images: Path


# ----------------------------------------------------------------------------- geometry
def directed_overlaps(point_sets: Sequence[np.ndarray]) -> np.ndarray:
    """D2Net's overlap matrix from each image's observed 3D point ids.

    Args:
        point_sets: n arrays of 3D point ids (−1 = none; repeats are counted once).
    Returns:
        (n, n) float64: ``[a, b] = |S_a ∩ S_b| / |S_a|``; −1 on the diagonal and in the rows
        of images without 3D points.
    """
    n = len(point_sets)
    sets = [np.unique(np.asarray(s, dtype=np.int64)) for s in point_sets]
    sets = [s[s >= 0] for s in sets]
    ov = -np.ones((n, n), dtype=np.float64)
    if n == 0:
        return ov
    row = np.concatenate([np.full(len(s), i, np.int64) for i, s in enumerate(sets)])
    col = np.concatenate(sets)
    if len(col):
        _, col = np.unique(col, return_inverse=True)
        inc = sparse.csr_matrix((np.ones(len(row)), (row, col)), shape=(n, int(col.max()) + 1))
        shared = (inc @ inc.T).toarray()
        counts = np.array([len(s) for s in sets], dtype=np.float64)
        has = counts > 0
        ov[has] = shared[has] / counts[has, None]
    np.fill_diagonal(ov, -1.0)
    return ov


def check_pinhole(
    cameras: dict[int, Camera], images: dict[int, Image], model_dir: Path, image_dir: Path
) -> dict[int, np.ndarray]:
    """K of every camera of the registered images; refuses cameras that distort.

    Returns:
        {camera_id: (3, 3) K}.
    Raises:
        UsageError: one line naming the first camera with lens distortion (or a fisheye
            projection), its model and the ``colmap image_undistorter`` command to run.
    """
    used = sorted({im.camera_id for im in images.values()})
    Ks = {cid: pinhole_intrinsics(cameras[cid]) for cid in used}
    bad = [cid for cid in used if Ks[cid] is None]
    if bad:
        cid, model = bad[0], cameras[bad[0]].model
        params = " ".join(f"{v:g}" for v in cameras[cid].params)
        more = f" (and {len(bad) - 1} more cameras)" if len(bad) > 1 else ""
        raise UsageError(
            f"--model {model_dir}: camera {cid} has the model {model} with distortion "
            f"(params {params}){more}; training needs undistorted pinhole cameras "
            f"({' or '.join(PINHOLE_MODELS)}): run `colmap image_undistorter --image_path "
            f"{image_dir} --input_path {model_dir} --output_path OUT --output_type COLMAP` "
            "first and use --model OUT/sparse --images OUT/images"
        )
    for cid in used:
        K = Ks[cid]
        if not (np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0):
            params = " ".join(f"{v:g}" for v in cameras[cid].params)
            raise UsageError(
                f"--model {model_dir}: camera {cid} ({cameras[cid].model}, params {params}) "
                f"has focal length fx={K[0, 0]:g}, fy={K[1, 1]:g}; it must be positive and "
                "finite"
            )
    return {cid: K for cid, K in Ks.items() if K is not None}


def scene_table(model_dir: str | Path, image_dir: str | Path) -> dict:
    """Read one undistorted COLMAP model into the scene table of data_pairs.pair_selection.

    Returns:
        dict with ``overlap_matrix`` (n, n), ``image_paths`` (COLMAP names), ``intrinsics``
        (3, 3) each, ``poses`` (4, 4) world-to-camera each, ``points3D_id_to_2D``
        ({id: (x, y)} each), ``image_sizes`` ((w, h) of the cameras), images in id order.
    Raises:
        UsageError: unreadable / incomplete model, distorted cameras, missing images or
            images whose size is not their camera's.
    """
    model_dir, image_dir = Path(model_dir), Path(image_dir)
    if not image_dir.is_dir():
        raise UsageError(f"--images {image_dir}: folder not found")
    try:
        cameras, images, _ = read_model(model_dir)
    except (OSError, ValueError) as err:  # FileNotFoundError is an OSError
        raise UsageError(f"--model {model_dir}: {err}") from None
    if len(images) < 2:
        raise UsageError(
            f"--model {model_dir}: {len(images)} registered images; a scene needs at least 2"
        )
    Ks = check_pinhole(cameras, images, model_dir, image_dir)
    ids = sorted(images)
    table: dict[str, list] = {
        k: [] for k in ("image_paths", "intrinsics", "poses", "points3D_id_to_2D", "image_sizes")
    }
    for iid in ids:
        im = images[iid]
        cam = cameras[im.camera_id]
        path = image_dir / im.name
        try:
            with PILImage.open(path) as f:
                size = f.size
        except FileNotFoundError:
            raise UsageError(
                f"--images {image_dir}: image {im.name} of the model {model_dir} not found ({path})"
            ) from None
        except OSError as err:
            raise UsageError(f"--images {image_dir}: cannot read {path}: {err}") from None
        if size != (cam.width, cam.height):
            raise UsageError(
                f"--images {image_dir}: {im.name} is {size[0]}x{size[1]} but its camera in "
                f"{model_dir} is {cam.width}x{cam.height}; give the images that "
                "colmap image_undistorter wrote with this model"
            )
        R, t = image_pose(im)
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = R, t
        obs = np.asarray(im.point3D_ids) >= 0
        table["image_paths"].append(im.name)
        table["intrinsics"].append(Ks[im.camera_id])
        table["poses"].append(pose)
        table["points3D_id_to_2D"].append(
            {
                int(p): np.asarray(xy, dtype=np.float64)
                for p, xy in zip(np.asarray(im.point3D_ids)[obs], np.asarray(im.xys)[obs])
            }
        )
        table["image_sizes"].append((int(cam.width), int(cam.height)))
    table["overlap_matrix"] = directed_overlaps([images[i].point3D_ids for i in ids])
    return table


# ----------------------------------------------------------------------------- scenes
def default_scene_name(model_dir: str | Path) -> str:
    """The first folder name above the model that is not generic (``sparse``, ``dense``,
    ``0``, ...): ``work/castle/dense/sparse`` → ``castle``; '' when there is none."""
    for part in reversed(Path(os.path.abspath(model_dir)).parts[1:]):
        if part.lower() not in _GENERIC_DIRS and not part.isdigit():
            return part
    return ""


def read_scenes_file(path: str | Path) -> list[SceneInput]:
    """Scenes of a scenes file (``NAME MODEL_DIR IMAGE_DIR`` per line; see module docstring).

    Raises:
        UsageError: naming the file (and line) when it is missing or malformed.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--scenes_file {path}: cannot read it ({err})") from None
    scenes = []
    for no, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3:
            raise UsageError(
                f"--scenes_file {path}, line {no}: expected 'NAME MODEL_DIR "
                f"IMAGE_DIR', got {line.strip()!r}"
            )
        name, model, images = fields
        scenes.append(SceneInput(name, path.parent / model, path.parent / images))
    if not scenes:
        raise UsageError(f"--scenes_file {path}: no scenes in it")
    return scenes


def _scenes_from_args(args: argparse.Namespace) -> list[SceneInput]:
    models, image_dirs, names = args.model or [], args.images or [], args.scene or []
    if args.scenes_file:
        if models or image_dirs or names:
            raise UsageError(
                "--scenes_file replaces --model/--images/--scene: give one or the other"
            )
        scenes = read_scenes_file(args.scenes_file)
    else:
        if not models:
            raise UsageError("--model is required (or --scenes_file)")
        if len(image_dirs) != len(models):
            raise UsageError(
                f"--images must be given once per --model ({len(models)} models, "
                f"{len(image_dirs)} image folders)"
            )
        if names and len(names) != len(models):
            raise UsageError(
                f"--scene must be given once per --model or not at all "
                f"({len(models)} models, {len(names)} names)"
            )
        names = names or [default_scene_name(m) or f"scene{k}" for k, m in enumerate(models)]
        scenes = [SceneInput(n, Path(m), Path(i)) for n, m, i in zip(names, models, image_dirs)]
    seen: dict[str, Path] = {}
    for s in scenes:
        if s.name in seen:
            raise UsageError(
                f"--scene: the models {seen[s.name]} and {s.model} are both named "
                f"{s.name!r}; give each its own name"
            )
        seen[s.name] = s.model
    return scenes


# ----------------------------------------------------------------------------- pairs
def stored_image_dir(image_dir: Path, data_root: str | Path | None) -> str:
    """The ``image_dir`` string stored in the pair file: absolute, or relative to
    `data_root` when one is given."""
    absdir = os.path.abspath(image_dir)
    return absdir if data_root is None else os.path.relpath(absdir, os.path.abspath(data_root))


def generate_colmap_pairs(
    scenes: Sequence[SceneInput],
    min_overlap: float = 0.35,
    im_target_ratio: float = 1.5,
    max_pairs: int = 500,
    sampson_thres: float = 1.0,
    seed: int = 0,
    data_root: str | Path | None = None,
    log: Callable[[str], object] = print,
) -> dict[str, dict]:
    """The pair dict of several reconstructions (see the module docstring).

    Returns:
        {scene: {'ims': [...], 'pairs': [...], 'image_dir': str}}; scenes without a kept
        pair are left out.
    """
    tables = [scene_table(s.model, s.images) for s in scenes]  # all input checks first
    rng = np.random.RandomState(seed)
    out: dict[str, dict] = {}
    for s, table in zip(scenes, tables):
        stats: dict[str, int] = {}
        pairs = scene_pairs(
            table, rng, min_overlap, im_target_ratio, max_pairs, sampson_thres, stats
        )
        log(
            f"{s.name}: {len(table['image_paths'])} images, {stats['valid']} valid pairs, "
            f"rejected {stats['size']} by size/crop and {stats['sampson']} by Sampson "
            f"distance, kept {stats['kept']}"
        )
        if pairs:
            entry: dict = {"ims": [], "pairs": []}
            add_pair_images(entry, pairs)
            entry["image_dir"] = stored_image_dir(s.images, data_root)
            out[s.name] = entry
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = make_parser(
        PROG,
        "Training pairs (docs/file-formats.md §2) from undistorted COLMAP "
        "reconstructions; repeat --model/--images for several scenes.",
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="DIR",
        help="COLMAP model folder (cameras/images/points3D .bin or .txt) written "
        "by colmap image_undistorter; repeat for several scenes",
    )
    p.add_argument(
        "--images",
        action="append",
        metavar="DIR",
        help="the undistorted image folder of the model; once per --model",
    )
    p.add_argument(
        "--scene",
        action="append",
        metavar="NAME",
        help="scene name, once per --model (default: the folder above sparse/dense)",
    )
    p.add_argument(
        "--scenes_file",
        metavar="FILE",
        help="instead of --model/--images: lines 'NAME MODEL_DIR IMAGE_DIR'",
    )
    p.add_argument("--out", required=True, help="the pair file to write (.npy)")
    p.add_argument(
        "--min_overlap",
        type=float,
        default=0.35,
        help="smallest overlap (shared 3D points / points of the first image)",
    )
    p.add_argument(
        "--im_target_ratio", type=float, default=1.5, help="width / height of the bottom-right crop"
    )
    p.add_argument("--max_pairs", type=int, default=500, help="most pairs per scene")
    p.add_argument(
        "--sampson_thres",
        type=float,
        default=1.0,
        help="largest mean Sampson distance (px²) of a kept pair",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the pair shuffling")
    p.add_argument(
        "--data_root",
        default=None,
        help="store image folders relative to DIR (then train with --data_root "
        "DIR); default: absolute paths",
    )
    return p


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.min_overlap < 1:
        raise UsageError(f"--min_overlap must lie in (0, 1), got {args.min_overlap}")
    if args.max_pairs < 1:
        raise UsageError(f"--max_pairs must be >= 1, got {args.max_pairs}")
    if not 1.3 <= args.im_target_ratio <= 1.7:
        raise UsageError(
            f"--im_target_ratio must lie in [1.3, 1.7] (the crop rule), got {args.im_target_ratio}"
        )
    if not args.sampson_thres > 0:
        raise UsageError(f"--sampson_thres must be positive, got {args.sampson_thres}")
    out = Path(args.out)
    if out.suffix != ".npy":
        raise UsageError(f"--out {out}: the pair file name must end in .npy")
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give the pair file's path")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise UsageError(f"--data_root {args.data_root}: folder not found")
    scenes = _scenes_from_args(args)
    pairs = generate_colmap_pairs(
        scenes,
        args.min_overlap,
        args.im_target_ratio,
        args.max_pairs,
        args.sampson_thres,
        args.seed,
        args.data_root,
    )
    if not pairs:
        raise UsageError(
            f"no pair of {len(scenes)} scene(s) passed the selection (overlap >= "
            f"--min_overlap {args.min_overlap}, landscape images, Sampson); "
            "nothing written"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_npy_atomic(pairs, out)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot write it: {err}") from None
    n_pairs = sum(len(v["pairs"]) for v in pairs.values())
    print(f"wrote {out}: {len(pairs)} scenes, {n_pairs} pairs")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command; bad input gives one ``<prog>: error: ...`` line and exit code 2."""
    return run_command(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
