"""HPatches sequences evaluation of a Patch2Pix (or NCNet) checkpoint.

    python -m utils.eval.eval_hpatches --ckpt pretrained/patch2pix_pretrained.pth \\
        --root data/hpatches-sequences-release [--imsize 1024 --io_thres 0.5 --ksize 2 \\
        --ransac_thres 2 --solver ransac|usac --out results.json]

Reports, for the illumination (``i_*``), viewpoint (``v_*``) and all sequences: mean
matching accuracy at 1..10 px, mean matches per pair, and homography estimation
correctness / AUC at 1, 3, 5, 10 px corner error (metrics: ``utils/eval/hpatches.py``).
Pairs are (1, k), k = 2..6. Matches come from ``estimate_matches(..., imsize=...)``, which
returns them in original pixels, so the ground-truth homographies are used unchanged.
``--matcher oracle`` evaluates ground-truth matches instead of a network (checks the data
and the protocol; MMA is 1 everywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from utils.common.setup_helper import write_text_atomic
from utils.eval.hpatches import (
    D2NET_EXCLUDED,
    HOMOGRAPHY_THRESHOLDS,
    MMA_THRESHOLDS,
    Matcher,
    evaluate_hpatches,
    format_summary,
    oracle_matcher,
)


def network_matcher(
    ckpt: str,
    method: str = "patch2pix",
    imsize: int | None = 1024,
    io_thres: float = 0.5,
    ksize: int = 2,
    ncn_thres: float = 0.0,
    mutual: bool = True,
    eval_type: str = "fine",
    lprint: Any = print,
    device: str | None = None,
) -> Matcher:
    """Load a checkpoint and wrap ``estimate_matches`` as a (im1_path, im2_path) matcher.

    Args:
        method: 'patch2pix', or 'nc' for NCNet weights (then ``eval_type`` is 'coarse').
        device: where the model runs (default: CUDA when available).
        Others: as in ``utils.eval.model_helper.estimate_matches``.

    Returns:
        A callable giving (N, 4) float matches in original pixels.
    """
    from utils.eval.model_helper import estimate_matches, load_model

    net = load_model(ckpt, method=method, lprint=lprint, device=device)
    if method == "nc":
        eval_type = "coarse"

    def match(im1_path: str, im2_path: str) -> Any:
        matches, _, _ = estimate_matches(
            net, im1_path, im2_path, ksize=ksize, ncn_thres=ncn_thres, mutual=mutual,
            io_thres=io_thres, eval_type=eval_type, imsize=imsize,
        )
        return matches

    return match


def write_json(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Write `obj` as indented JSON, atomically (utils.common.setup_helper.write_atomic)."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def build_parser() -> argparse.ArgumentParser:
    """The command line options."""
    ap = argparse.ArgumentParser(
        description="HPatches sequences evaluation (MMA, homography estimation)."
    )
    ap.add_argument("--ckpt", default=None, help="checkpoint (.pth); required unless oracle")
    ap.add_argument("--root", default="data/hpatches-sequences-release", help="HPatches root")
    ap.add_argument("--matcher", choices=["network", "oracle"], default="network")
    ap.add_argument("--method", choices=["patch2pix", "nc"], default="patch2pix")
    ap.add_argument("--eval_type", default="fine", help="fine | mid | coarse")
    ap.add_argument("--imsize", type=int, default=1024, help="longer image side (<=0: native)")
    ap.add_argument("--io_thres", type=float, default=0.5, help="match score threshold")
    ap.add_argument("--ksize", type=int, default=2, help="relocalisation kernel size")
    ap.add_argument("--ncn_thres", type=float, default=0.0, help="coarse score threshold")
    ap.add_argument("--no_mutual", action="store_true", help="keep non-mutual coarse matches")
    ap.add_argument("--ransac_thres", type=float, default=2.0, help="homography RANSAC px")
    ap.add_argument("--solver", choices=["ransac", "usac"], default="ransac")
    ap.add_argument(
        "--exclude", default="d2net",
        help="'d2net': skip the 8 high-resolution sequences (108 remain, the D2-Net / "
        "Patch2Pix protocol); 'none'; or a comma-separated list of sequence names",
    )
    ap.add_argument("--max_seqs", type=int, default=None, help="at most N sequences per kind")
    ap.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda if any)")
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the evaluation; print the summary; write the JSON when --out is given."""
    args = build_parser().parse_args(argv)
    imsize = args.imsize if args.imsize > 0 else None
    if args.matcher == "oracle":
        matcher = oracle_matcher()
    else:
        if not args.ckpt:
            raise SystemExit("--ckpt is required (or use --matcher oracle)")
        matcher = network_matcher(
            args.ckpt, args.method, imsize, args.io_thres, args.ksize, args.ncn_thres,
            not args.no_mutual, args.eval_type, lprint=lambda *a: print(*a, file=sys.stderr),
            device=args.device,
        )
    res = evaluate_hpatches(
        args.root, matcher, MMA_THRESHOLDS, HOMOGRAPHY_THRESHOLDS, args.ransac_thres,
        args.solver, parse_exclude(args.exclude), args.max_seqs, not args.no_progress,
    )
    res = {"config": vars(args), **res}
    print(format_summary(res["summary"]))
    if args.out:
        write_json(args.out, res)
        print(f"results written to {args.out}")
    return res


if __name__ == "__main__":
    main()
