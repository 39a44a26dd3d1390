"""Benchmark: Patch2Pix matching with this project's Conv4d / max-pool vs the original's.

Times, on the same inputs and in one run, `estimate_matches` at imsize 512 and 1024 and the
coarse stage alone (`Patch2Pix.forward`, with a per-part breakdown), for

- ``fast``: this implementation (Conv4d as one channels-last conv3d per layer, correlation
  fused with a two-stage relocalisation max-pool);
- ``naive``: the original's formulations (slice-loop Conv4d, full correlation volume then
  strided-slice max-pool, `networks/ncn/reference.py`) swapped into the same model;

on the CPU (2 threads by default) and on CUDA when present. Each (device, variant, imsize)
runs in a fresh subprocess so that its peak memory (RSS on CPU, allocator peak on CUDA) is
its own; the parent checks that both variants give identical matches.

    python -m benchmarks.bench_matching [--threads 2] [--repeats 3] [--out benchmarks/RESULTS.md]

``--pair`` times instead the coarse stage step by step on a representative pair (two
landscape 1024×768 images, a photograph and a shifted copy, weights that give about a
thousand mutual coarse matches: `make_shifted_pair`, `derive_ncn_weights`), with the fast,
naive and bf16 variants interleaved in one process, and records whether fast and naive give
identical matches and how bf16's matches agree with float32's:

    python -m benchmarks.bench_matching --pair [--threads 2] [--repeats 3] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_images(folder: Path) -> tuple[Path, Path]:
    """A 768×1024 / 769×899 pair (the sizes of performance.md) from scikit-image photos."""
    from PIL import Image
    from skimage import data

    a = Image.fromarray(data.astronaut()).resize((1024, 768), Image.Resampling.BICUBIC)
    b = Image.fromarray(data.coffee()).resize((899, 769), Image.Resampling.BICUBIC)
    pa, pb = folder / "im1.jpg", folder / "im2.jpg"
    a.save(pa, quality=95)
    b.save(pb, quality=95)
    return pa, pb


def build_net(variant: str, device: str):
    """A seeded Patch2Pix (default config) with the chosen Conv4d / max-pool formulation."""
    from argparse import Namespace

    import torch

    import networks.ncn.conv4d as conv4d_mod
    import networks.ncn.model as ncn_model
    import networks.patch2pix as p2p
    from networks.config import RegressorConfig
    from networks.ncn import reference

    if variant == "naive":  # the module globals that Conv4d / FeatureCorrelation call
        conv4d_mod.conv4d = reference.conv4d_loop
        ncn_model.correlation_maxpool4d = reference.correlation_then_maxpool4d
    torch.manual_seed(0)
    rc = RegressorConfig().to_namespace()  # the released regressors, matching (panc 1)
    cfg = Namespace(
        training=False,
        device=device,
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=rc,
        regr_batch=1200,
        weights_dict=None,
        imagenet_init=False,
    )
    return p2p.Patch2Pix(cfg).eval()


def worker(args: argparse.Namespace) -> None:
    """Run one (device, variant, imsize) case and print a JSON line with its figures."""
    import torch

    from networks.ncn.model import feature_l2norm, mutual_matching
    from utils.datasets.preprocess import load_im_flexible
    from utils.eval.model_helper import estimate_matches

    torch.set_num_threads(args.threads)
    if args.tf32 == "off":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    net = build_net(args.variant, args.device)
    cuda = args.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize(args.device)

    def timed(fn, repeats):
        fn()  # warm-up
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out

    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
    t_match, (matches, scores, coarse) = timed(
        lambda: estimate_matches(
            net, args.im1, args.im2, ksize=2, io_thres=0.0, imsize=args.imsize
        ),
        args.repeats,
    )
    im1, _ = load_im_flexible(args.im1, 2, net.upsample, imsize=args.imsize)
    im2, _ = load_im_flexible(args.im2, 2, net.upsample, imsize=args.imsize)
    im1, im2 = im1.unsqueeze(0).to(args.device), im2.unsqueeze(0).to(args.device)
    parts: dict[str, float] = {}
    import networks.ncn.model as ncn_model

    with torch.inference_mode():
        t_coarse, _ = timed(lambda: net(im1, im2, ksize=2), args.repeats)
        # Breakdown of the coarse stage (one timed run each, after the warm-up above).
        t0 = time.perf_counter()
        f1, f2 = net.extract(im1), net.extract(im2)
        sync()
        parts["backbone"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pooled = ncn_model.correlation_maxpool4d(feature_l2norm(f1), feature_l2norm(f2), 2)[0]
        sync()
        parts["corr_pool"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        net.ncn(mutual_matching(pooled))
        sync()
        parts["ncn"] = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated(args.device) / 2**30
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    np.savez(args.save, matches=matches, scores=scores, coarse=coarse)
    print(
        json.dumps(
            {
                "device": args.device,
                "variant": args.variant,
                "imsize": args.imsize,
                "sizes": [list(im1.shape[-2:]), list(im2.shape[-2:])],
                "estimate_matches_s": t_match,
                "coarse_s": t_coarse,
                "parts_s": parts,
                "peak_gib": peak,
                "n_matches": int(len(matches)),
                "kernels": kernels_in_use(),
            }
        )
    )


# The 4D convolution and correlation pool each variant must run (checked by the parent).
KERNELS = {
    "fast": {"conv4d": "conv4d", "corr_pool": "correlation_maxpool4d"},
    "naive": {"conv4d": "conv4d_loop", "corr_pool": "correlation_then_maxpool4d"},
}


def kernels_in_use() -> dict[str, str]:
    """Names of the functions that Conv4d and FeatureCorrelation call in this process."""
    import networks.ncn.conv4d as conv4d_mod
    import networks.ncn.model as ncn_model

    return {
        "conv4d": conv4d_mod.conv4d.__name__,
        "corr_pool": ncn_model.correlation_maxpool4d.__name__,
    }


def run_case(device, variant, imsize, ims, threads, repeats, tmp, tf32="default") -> dict:
    save = Path(tmp) / f"{device.replace(':', '')}_{variant}_{imsize}.npz"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_matching",
        "--worker",
        "--device",
        device,
        "--variant",
        variant,
        "--imsize",
        str(imsize),
        "--im1",
        str(ims[0]),
        "--im2",
        str(ims[1]),
        "--threads",
        str(threads),
        "--repeats",
        str(repeats),
        "--save",
        str(save),
        "--tf32",
        tf32,
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark case {device}/{variant}/{imsize} failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["kernels"] != KERNELS[variant]:  # the swap in build_net did not take effect
        raise RuntimeError(
            f"benchmark case {device}/{variant}/{imsize} ran {res['kernels']}, "
            f"expected {KERNELS[variant]}"
        )
    res["save"] = str(save)
    return res


def identical(a: str, b: str) -> bool:
    x, y = np.load(a), np.load(b)
    if not np.array_equal(x["coarse"], y["coarse"]) or x["matches"].shape != y["matches"].shape:
        return False
    return bool(np.allclose(x["matches"], y["matches"], atol=1e-3))


# ---------------------------------------------------------------- representative pair (issue 17)
SHIFT = (40, 24)  # (dx, dy) pixels of the second image against the first
NCN_NOISE = 0.1  # scale of the seeded random NCN weights kept around the identity tap


def make_shifted_pair(folder: Path) -> tuple[Path, Path]:
    """Two landscape 1024×768 JPEGs: a photograph and a copy shifted by `SHIFT`.

    scikit-image's astronaut (512×512) is upsampled bicubically to 1152×1152; the first
    image is the crop x 0–1024, y 100–868, the second the same crop moved by (40, 24) px.
    """
    from PIL import Image
    from skimage import data

    base = Image.fromarray(data.astronaut()).resize((1152, 1152), Image.Resampling.BICUBIC)
    dx, dy = SHIFT
    a = base.crop((0, 100, 1024, 868))
    b = base.crop((dx, 100 + dy, dx + 1024, 868 + dy))
    pa, pb = folder / "shift1.jpg", folder / "shift2.jpg"
    a.save(pa, quality=95)
    b.save(pb, quality=95)
    return pa, pb


def derive_ncn_weights(net) -> None:
    """Identity-like neighbourhood consensus, so that correlation peaks survive it.

    No trained checkpoint exists: the backbone keeps its seeded random weights (a random
    ResNet is translation-equivariant, so the shifted copy's features match the original's
    at the shifted cells), and each Conv4d weight becomes ``NCN_NOISE`` × its seeded random
    initialisation plus ``1 / in_channels`` at the centre tap of every (out, in) pair, bias
    0: the consensus then passes the mutual-matching volume through nearly unchanged (×2
    for the symmetric sum) instead of scrambling it. Costs are those of any weights.
    """
    import torch

    with torch.no_grad():
        for conv in (net.ncn.conv[0], net.ncn.conv[2]):
            w = conv.weight
            w.mul_(NCN_NOISE)
            c = w.shape[0] // 2
            w[c, :, :, c, c, c] += 1.0 / w.shape[2]
            conv.bias.zero_()


def set_variant(variant: str) -> None:
    """Swap the module globals between this implementation and the original's formulations."""
    import networks.ncn.conv4d as conv4d_mod
    import networks.ncn.model as ncn_model
    from networks.ncn import reference

    if not hasattr(set_variant, "fast"):
        set_variant.fast = (conv4d_mod.conv4d, ncn_model.correlation_maxpool4d)
    if variant == "naive":
        funcs = (reference.conv4d_loop, reference.correlation_then_maxpool4d)
    else:
        funcs = set_variant.fast
    conv4d_mod.conv4d, ncn_model.correlation_maxpool4d = funcs


