"""Benchmark: Patch2Pix training steps at the paper's setting, variant by variant.

Setting (performance.md, last row): 320×480 images, default model (ResNet34, change_stride,
feat_idx 0..3, regressors 512/512 conv, 512/256 FC), ksize 2, panc 8, ptmax 400 (3,200 anchor
rows per image and regressor), regr_batch 1200, Adam; one step = forward, the loss of
training.md §3 (every row counts), backward and the optimiser step (``train_step``).

Variants are (batch, --amp, --grad_ckpt). Each runs in a fresh Python process, one after the
other, so that its peak memory is its own: on CPU the peak RSS of that process (ru_maxrss),
on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``; the JSON rows also
carry ``max_memory_reserved``, what the caching allocator held). Per variant the table
gives the median step time, peak memory, rows per regressor and the ratios against the
float32 / no-checkpointing baseline of the same batch (or, when that batch has no baseline
in the run, the batch-1 baseline per image pair).

    python -m benchmarks.bench_train_step                      # the default variants below
    python -m benchmarks.bench_train_step --device cuda --variants 1,off,0 1,bf16,0 4,bf16,1
    python -m benchmarks.bench_train_step --variants 1,off,0 --steps 1 --warmup 0
    python -m benchmarks.bench_train_step --warmup 1 --warmup_max_batch 1   # RESULTS.md run 2

Default variants: batch 1 with every combination of --amp off/bf16 and --grad_ckpt off/on,
then batch 4 with --grad_ckpt (off and bf16). fp16 runs on CUDA only.
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
import time
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_VARIANTS = ["1,off,0", "1,off,1", "1,bf16,0", "1,bf16,1", "4,off,1", "4,bf16,1"]


FORMS = ("new", "old", "compile")


@dataclass(frozen=True)
class Variant:
    """One benchmark variant: batch size, --amp mode, --grad_ckpt and the formulation of
    the regressor input: ``new`` (patches sampled straight into the regressor's
    channels-last layout, `sample_patch_pairs`), ``old`` (the formulation before issue 17:
    NCHW levels, `select_local_patch_feats`, two L2 norms, transposes and a ``cat``
    (`old_regress_chunk`), the regressors' ``MaxPool2d``) or ``compile`` (``new`` with
    both regressors ``torch.compile``d)."""

    batch: int
    amp: str
    ckpt: bool
    form: str = "new"

    @classmethod
    def parse(cls, text: str) -> Variant:
        try:
            b, amp, ck, *form = text.split(",")
            if len(form) > 1:
                raise ValueError
            v = cls(int(b), amp, bool(int(ck)), *form)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--variants: expected BATCH,AMP,CKPT[,FORM] (e.g. 4,bf16,1 or 1,off,0,old), "
                f"got {text!r}"
            ) from None
        if v.batch < 1 or v.amp not in ("off", "bf16", "fp16") or v.form not in FORMS:
            raise argparse.ArgumentTypeError(f"--variants: bad variant {text!r}")
        return v

    def __str__(self) -> str:
        tail = "" if self.form == "new" else f",{self.form}"
        return f"{self.batch},{self.amp},{int(self.ckpt)}{tail}"

    @property
    def label(self) -> str:
        prec = "fp32" if self.amp == "off" else self.amp
        label = f"batch {self.batch}, {prec}" + (", grad_ckpt" if self.ckpt else "")
        return label + ("" if self.form == "new" else f", {self.form}")


def old_regress_chunk(self, feats1, feats2, ib, chunk, psize, ptype, regressor, lo, hi):
    """`Patch2Pix._regress_chunk` as it was before issue 17 (the "old" formulation):
    (D, N·p²) blocks from `select_local_patch_feats`, L2-normalised each, viewed and
    transposed to (N, D, p, p), concatenated over channels."""
    from networks.ncn.model import feature_l2norm
    from networks.utils import select_local_patch_feats

    with torch.autocast(chunk.device.type, enabled=False):
        f1s, f2s = select_local_patch_feats(
            feats1, feats2, ib, chunk, self.feat_idx, self.feats_downsample, psize, ptype
        )
        n = chunk.shape[0]
        f1s = feature_l2norm(f1s.float(), dim=0).view(-1, n, psize, psize).transpose(0, 1)
        f2s = feature_l2norm(f2s.float(), dim=0).view(-1, n, psize, psize).transpose(0, 1)
        patches = torch.cat([f1s, f2s], dim=1)
    out = regressor(patches).float()
    offset = psize * torch.tanh(torch.relu(out[:, :4])) - psize // 2
    return torch.clamp(chunk + offset, lo, hi), torch.sigmoid(out[:, 4])


def apply_form(net, form: str) -> None:
    """Switch `net` (a Patch2Pix) to the formulation `form` of `Variant`."""
    import types

    import networks.patch2pix as p2p

    if form == "old":
        p2p.channels_last_levels = lambda feats, feat_idx: list(feats)  # levels stay NCHW
        net._regress_chunk = types.MethodType(old_regress_chunk, net)
        for reg in {net.regress_mid, net.regress_fine}:  # the pool as it was: MaxPool2d
            reg._pooled = lambda x, reg=reg: reg.pool(reg.conv(x)).flatten(1)
    elif form == "compile":
        net.regress_mid = torch.compile(net.regress_mid)
        net.regress_fine = torch.compile(net.regress_fine)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="benchmarks.bench_train_step", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        type=Variant.parse,
        default=[Variant.parse(v) for v in DEFAULT_VARIANTS],
        help="BATCH,AMP,CKPT triples (AMP off|bf16|fp16, CKPT 0|1)",
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    ap.add_argument(
        "--warmup_max_batch",
        type=int,
        default=0,
        help="variants with a larger batch skip the warm-up (0: none skips it)",
    )
    ap.add_argument("--ptmax", type=int, default=400, help="coarse matches per pair")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument(
        "--tf32",
        choices=["default", "off"],
        default="default",
        help="CUDA: 'off' turns TF32 off in cuDNN convolutions and matrix products "
        "(default: PyTorch's, i.e. what training gets: TF32 convolutions)",
    )
    ap.add_argument(
        "--cudnn_deterministic",
        action="store_true",
        help="cudnn.deterministic=True as train_patch2pix sets it (seed_all); "
        "off by default, as in the recorded runs",
    )
    ap.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="after the timed steps, profile one more step of each variant and "
        "write its operator table to DIR/profile_<variant>.txt",
    )
    ap.add_argument("--child", type=Variant.parse, default=None, help=argparse.SUPPRESS)
    return ap


# ----------------------------------------------------------------------------- one variant
def run_variant(v: Variant, args: Namespace) -> dict:
    """Build the model, run warm-up + timed steps of `v` in this process; returns its row."""
    from networks.config import RegressorConfig
    from networks.patch2pix import Patch2Pix
    from utils.train.amp import MixedPrecision
    from utils.train.losses import LossConfig
    from utils.train.trainer import train_step

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    if args.tf32 == "off":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if args.cudnn_deterministic:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    rc = RegressorConfig(panc=8).to_namespace()  # the released regressors, training
    oc = Namespace(
        opt="adam",
        lr_init=5e-4,
        weight_decay=0,
        lr_decay=None,
        optimizer_dict=None,
        lr_scheduler_dict=None,
    )
    net = Patch2Pix(
        Namespace(
            training=True,
            device=dev,
            backbone="ResNet34",
            change_stride=True,
            feat_idx=[0, 1, 2, 3],
            regressor_config=rc,
            regr_batch=1200,
            weights_dict=None,
            imagenet_init=False,
            freeze_feat=87,
            start_epoch=0,
            optim_config=oc,
            grad_ckpt=v.ckpt,
        )
    ).train()
    apply_form(net, v.form)
    amp = MixedPrecision.create(v.amp, dev)
    batch = {
        "src_im": torch.randn(v.batch, 3, 320, 480, device=dev),
        "pos_im": torch.randn(v.batch, 3, 320, 480, device=dev),
        # a plausible F at training resolution: a sideways camera translation
        "F": torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], device=dev).expand(
            v.batch, 3, 3
        ),
    }
    cfg = LossConfig(cls_dthres=(1e9, 1e9), epi_dthres=(1e9, 1e9))  # every row counts
    cuda = dev.type == "cuda"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    rows, times, first_step = 0, [], None
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        out, _ = train_step(net, batch, cfg, ksize=2, ptmax=args.ptmax, amp=amp)
        if cuda:
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        first_step = dt if first_step is None else first_step
        rows = sum(int(d.cdist.shape[0]) for d in out.dists) // v.batch
        if i >= args.warmup:
            times.append(dt)
    peak = (
        torch.cuda.max_memory_allocated(dev) / 2**30
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    if args.profile:
        profile_step(
            lambda: train_step(net, batch, cfg, ksize=2, ptmax=args.ptmax, amp=amp),
            Path(args.profile) / f"profile_{str(v).replace(',', '_')}.txt",
            dev,
        )
    return {
        "variant": str(v),
        "label": v.label,
        "batch": v.batch,
        "amp": v.amp,
        "grad_ckpt": v.ckpt,
        "form": v.form,
        "first_step_s": first_step,
        "device": str(dev),
        "threads": args.threads,
        "tf32": args.tf32,
        "rows_per_regressor": rows * v.batch,
        "rows_per_image": rows,
        "step_s": statistics.median(times),
        "steps": len(times),
        "warmup": args.warmup,
        "peak_gib": round(peak, 2),
        "rss_after_build_gib": round(rss_before, 2),
        "reserved_gib": (round(torch.cuda.max_memory_reserved(dev) / 2**30, 2) if cuda else None),
        "loss": float(out.loss.detach()),
    }


def profile_step(step, path: Path, dev: torch.device) -> None:
    """Run `step` once under torch.profiler; its operators by total device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = dev.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        step()
        if cuda:
            torch.cuda.synchronize(dev)
    key = "cuda_time_total" if cuda else "cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=40))


