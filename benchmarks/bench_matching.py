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
"""

from __future__ import annotations

import argparse
import json
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
    from networks.ncn import reference

    if variant == "naive":  # the module globals that Conv4d / FeatureCorrelation call
        conv4d_mod.conv4d = reference.conv4d_loop
        ncn_model.correlation_maxpool4d = reference.correlation_then_maxpool4d
    torch.manual_seed(0)
    rc = Namespace(
        conv_dims=[512, 512],
        conv_kers=[3, 3],
        conv_strs=[2, 1],
        fc_dims=[512, 256],
        feat_comb="pre",
        psize=[16, 16],
        pshift=8,
        panc=1,
        shared=False,
    )
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
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--device", "--variant", "--im1", "--im2", "--save"):
        ap.add_argument(flag, help=argparse.SUPPRESS)
    ap.add_argument("--imsize", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
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
