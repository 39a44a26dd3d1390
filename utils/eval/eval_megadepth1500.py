"""MegaDepth-1500 relative-pose evaluation of a Patch2Pix (or NCNet) checkpoint.

    python -m utils.eval.eval_megadepth1500 --ckpt pretrained/patch2pix_pretrained.pth \\
        --data_root data/megadepth_test_1500 [--scene_info DIR --imsize 1024 --io_thres 0.5 \\
        --ransac opencv|usac --max_pairs N --out results.json]

Reports AUC of the pose error at 5°, 10°, 20°, matches per pair and the mean epipolar
precision (protocol and data layout: ``utils/eval/megadepth1500.py``); the JSON holds the
configuration, the summary and every pair. ``--matcher oracle`` evaluates ground-truth
matches from the depth maps instead of a network (AUC ≈ 1: checks the data and the
protocol).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils.common.cli import UsageError, make_parser, run_command
from utils.eval.megadepth1500 import (
    RANSAC_METHODS,
    evaluate_megadepth1500,
    format_summary,
    load_pairs,
    oracle_matcher,
)
from utils.eval.runner import add_matcher_args, finish, matcher_from_args

MODULE = "utils.eval.eval_megadepth1500"
SCENE_INFO_DIR = "megadepth_test_1500_scene_info"


def build_parser() -> argparse.ArgumentParser:
    """The command line options."""
    ap = make_parser(MODULE, "MegaDepth-1500 relative pose evaluation (AUC@5/10/20°).")
    ap.add_argument(
        "--data_root",
        default="data/megadepth_test_1500",
        help="folder the npz image_paths / depth_paths are relative to",
    )
    ap.add_argument(
        "--scene_info",
        default=None,
        help=f"folder of megadepth_test_1500.txt and the npz files "
        f"(default: <data_root>/{SCENE_INFO_DIR})",
    )
    add_matcher_args(ap, io_thres=0.5, imsize=1024)
    ap.add_argument(
        "--ransac",
        choices=sorted(RANSAC_METHODS),
        default="opencv",
        help="essential-matrix estimator: OpenCV RANSAC or USAC MAGSAC++",
    )
    ap.add_argument("--max_pairs", type=int, default=None, help="evaluate the first N pairs")
    ap.add_argument("--out", default=None, help="results JSON (default: print only)")
    ap.add_argument("--no_progress", action="store_true", help="no progress bar")
    return ap


def _main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.max_pairs is not None and args.max_pairs < 1:
        raise UsageError("--max_pairs must be at least 1")
    scene_info = Path(args.scene_info) if args.scene_info else Path(args.data_root) / SCENE_INFO_DIR
    matcher, matcher_cfg = matcher_from_args(
        args, lambda: oracle_matcher(load_pairs(scene_info, args.data_root, args.max_pairs))
    )
    res = evaluate_megadepth1500(
        scene_info, args.data_root, matcher, args.ransac, args.max_pairs, not args.no_progress
    )
    config = {**vars(args), "scene_info": str(scene_info), **matcher_cfg}
    res = {"config": config, **res}
    finish(res, format_summary(res["summary"]), args.out)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m utils.eval.eval_megadepth1500``; returns the exit code."""
    from utils.common.setup_helper import CheckpointError

    return run_command(MODULE, _main, argv, extra=(CheckpointError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
