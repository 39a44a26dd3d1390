"""HPatches sequences evaluation of a Patch2Pix (or NCNet) checkpoint.

    python -m utils.eval.eval_hpatches --ckpt pretrained/patch2pix_pretrained.pth \\
        --root data/hpatches-sequences-release [--imsize 1024 --io_thres 0.5 --ksize 2 \\
        --ransac_thres 2 --solver ransac|usac --out results.json]

Reports, for the illumination (``i_*``), viewpoint (``v_*``) and all sequences: mean
matching accuracy at 1..10 px, mean matches per pair, and homography estimation
correctness / AUC at 1, 3, 5, 10 px corner error (metrics: ``utils/eval/hpatches.py``).
Pairs are (1, k), k = 2..6. Matches come from ``utils.eval.matcher.Patch2PixMatcher`` (the
same numbers as ``estimate_matches(..., imsize=...)``), in original pixels, so the
ground-truth homographies are used unchanged. The matcher flags and the output are shared
with the MegaDepth-1500 evaluator (``utils/eval/runner.py``).
``--matcher oracle`` evaluates ground-truth matches instead of a network (checks the data
and the protocol; MMA is 1 everywhere).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from utils.common.cli import make_parser, number, run_command
from utils.eval.hpatches import (
    D2NET_EXCLUDED,
    HOMOGRAPHY_THRESHOLDS,
    MMA_THRESHOLDS,
    evaluate_hpatches,
    format_summary,
    oracle_matcher,
)
from utils.eval.runner import add_matcher_args, finish, matcher_from_args

MODULE = "utils.eval.eval_hpatches"


def build_parser() -> argparse.ArgumentParser:
    """The command line options."""
    ap = make_parser(MODULE, "HPatches sequences evaluation (MMA, homography estimation).")
    ap.add_argument("--root", default="data/hpatches-sequences-release", help="HPatches root")
    add_matcher_args(ap, io_thres=0.5, imsize=1024)
    ap.add_argument(
        "--ransac_thres",
        type=number(float, 0, 1000, lo_open=True),
        default=2.0,
        help="homography RANSAC px",
    )
    ap.add_argument("--solver", choices=["ransac", "usac"], default="ransac")
    ap.add_argument(
        "--exclude",
        default="d2net",
        help="'d2net': skip the 8 high-resolution sequences (108 remain, the D2-Net / "
        "Patch2Pix protocol); 'none'; or a comma-separated list of sequence names",
    )
    ap.add_argument("--max_seqs", type=int, default=None, help="at most N sequences per kind")
    ap.add_argument("--out", default=None, help="results JSON (default: print only)")
    ap.add_argument("--no_progress", action="store_true", help="no progress bar")
    return ap


def parse_exclude(text: str) -> tuple[str, ...]:
    """'d2net' -> D2NET_EXCLUDED, 'none'/'' -> (), else the comma-separated names."""
    if text.strip().lower() == "d2net":
        return D2NET_EXCLUDED
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the evaluation; print the summary; write the JSON when --out is given."""
    args = build_parser().parse_args(argv)
    matcher, matcher_cfg = matcher_from_args(args, oracle_matcher)
    res = evaluate_hpatches(
        args.root,
        matcher,
        MMA_THRESHOLDS,
        HOMOGRAPHY_THRESHOLDS,
        args.ransac_thres,
        args.solver,
        parse_exclude(args.exclude),
        args.max_seqs,
        not args.no_progress,
    )
    res = {"config": {**vars(args), **matcher_cfg}, **res}
    finish(res, format_summary(res["summary"]), args.out)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m utils.eval.eval_hpatches``; returns the exit code."""
    from utils.common.setup_helper import CheckpointError

    return run_command(MODULE, _main, argv, extra=(CheckpointError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
