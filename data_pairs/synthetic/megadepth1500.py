"""A small MegaDepth-1500 look-alike: synthetic scenes in the benchmark's exact file layout.

The field's relative-pose benchmark (LoFTR's ``megadepth_test_1500``) is a folder of five
scene-info files listed in ``megadepth_test_1500.txt``; this module writes that layout from
synthetic scenes (known K, poses and depth, rendered images), so that
``python -m utils.eval.eval_megadepth1500`` can be run and tested anywhere::

    <out>/
      megadepth_test_1500_scene_info/
        megadepth_test_1500.txt            the five names, one a line (as LoFTR's file)
        0015_0.1_0.3.npz  0015_0.3_0.5.npz
        0022_0.1_0.3.npz  0022_0.3_0.5.npz  0022_0.5_0.7.npz
      Undistorted_SfM/<scene>/images/<i>.jpg
      phoenix/S6/zl548/MegaDepth_v1/<scene>/dense0/depths/<i>.h5     (dataset 'depth')

Each ``.npz`` is written as LoFTR ships its files (docs/file-formats.md §7): not a zip archive
but a plain pickle (protocol 4) of a dict with ``image_paths`` and ``depth_paths`` (object
arrays of paths relative to ``<out>``; None for a slot without an image, as the real files
have), ``intrinsics`` (object array of 3×3 float64), ``poses`` (object array of 4×4
world-to-camera float64) and ``pair_infos``: a list of tuples ``(array([i, j]),
overlap_score float64, central_matches float64 array (4,))``, central_matches being the pixel
pair (x0, y0, x1, y1) of the shared 3D point whose image-0 position is nearest to the mean
of the shared points'. A pair goes to the file of its scene
whose overlap range ``[lo, hi)`` holds its score ``min(shared / seen by i, shared / seen by
j)``, at most `pairs_per_file` per file (the first ones in (i, j) order); a file whose range
holds no pair has an empty ``pair_infos``.

Scenes: ``0015`` and ``0022`` are synthetic scenes of their own kind (:data:`KIND_TEST`),
never equal to a training or validation scene of ``make_synthetic``.

    python -m data_pairs.synthetic.megadepth1500 --out data/megadepth1500_synthetic
"""

from __future__ import annotations

import pickle
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from data_pairs.synthetic.files import object_array, save_depth, save_jpeg
from data_pairs.synthetic.megadepth_writer import DEPTH_SUBDIR
from data_pairs.synthetic.synthesize import SceneSpec, scene_spec, synthesize_scene
from utils.common.cli import UsageError, make_parser, run_command
from utils.common.data_layout import SFM_PREFIX
from utils.common.setup_helper import write_atomic

__all__ = ["KIND_TEST", "LIST_FILE", "SCENE_INFO_DIR", "SCENE_FILES", "write_megadepth1500"]

MODULE = "data_pairs.synthetic.megadepth1500"
KIND_TEST = 2  # scene kind of the test scenes (training scenes are 0, validation scenes 1)
LIST_FILE = "megadepth_test_1500.txt"
SCENE_INFO_DIR = "megadepth_test_1500_scene_info"
# (scene, overlap range) of the five files, in the order of the benchmark's list
SCENE_FILES: tuple[tuple[str, float, float], ...] = (
    ("0015", 0.1, 0.3),
    ("0015", 0.3, 0.5),
    ("0022", 0.1, 0.3),
    ("0022", 0.3, 0.5),
    ("0022", 0.5, 0.7),
)


def file_name(scene: str, lo: float, hi: float) -> str:
    """``0015_0.1_0.3``: the benchmark's name of a scene-info file (without ``.npz``)."""
    return f"{scene}_{lo:.1f}_{hi:.1f}"


def _pairs_by_overlap(obs_idx: list[np.ndarray], obs_xy: list[np.ndarray]) -> list[tuple]:
    """Every pair (i < j) of a scene with its overlap score and shared observations.

    Returns:
        [(array([i, j]), score float64, (4,) float64 x0, y0, x1, y1 of the central shared
        point)] for the pairs sharing a point.
    """
    out = []
    for i in range(len(obs_idx)):
        for j in range(i + 1, len(obs_idx)):
            shared, ai, bj = np.intersect1d(obs_idx[i], obs_idx[j], return_indices=True)
            if not len(shared):
                continue
            score = min(len(shared) / len(obs_idx[i]), len(shared) / len(obs_idx[j]))
            shared_xy = np.concatenate([obs_xy[i][ai], obs_xy[j][bj]], axis=1)
            k = np.argmin(np.linalg.norm(shared_xy[:, :2] - shared_xy[:, :2].mean(0), axis=1))
            central = shared_xy[k].astype(np.float64)
            out.append((np.array([i, j]), np.float64(score), central))
    return out


