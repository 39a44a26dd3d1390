"""What the evaluation commands share: the pluggable matcher, its flags, the pair loop, output.

A *matcher* is any callable ``matcher(image0_path, image1_path)`` returning either a dict
with ``keypoints0`` / ``keypoints1`` ((N, 2) each, as :class:`utils.eval.matcher.
Patch2PixMatcher` returns), or an (N, 4) array / tensor of rows (x0, y0, x1, y1), or a tuple
whose first item is such an array (the output of ``estimate_matches``). Coordinates are in
the ORIGINAL pixels of the two images. The HPatches and MegaDepth-1500 evaluators take the
same matchers and build them from the same flags (:func:`add_matcher_args`,
:func:`matcher_from_args`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from utils.common.cli import UsageError, number
from utils.common.setup_helper import write_text_atomic
from utils.geometry import as_f64

Matcher = Callable[[str, str], Any]
"""(image0_path, image1_path) -> matches in original pixels (see the module docstring)."""

J = TypeVar("J")
R = TypeVar("R")


def as_matches(out: Any) -> np.ndarray:
    """A matcher's output as an (N, 4) float64 array of rows (x0, y0, x1, y1).

    Accepts a dict with ``keypoints0`` / ``keypoints1`` ((N, 2) each), an (N, 4) array or
    tensor, or a tuple / list whose first item is one of those arrays.
    """
    if isinstance(out, Mapping):
        k0, k1 = (as_f64(out[k]).reshape(-1, 2) for k in ("keypoints0", "keypoints1"))
        if len(k0) != len(k1):
            raise ValueError(f"matcher gave {len(k0)} keypoints0 but {len(k1)} keypoints1")
        return np.concatenate([k0, k1], axis=1)
    if isinstance(out, (tuple, list)) and len(out) and not np.isscalar(out[0]):
        out = out[0]
    return as_f64(out).reshape(-1, 4)


def add_matcher_args(
    ap: argparse.ArgumentParser, io_thres: float = 0.5, imsize: int = 1024
) -> None:
    """The flags that choose and configure the matcher (shared by the evaluators)."""
    ap.add_argument("--ckpt", default=None, help="checkpoint (.pth); required unless oracle")
    ap.add_argument(
        "--matcher",
        choices=["network", "oracle"],
        default="network",
        help="'oracle': ground-truth matches (checks the data and the protocol)",
    )
    ap.add_argument(
        "--method",
        choices=["patch2pix", "nc"],
        default="patch2pix",
        help="'nc': NCNet weights, coarse matches",
    )
    ap.add_argument(
        "--eval_type",
        choices=["fine", "mid", "coarse"],
        default=None,
        help="which matches of the model are evaluated (default: 'coarse' with "
        "--method nc, whose weights have no regressors, else 'fine')",
    )
    ap.add_argument(
        "--imsize",
        type=int,
        default=imsize,
        help="longer image side the network sees (<=0: native size)",
    )
    ap.add_argument(
        "--io_thres", type=number(float, 0, 1), default=io_thres, help="match score threshold"
    )
    ap.add_argument(
        "--ksize", type=number(int, 1, 16), default=2, help="relocalisation kernel size"
    )
    ap.add_argument(
        "--ncn_thres", type=number(float, 0, 1), default=0.0, help="coarse score threshold"
    )
    ap.add_argument("--no_mutual", action="store_true", help="keep non-mutual coarse matches")
    ap.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda if any)")


def matcher_from_args(
    args: argparse.Namespace,
    oracle: Callable[[], Matcher],
    lprint: Callable[..., Any] | None = None,
) -> tuple[Matcher, dict[str, Any]]:
    """Build the matcher the flags of :func:`add_matcher_args` ask for.

    Args:
        args: parsed flags.
        oracle: builds the evaluator's ground-truth matcher (for ``--matcher oracle``).
        lprint: where the model loading is reported (default: stdout).
    Returns:
        (matcher, its configuration for the results file).
    Raises:
        UsageError: ``--ckpt`` missing for the network matcher.
    """
    if args.matcher == "oracle":
        return oracle(), {"matcher": "oracle"}
    if not args.ckpt:
        raise UsageError("--ckpt is required (or use --matcher oracle)")
    if args.method == "nc" and args.eval_type in ("fine", "mid"):
        raise UsageError(
            f"--eval_type {args.eval_type} needs the regressors, but --method nc "
            "loads NCNet weights, which have no regressors: use --eval_type coarse"
        )
    from utils.eval.matcher import Patch2PixMatcher
    from utils.eval.model_helper import load_model

    lprint = lprint or print  # stdout: stderr carries only the one-line error, if any
    net = load_model(args.ckpt, method=args.method, lprint=lprint, device=args.device)
    eval_type = args.eval_type or ("coarse" if args.method == "nc" else "fine")
    matcher = Patch2PixMatcher(
        net,
        imsize=args.imsize,
        io_thres=args.io_thres,
        ksize=args.ksize,
        eval_type=eval_type,
        ncn_thres=args.ncn_thres,
        mutual=not args.no_mutual,
    )
    return matcher, {
        "matcher": "network",
        "ckpt": str(args.ckpt),
        "method": args.method,
        **matcher.config(),
    }


def run_pairs(
    jobs: Sequence[J],
    evaluate: Callable[[J], R],
    desc: str,
    progress: bool = True,
    postfix: Callable[[list[R]], Mapping[str, Any]] | None = None,
) -> tuple[list[R], float]:
    """Evaluate every job in order behind a tqdm bar.

    Args:
        jobs: the pairs (any objects).
        evaluate: job -> result.
        desc: bar title.
        progress: show the bar.
        postfix: results so far -> values shown beside the bar.
    Returns:
        (results in job order, seconds).
    """
    from tqdm import tqdm

    results: list[R] = []
    t0 = time.time()
    bar = tqdm(jobs, desc=desc, unit="pair", disable=not progress, dynamic_ncols=True)
    for job in bar:
        results.append(evaluate(job))
        if progress and postfix is not None:
            bar.set_postfix(postfix(results))
    bar.close()
    return results, time.time() - t0


def json_ready(obj: Any) -> Any:
    """Nested dicts / lists / numpy values → JSON values (non-finite floats → None)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Mapping[str, Any]) -> None:
    """Write `obj` as indented JSON, atomically (non-finite floats become null)."""
    write_text_atomic(path, json.dumps(json_ready(obj), indent=2))


def finish(result: Mapping[str, Any], summary_text: str, out: str | None) -> None:
    """Print the summary; write the JSON when `out` is given."""
    print(summary_text)
    if out:
        write_json(out, result)
        print(f"results written to {out}")
