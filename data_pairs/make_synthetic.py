"""The command that writes synthetic MegaDepth / PhotoTourism look-alike data.

The scenes are rendered by the package :mod:`data_pairs.synthetic` (see its modules for
scene and texture synthesis, camera sampling, ray casting, observations and the two
file-format writers); this module is the command line around it.

Layout written under ``--out`` (default ``data``)::

    MegaDepth_undistort/
      scene_info/<scene>.0.npz                 D2Net keys (docs/file-formats.md §1)
      <scene>/images/<i>.jpg                   the images (where the training loader looks)
      Undistorted_SfM/<scene> -> ../<scene>    so that the npz image_paths resolve too
      phoenix/S6/zl548/MegaDepth_v1/<scene>/dense0/depths/<i>.h5   (dataset 'depth')
    immatch_benchmark/val_dense/<val scene>/dense/
      images/<name>.jpg
      sparse/{cameras,images,points3D}.bin     COLMAP binary model (+ pycolmap's rigs/frames)
      sparse/ov_pairs.npy                      (docs/file-formats.md §4, unless --no_ov_pairs)

Usage::

    python -m data_pairs.make_synthetic --out data [--scenes 2 --images_per_scene 12
        --width 640 --height 480 --val_scenes 1 --seed 0]

The two scene writers (``make_megadepth_scene``, ``make_val_scene``) stay importable from
here; everything else is imported from :mod:`data_pairs.synthetic`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from data_pairs.synthetic.colmap_writer import make_val_scene, val_scene_name
from data_pairs.synthetic.megadepth_writer import SFM_LAYOUTS, make_megadepth_scene
from data_pairs.synthetic.synthesize import SceneSpec
from utils.common.cli import UsageError, make_parser, run_command
from utils.common.data_layout import VAL_SUBDIR

__all__ = [
    "generate",
    "build_parser",
    "parse_args",
    "main",
    "make_megadepth_scene",
    "make_val_scene",
]

MODULE = "data_pairs.make_synthetic"
_DEFAULT = SceneSpec()

# Flags that were spelled with hyphens before every command used underscores: the old
# spellings are still accepted (not shown by --help), so old scripts keep working.
_FLAGS_WITH_UNDERSCORES = (
    "--images_per_scene",
    "--val_scenes",
    "--val_images",
    "--portrait_every",
    "--none_entries",
    "--first_scene_id",
    "--sfm_layout",
    "--no_ov_pairs",
)
_HYPHEN_ALIASES = {f.replace("_", "-"): f for f in _FLAGS_WITH_UNDERSCORES}


def _normalise_flags(argv: Sequence[str]) -> list[str]:
    """Replace the old hyphenated flag spellings (also ``--flag=value``) by the new ones."""
    out = []
    for tok in argv:
        name, eq, value = tok.partition("=")
        out.append(_HYPHEN_ALIASES[name] + eq + value if name in _HYPHEN_ALIASES else tok)
    return out


def generate(
    args: argparse.Namespace, log: Callable[[str], object] = print
) -> dict[str, list[str]]:
    """Generate all scenes of `args` (see :func:`parse_args`); returns the scene names."""
    out = Path(args.out)
    spec = SceneSpec(
        seed=args.seed,
        n_images=args.images_per_scene,
        width=args.width,
        height=args.height,
        n_points=args.points,
        supersample=args.supersample,
        portrait_every=args.portrait_every,
    )
    train_names, val_names = [], []
    for k in range(args.scenes):
        name = f"{args.first_scene_id + k:04d}"
        t0 = time.time()
        make_megadepth_scene(
            out, name, k, spec, none_entries=args.none_entries, sfm_layout=args.sfm_layout
        )
        train_names.append(name)
        log(f"MegaDepth-like scene {name}: {spec.n_images} images ({time.time() - t0:.1f} s)")
    val_spec = replace(spec, n_images=args.val_images)
    for k in range(args.val_scenes):
        name = val_scene_name(k)
        t0 = time.time()
        make_val_scene(out, name, k, val_spec)
        val_names.append(name)
        log(f"validation scene {name}: {val_spec.n_images} images ({time.time() - t0:.1f} s)")
    if val_names and not args.no_ov_pairs:
        from data_pairs.precompute_immatch_val_ovs import precompute_scene_overlaps

        for name in val_names:
            precompute_scene_overlaps(out / VAL_SUBDIR / name, overwrite=True, log=log)
    return {"train": train_names, "val": val_names}


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (underscore spellings)."""
    p = make_parser(
        MODULE,
        "Render synthetic MegaDepth-like training scenes and PhotoTourism-like "
        "validation scenes in the real data formats.",
    )
    p.add_argument("--out", default="data", help="data root to write into")
    p.add_argument("--scenes", type=int, default=2, help="MegaDepth-like training scenes")
    p.add_argument(
        "--images_per_scene", type=int, default=_DEFAULT.n_images, help="images per training scene"
    )
    p.add_argument("--val_scenes", type=int, default=1, help="PhotoTourism-like val scenes")
    p.add_argument(
        "--val_images",
        type=int,
        default=None,
        help="images per validation scene (None: as many as --images_per_scene)",
    )
    p.add_argument("--width", type=int, default=_DEFAULT.width, help="landscape image width")
    p.add_argument("--height", type=int, default=_DEFAULT.height, help="landscape image height")
    p.add_argument(
        "--points", type=int, default=_DEFAULT.n_points, help="3D points sampled per scene"
    )
    p.add_argument(
        "--supersample",
        type=int,
        default=_DEFAULT.supersample,
        help="rays per pixel along each axis (anti-aliasing)",
    )
    p.add_argument(
        "--portrait_every",
        type=int,
        default=_DEFAULT.portrait_every,
        help="every N-th image is portrait (0: none)",
    )
    p.add_argument(
        "--none_entries",
        type=int,
        default=1,
        help="None slots per scene_info file, as real files have",
    )
    p.add_argument(
        "--first_scene_id",
        type=int,
        default=9000,
        help="numeric name of the first training scene (9000: above every real "
        "MegaDepth scene id, so synthetic scenes never shadow real ones)",
    )
    p.add_argument(
        "--sfm_layout",
        choices=SFM_LAYOUTS,
        default="link",
        help="how Undistorted_SfM/<scene> reaches <scene>/images",
    )
    p.add_argument(
        "--no_ov_pairs",
        action="store_true",
        help="do not write the validation scenes' sparse/ov_pairs.npy",
    )
    p.add_argument("--seed", type=int, default=_DEFAULT.seed, help="random seed of all scenes")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags; hyphenated old spellings are accepted too."""
    p = build_parser()
    args = p.parse_args(_normalise_flags(sys.argv[1:] if argv is None else argv))
    if args.val_images is None:
        args.val_images = args.images_per_scene
    if args.images_per_scene < 2 or args.val_images < 2:
        p.error("--images_per_scene and --val_images must be at least 2")
    if args.width < 16 or args.height < 16:
        p.error("--width and --height must be at least 16")
    if min(args.scenes, args.val_scenes, args.points, args.none_entries) < 0:
        p.error("--scenes, --val_scenes, --points and --none_entries must not be negative")
    if args.supersample < 1:
        p.error("--supersample must be at least 1")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out}: exists and is not a folder")
    return args


def _main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    try:
        names = generate(args)
    except OSError as e:  # unwritable --out, disk full, ...
        raise UsageError(f"--out {args.out}: cannot write the data: {e}") from None
    print(
        f"wrote {len(names['train'])} training and {len(names['val'])} validation scenes "
        f"under {args.out} in {time.time() - t0:.1f} s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m data_pairs.make_synthetic``; returns the exit code."""
    return run_command(MODULE, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