def save_scene_info(path: Path, info: dict) -> None:
    """LoFTR's form of a scene-info file: a plain pickle (protocol 4) of the dict, written
    atomically (``np.load(path, allow_pickle=True)`` returns the dict, as for LoFTR's)."""
    data = pickle.dumps(info, protocol=4)
    write_atomic(path, lambda f: f.write(data))


def write_megadepth1500(
    out: str | Path,
    spec: SceneSpec | None = None,
    pairs_per_file: int = 10,
    none_entries: int = 1,
    log: Callable[[str], object] = print,
    **spec_fields: int,
) -> dict[str, int]:
    """Render the two scenes and write the benchmark's layout under `out`.

    Args:
        out: root folder (replaced scene by scene on a re-run).
        spec: scene size / sampling (``SceneSpec``), with `spec_fields` replaced.
        pairs_per_file: at most this many pairs per scene-info file.
        none_entries: None slots per file (at the end of the image lists).
        log: progress lines.
    Returns:
        {file name: number of pairs}.
    """
    out = Path(out)
    spec = scene_spec(spec, **spec_fields)
    info_dir = out / SCENE_INFO_DIR
    info_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    scenes = sorted({s for s, _, _ in SCENE_FILES})
    for index, scene in enumerate(scenes):
        t0 = time.time()
        syn = synthesize_scene(spec, KIND_TEST, index)
        img_dir = out / SFM_PREFIX / scene / "images"
        depth_dir = out / DEPTH_SUBDIR / scene / "dense0" / "depths"
        for old in (img_dir, depth_dir):
            if old.is_dir():
                shutil.rmtree(old)
        image_paths: list = []
        depth_paths: list = []
        for k, (img, depth) in enumerate(zip(syn.images, syn.depths)):
            save_jpeg(img_dir / f"{k:04d}.jpg", img)
            save_depth(depth_dir / f"{k:04d}.h5", depth)
            image_paths.append(f"{SFM_PREFIX}/{scene}/images/{k:04d}.jpg")
            depth_paths.append(f"{DEPTH_SUBDIR.as_posix()}/{scene}/dense0/depths/{k:04d}.h5")
        intrinsics = [v.K.copy() for v in syn.views] + [None] * none_entries
        poses = [v.pose for v in syn.views] + [None] * none_entries
        image_paths += [None] * none_entries
        depth_paths += [None] * none_entries
        pairs = _pairs_by_overlap(syn.obs_idx, syn.obs_xy)
        for s, lo, hi in SCENE_FILES:
            if s != scene:
                continue
            name = file_name(s, lo, hi)
            chosen = [p for p in pairs if lo <= p[1] < hi][:pairs_per_file]
            save_scene_info(
                info_dir / f"{name}.npz",
                {
                    "image_paths": object_array(image_paths),
                    "depth_paths": object_array(depth_paths),
                    "intrinsics": object_array(intrinsics),
                    "poses": object_array(poses),
                    "pair_infos": chosen,
                },
            )
            counts[name] = len(chosen)
        log(
            f"MegaDepth-1500 scene {scene}: {len(syn.views)} images, {len(pairs)} "
            f"overlapping pairs ({time.time() - t0:.1f} s)"
        )
    listing = "".join(f"{file_name(*f)}\n" for f in SCENE_FILES).encode()
    write_atomic(info_dir / LIST_FILE, lambda f: f.write(listing))
    return counts


def build_parser():
    """The command's flags."""
    p = make_parser(MODULE, "Write a synthetic set in the MegaDepth-1500 benchmark layout.")
    p.add_argument("--out", default="data/megadepth1500_synthetic", help="root folder")
    p.add_argument("--images_per_scene", type=int, default=16, help="images per scene")
    p.add_argument(
        "--pairs_per_file", type=int, default=10, help="pairs per scene-info file at most"
    )
    p.add_argument("--width", type=int, default=640, help="landscape image width")
    p.add_argument("--height", type=int, default=480, help="landscape image height")
    p.add_argument(
        "--supersample", type=int, default=2, help="rays per pixel along each axis (anti-aliasing)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the scenes")
    return p


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.images_per_scene < 2:
        raise UsageError("--images_per_scene must be at least 2")
    if args.width < 16 or args.height < 16:
        raise UsageError("--width and --height must be at least 16")
    if args.pairs_per_file < 1 or args.supersample < 1:
        raise UsageError("--pairs_per_file and --supersample must be at least 1")
    counts = write_megadepth1500(
        args.out,
        pairs_per_file=args.pairs_per_file,
        seed=args.seed,
        n_images=args.images_per_scene,
        width=args.width,
        height=args.height,
        supersample=args.supersample,
    )
    print(
        f"wrote {sum(counts.values())} pairs under {args.out}: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m data_pairs.synthetic.megadepth1500``."""
    return run_command(MODULE, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