# ----------------------------------------------------------------------------- the run
def run_child(v: Variant, args: Namespace) -> dict:
    """Run `v` in a fresh process; returns its row (or the reason it failed)."""
    warmup = 0 if 0 < args.warmup_max_batch < v.batch else args.warmup
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_train_step",
        "--child",
        str(v),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        "--warmup",
        str(warmup),
        "--ptmax",
        str(args.ptmax),
        "--tf32",
        args.tf32,
    ]
    if args.cudnn_deterministic:
        cmd.append("--cudnn_deterministic")
    if args.profile:
        cmd += ["--profile", args.profile]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {
            "variant": str(v),
            "label": v.label,
            "batch": v.batch,
            "error": tail,
            "returncode": proc.returncode,
        }
    row = json.loads(lines[-1])
    row.update(
        wall_s=round(wall, 1), load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2)
    )
    return row


def add_ratios(rows: list[dict]) -> None:
    """time_ratio / peak_ratio against the fp32, no-checkpoint row of the same batch, else
    (per image pair) against the batch-1 baseline; > 1 means slower / more memory."""
    base = {
        r["batch"]: r
        for r in rows
        if "error" not in r
        and r["amp"] == "off"
        and not r["grad_ckpt"]
        and r.get("form", "new") == "new"
    }
    for r in rows:
        if "error" in r:
            continue
        b = base.get(r["batch"])
        per_pair = b is None and 1 in base
        b = b or base.get(1)
        if b is None:
            continue
        scale = r["batch"] / b["batch"]
        r["baseline"] = b["variant"]
        r["time_ratio"] = round(r["step_s"] / (b["step_s"] * scale), 3)
        r["peak_ratio"] = round(r["peak_gib"] / b["peak_gib"], 3)
        r["per_pair"] = per_pair


def markdown(rows: list[dict]) -> str:
    """The result table (RESULTS.md layout)."""
    out = [
        "| variant | rows per regressor | step s | first step s | peak GiB | time vs baseline | "
        "peak vs baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['label']} | | failed: {r['error'][:60]} | | | | |")
            continue
        tr = f"{r['time_ratio']:.2f}×" if "time_ratio" in r else ""
        if r.get("per_pair"):
            tr += " per pair"
        pr = f"{r['peak_ratio']:.2f}×" if "peak_ratio" in r else ""
        out.append(
            f"| {r['label']} | {r['rows_per_regressor']} | {r['step_s']:.3g} | "
            f"{r.get('first_step_s') or 0:.3g} | {r['peak_gib']:.2f} | {tr} | {pr} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_variant(args.child, args)), flush=True)
        return 0
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else ""
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {platform.machine()}, "
        f"torch {torch.__version__}, device {args.device} {name}, {args.threads} threads, "
        f"{os.cpu_count()} cores, tf32 {args.tf32}",
        flush=True,
    )
    rows = []
    for v in args.variants:
        row = run_child(v, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    add_ratios(rows)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    failed = [r["variant"] for r in rows if "error" in r]
    if failed:
        print(f"bench_train_step: variants failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