def coarse_stage_timed(net, im1, im2, times: dict, amp: bool = False):
    """`Patch2Pix.predict_coarse(im1, im2, ksize=2)` (mutual, threshold 0) step by step,
    adding each step's seconds to `times`; returns the (N, 4) matches and (N,) scores."""
    import torch

    import networks.patch2pix as p2p
    from networks.ncn.model import feature_l2norm, mutual_matching
    from networks.utils import filter_coarse

    dtype = torch.bfloat16 if amp else None

    def step(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        times[name + "_cpu"] = times.get(name + "_cpu", 0.0) + time.process_time() - c0
        return out

    def backbone():
        with torch.autocast("cpu", dtype=dtype, enabled=amp):
            f1, f2 = p2p.extract_pair(net.extract, im1, im2, False)
        return f1[0].float(), f2[0].float()

    f1, f2 = step("backbone", backbone)
    f1, f2 = step("l2norm", lambda: (feature_l2norm(f1), feature_l2norm(f2)))
    corr, *delta = step("corr_pool", lambda: net.combine.pooled(f1, f2, 2))
    corr = step("mutual", lambda: mutual_matching(corr))
    corr = step("ncn", lambda: net.ncn(corr))  # float32 under amp too, as in forward
    corr = step("mutual", lambda: mutual_matching(corr))
    m, s = step(
        "extract", lambda: net.cal_coarse_matches(corr, tuple(delta), 2, net.upsample, True)
    )
    m, s = step("filter", lambda: filter_coarse(m, s, 0.0, True))
    return m[0], s[0]


NEAR_TIE = 1e-6  # relative top-2 gap under which an argmax decision is a float32 near-tie


def argmax_decisions(ref, other) -> dict:
    """How the per-cell argmax decisions of two final coarse volumes differ.

    Match extraction (`corr_to_matches`) takes, for every A cell, the argmax over the B
    cells and, for every B cell, the argmax over the A cells. For both directions this
    counts the decisions that differ between `ref` and `other` ((B, 1, H1, W1, H2, W2)
    volumes, e.g. the original's formulations and this implementation) and the relative
    gap between the two largest values of `ref` at those decisions: a difference that is
    only float32 rounding can flip a decision only where that gap is a few ulps.

    Returns:
        decisions, differ, near_ties (decisions of `ref` whose top-2 gap ≤ `NEAR_TIE`),
        max_gap_at_differ (largest top-2 gap of `ref` where the decisions differ), and
        max_abs_diff / max_value of the two volumes.
    """
    import torch

    b, _, h1, w1, h2, w2 = ref.shape
    out = {"decisions": 0, "differ": 0, "near_ties": 0, "max_gap_at_differ": 0.0}
    pairs = []
    for ib in range(b):  # per pair: A cells over B cells, and B cells over A cells
        r, o = ref[ib].reshape(h1 * w1, h2 * w2), other[ib].reshape(h1 * w1, h2 * w2)
        pairs += [(r, o), (r.T, o.T)]
    for x, y in pairs:
        top = x.topk(2, dim=1).values
        gap = (top[:, 0] - top[:, 1]) / top[:, 0].abs().clamp_min(torch.finfo(x.dtype).tiny)
        differ = x.argmax(dim=1) != y.argmax(dim=1)
        out["decisions"] += len(x)
        out["differ"] += int(differ.sum())
        out["near_ties"] += int((gap <= NEAR_TIE).sum())
        if differ.any():
            out["max_gap_at_differ"] = max(out["max_gap_at_differ"], float(gap[differ].max()))
    out["max_abs_diff"] = float((ref - other).abs().max())
    out["max_value"] = float(ref.abs().max())
    return out


def final_volumes(net, im1, im2) -> dict:
    """The final coarse volume (`Patch2Pix.forward`, ksize 2) with the fast and the naive
    variant (module globals restored to fast afterwards)."""
    out = {}
    try:
        for v in ("naive", "fast"):
            set_variant(v)
            out[v] = net(im1, im2, ksize=2)[0]
    finally:
        set_variant("fast")
    return out


def pair_worker(args: argparse.Namespace) -> None:
    """All variants in one process, interleaved per repetition (order rotated each time)."""
    import torch

    from utils.datasets.preprocess import load_im_flexible

    torch.set_num_threads(args.threads)
    net = build_net("fast", "cpu")
    derive_ncn_weights(net)
    im1, _ = load_im_flexible(args.im1, 2, net.upsample, imsize=1024)
    im2, _ = load_im_flexible(args.im2, 2, net.upsample, imsize=1024)
    im1, im2 = im1.unsqueeze(0), im2.unsqueeze(0)
    variants = ["fast", "naive", "bf16"]
    times: dict[str, list[dict]] = {v: [] for v in variants}
    matches = {}
    with torch.inference_mode():
        # The timed steps are the model's coarse path: same matches as predict_coarse.
        set_variant("fast")
        ref = net.predict_coarse(im1, im2, ksize=2, mutual=True)[0][0]
        for rep in range(args.repeats + 1):  # the first round is the warm-up
            for v in variants[rep % 3 :] + variants[: rep % 3]:
                set_variant("naive" if v == "naive" else "fast")
                t: dict[str, float] = {}
                t0, c0 = time.perf_counter(), time.process_time()
                m, _ = coarse_stage_timed(net, im1, im2, t, amp=v == "bf16")
                t["total"] = time.perf_counter() - t0
                t["total_cpu"] = time.process_time() - c0
                if rep:
                    times[v].append(t)
                matches[v] = m
                print(f"rep {rep} {v} {t['total']:.2f}s {len(m)} matches", file=sys.stderr)
        set_variant("fast")
        vols = final_volumes(net, im1, im2)
    out = {
        "threads": args.threads,
        "decisions": argmax_decisions(vols["naive"], vols["fast"]),
        "predict_coarse_equal": bool(torch.equal(ref, matches["fast"])),
        "times": times,
        "matches": {v: m.tolist() for v, m in matches.items()},
    }
    print(json.dumps(out))


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """How the coarse matches `b` agree with the reference `a` ((N, 4) pixel rows)."""
    sa, sb = {tuple(r) for r in a.tolist()}, {tuple(r) for r in b.tolist()}
    out = {"n_ref": len(sa), "n": len(sb), "identical": len(sa & sb)}
    if len(a) and len(b):
        # For each row of b, the reference row with the same first point (if any).
        by_p1 = {tuple(r[:2]): r for r in a.tolist()}
        d = [
            np.abs(np.subtract(r[2:], by_p1[tuple(r[:2])][2:])).max()
            for r in b.tolist()
            if tuple(r[:2]) in by_p1
        ]
        out["same_p1"] = len(d)
        out["p2_diff_px_max"] = float(max(d)) if d else 0.0
        out["p2_diff_px_mean"] = float(np.mean(d)) if d else 0.0
    return out


def pair_main(args: argparse.Namespace) -> str:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        ims = make_shifted_pair(Path(tmp))
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.bench_matching",
            "--pair-worker",
            "--im1",
            str(ims[0]),
            "--im2",
            str(ims[1]),
            "--threads",
            str(args.threads),
            "--repeats",
            str(args.repeats),
        ]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"pair benchmark failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    m = {v: np.array(x, dtype=np.int64).reshape(-1, 4) for v, x in res["matches"].items()}
    same = np.array_equal(m["fast"], m["naive"])
    agree = agreement(m["fast"], m["bf16"])
    dec = res["decisions"]
    steps = ["backbone", "l2norm", "corr_pool", "mutual", "ncn", "extract", "filter", "total"]
    load = os.getloadavg()
    lines = [
        f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — {platform.node() or 'host'}: "
        "coarse stage on the representative pair",
        "",
        f"- command: `python -m benchmarks.bench_matching --pair --threads {args.threads} "
        f"--repeats {args.repeats}`",
        f"- machine: {platform.processor() or platform.machine()}, {args.threads} torch "
        f"threads, torch {torch.__version__}; load average at the end {load[0]:.1f} / "
        f"{load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)",
        f"- inputs: `make_shifted_pair` (two 1024×768 JPEGs, the second shifted by {SHIFT} "
        "px), imsize 1024, ksize 2, seeded random backbone, identity-like NCN "
        f"(`derive_ncn_weights`, noise {NCN_NOISE}); the three variants run in one process, "
        f"interleaved, {args.repeats} repetitions after a warm-up round; median (min–max) "
        "wall s, and process CPU s (all threads; read it when other jobs share the cores).",
        f"- coarse mutual matches: fast {len(m['fast'])}, naive {len(m['naive'])}, "
        f"bf16 {len(m['bf16'])}; fast = naive (identical matches): "
        f"**{'yes' if same else 'NO'}**; timed steps = `predict_coarse`: "
        f"{'yes' if res['predict_coarse_equal'] else 'NO'}",
        f"- bf16 against fast (float32): {agree['identical']} of {agree['n_ref']} float32 "
        f"matches found identically ({agree['identical'] / max(agree['n_ref'], 1):.1%}); "
        f"bf16 rows whose first point is a float32 match's: {agree.get('same_p1', 0)} of "
        f"{agree['n']}, their second points differ by {agree.get('p2_diff_px_mean', 0):.2f} "
        f"px on average, {agree.get('p2_diff_px_max', 0):.0f} px at most",
        "- argmax decisions of match extraction (per A cell and per B cell) on the final "
        f"coarse volume, naive vs fast: {dec['differ']} of {dec['decisions']} differ; the "
        "largest top-2 gap of the naive volume where they differ is "
        f"{dec['max_gap_at_differ']:.1e} (relative); decisions of the naive volume with "
        f"a top-2 gap ≤ {NEAR_TIE:g}: "
        f"{dec['near_ties']}; volumes differ by ≤ {dec['max_abs_diff']:.1e} (values ≤ "
        f"{dec['max_value']:.2f})",
        "",
        "| step | fast s | naive s | bf16 s | naive / fast | fast / bf16 |",
        "|---|---|---|---|---|---|",
    ]

    def cell(v, k):
        x = [t[k] for t in res["times"][v]]
        return statistics.median(x), f"{statistics.median(x):.2f} ({min(x):.2f}–{max(x):.2f})"

    rows = [(k, k) for k in steps]
    rows += [
        (f"{k} (process CPU s)", f"{k}_cpu") for k in ("backbone", "corr_pool", "ncn", "total")
    ]
    for label, k in rows:
        (f, fs), (n, ns), (b, bs) = cell("fast", k), cell("naive", k), cell("bf16", k)
        bold = "**" if k == "total" else ""
        lines.append(
            f"| {bold}{label}{bold} | {fs} | {ns} | {bs} | {bold}{n / max(f, 1e-9):.2f}×{bold} | "
            f"{f / max(b, 1e-9):.2f}× |"
        )
    ratios = [
        t_n["total"] / t_f["total"] for t_n, t_f in zip(res["times"]["naive"], res["times"]["fast"])
    ]
    lines.append("")
    lines.append("- naive / fast total per repetition: " + ", ".join(f"{r:.2f}×" for r in ratios))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--imsizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu [+ cuda]")
    ap.add_argument("--out", default=None, help="append a Markdown report to this file")
    ap.add_argument(
        "--tf32",
        choices=["default", "off"],
        default="default",
        help="CUDA: 'off' turns TF32 off in cuDNN convolutions and matrix products",
    )
    ap.add_argument(
        "--pair",
        action="store_true",
        help="time the coarse stage on the representative shifted 1024x768 pair instead "
        "(fast, naive and bf16 interleaved in one process, per step)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pair-worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--device", "--variant", "--im1", "--im2", "--save"):
        ap.add_argument(flag, help=argparse.SUPPRESS)
    ap.add_argument("--imsize", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.pair_worker:
        pair_worker(args)
        return
    if args.pair:
        report = pair_main(args)
        print(report)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(report + "\n")
        return

    import torch

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ims = make_images(Path(tmp))
        for device in devices:
            for imsize in args.imsizes:
                res = {
                    v: run_case(device, v, imsize, ims, args.threads, args.repeats, tmp, args.tf32)
                    for v in ("fast", "naive")
                }
                same = identical(res["fast"]["save"], res["naive"]["save"])
                rows.append((device, imsize, res, same))
                f, n = res["fast"], res["naive"]
                print(
                    f"{device} imsize {imsize}: estimate_matches"
                    f" fast {f['estimate_matches_s']:.2f}s"
                    f" naive {n['estimate_matches_s']:.2f}s | coarse fast {f['coarse_s']:.2f}s"
                    f" naive {n['coarse_s']:.2f}s ({n['coarse_s'] / f['coarse_s']:.1f}x)"
                    f" | peak fast {f['peak_gib']:.2f} naive {n['peak_gib']:.2f} GiB"
                    f" | identical matches: {same}",
                    flush=True,
                )
    report = render(rows, args, devices)
    print(report)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(report + "\n")


def render(rows, args, devices) -> str:
    import torch

    gpus = [d for d in devices if d.startswith("cuda")]
    gpu = torch.cuda.get_device_name(gpus[0]) if gpus else None
    lines = [
        f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — {platform.node() or 'host'}",
        "",
        f"- command: `python -m benchmarks.bench_matching --threads {args.threads} "
        f"--repeats {args.repeats} --imsizes {' '.join(map(str, args.imsizes))} "
        f"--tf32 {args.tf32}`",
        f"- machine: {platform.processor() or platform.machine()}, "
        f"{args.threads} torch threads, "
        f"torch {torch.__version__}" + (f", GPU {gpu}" if gpu else ", no GPU"),
        "- inputs: 768×1024 and 769×899 photographs (scikit-image), seeded random weights, "
        "default config (ResNet34, change_stride, ksize 2); times are medians of the repeats "
        "after one warm-up; peak = process RSS (CPU) or CUDA allocator peak.",
        "",
        "| device | imsize | variant | estimate_matches s | coarse stage s | backbone | "
        "corr + maxpool | ncn | peak GiB | matches |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for device, imsize, res, same in rows:
        for v in ("fast", "naive"):
            r = res[v]
            p = r["parts_s"]
            lines.append(
                f"| {device} | {imsize} | {v} | {r['estimate_matches_s']:.2f} | "
                f"{r['coarse_s']:.2f} | {p['backbone']:.2f} | {p['corr_pool']:.2f} | "
                f"{p['ncn']:.2f} | {r['peak_gib']:.2f} | {r['n_matches']} |"
            )
        f, n = res["fast"], res["naive"]
        lines.append(
            f"| {device} | {imsize} | **naive / fast** | "
            f"**{n['estimate_matches_s'] / f['estimate_matches_s']:.1f}×** | "
            f"**{n['coarse_s'] / f['coarse_s']:.1f}×** | | "
            f"{n['parts_s']['corr_pool'] / max(f['parts_s']['corr_pool'], 1e-9):.1f}× | "
            f"{n['parts_s']['ncn'] / max(f['parts_s']['ncn'], 1e-9):.1f}× | | "
            f"identical: {'yes' if same else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
