"""Benchmark: can the MegaDepth loader feed a GPU training step? (issue 17)

Times `ImMatchDatasetMega` alone (JPEG decode, crop, bicubic resize to the paper's 320×480,
normalisation, F / K) through a `DataLoader` at batch 4 with 0 / 2 / 4 / 8 workers, and
the CPU seconds one pair costs (workers 0, one torch thread, process CPU time: robust when
other jobs share the cores). Against a recorded GPU step time it reports the pairs per
second a GPU consumes and how many cores decoding needs to keep up:
``cores = (batch / step_s) · cpu_s_per_pair``.

    python -m benchmarks.bench_loader --data_root DATA --pair_file PAIRS.npy \\
        [--workers 0 2 4 8] [--pairs 64] [--gpu_step_s 0.356 0.255] [--out benchmarks/RESULTS.md]

The recorded run (benchmarks/RESULTS.md) used two synthetic scenes at MegaDepth's largest
image size, and their training-pair file:

    python -m data_pairs.make_synthetic --out DATA --scenes 1 --images_per_scene 12 \\
        --val_scenes 0 --width 1600 --height 1200 --supersample 1 --portrait_every 0
    python -m data_pairs.make_synthetic --out DATA --scenes 1 --first_scene_id 9001 --seed 1 \\
        --images_per_scene 12 --val_scenes 0 --width 1600 --height 1200 --supersample 1 \\
        --portrait_every 0
    python -m data_pairs.prep_megadepth_training_pairs --base_dir DATA/MegaDepth_undistort \\
        --save_dir PAIRS_DIR
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone


def make_dataset(args):
    from utils.datasets import ImMatchDatasetMega

    return ImMatchDatasetMega(
        args.data_root, args.pair_file, wt=480, ht=320, item_type=args.item_type
    )


def cpu_per_pair(args) -> tuple[float, float, tuple[int, int]]:
    """Process CPU seconds per pair (median, spread) with workers 0, 1 torch thread."""
    import torch

    torch.set_num_threads(1)
    ds = make_dataset(args)
    ds[0]  # warm-up (imports, caches)
    per = []
    for i in range(min(args.pairs, len(ds))):
        c0 = time.process_time()
        ds[i % len(ds)]
        per.append(time.process_time() - c0)
    from PIL import Image

    scene, p = ds.pairs[0]
    with Image.open(os.path.join(ds.scene_roots[scene], p.im1)) as im:
        size = im.size
    return statistics.median(per), max(per) - min(per), size


def loader_rate(args, workers: int) -> tuple[float, float]:
    """(pairs / s after the first batch, seconds to the first batch) over `args.pairs` pairs."""
    from torch.utils.data import DataLoader

    ds = make_dataset(args)
    dl = DataLoader(ds, batch_size=args.batch, shuffle=False, num_workers=workers)
    n, t0 = 0, time.perf_counter()
    t_first = None
    while n < args.pairs:
        for batch in dl:
            if t_first is None:
                t_first = time.perf_counter()
                n_first = len(batch["src_im"])
            n += len(batch["src_im"])
            if n >= args.pairs:
                break
    t1 = time.perf_counter()
    return (n - n_first) / max(t1 - t_first, 1e-9), t_first - t0


MODULE = "benchmarks.bench_loader"


def _main(argv=None) -> None:
    from utils.common.cli import make_parser

    ap = make_parser(MODULE, __doc__.split("\n")[0])
    ap.add_argument("--data_root", required=True)
    ap.add_argument("--pair_file", required=True)
    ap.add_argument("--item_type", default="triplet", choices=["triplet", "pair"])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument(
        "--gpu_step_s",
        type=float,
        nargs="+",
        default=[0.356, 0.255],
        help="GPU step times to feed (default: the H100 batch-4 TF32 / bf16 steps recorded "
        "in RESULTS.md)",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    cpu, spread, size = cpu_per_pair(args)
    rates = {w: loader_rate(args, w) for w in args.workers}
    load = os.getloadavg()
    lines = [
        f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — {platform.node() or 'host'}: "
        "MegaDepth loader alone",
        "",
        f"- command: `python -m benchmarks.bench_loader --data_root {args.data_root} "
        f"--pair_file {args.pair_file} --workers {' '.join(map(str, args.workers))} "
        f"--pairs {args.pairs} --batch {args.batch} --item_type {args.item_type}`",
        f"- machine: {os.cpu_count()} cores, torch {torch.__version__}; load average at the "
        f"end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; images {size[0]}×{size[1]} JPEG "
        f"→ 480×320, item '{args.item_type}' ({3 if args.item_type == 'triplet' else 2} "
        "images per pair)",
        f"- CPU per pair (workers 0, 1 thread, process CPU time): **{cpu * 1e3:.0f} ms** "
        f"(spread {spread * 1e3:.0f} ms over {args.pairs} pairs)",
        "",
        "| workers | pairs / s (wall) | first batch s |",
        "|---|---|---|",
    ]
    for w, (r, first) in rates.items():
        lines.append(f"| {w} | {r:.1f} | {first:.2f} |")
    lines += [
        "",
        "| GPU step s (batch 4) | pairs / s needed | cores needed at the CPU cost above |",
    ]
    lines.append("|---|---|---|")
    for s in args.gpu_step_s:
        need = args.batch / s
        lines.append(f"| {s} | {need:.1f} | {need * cpu:.1f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(report + "\n")


def main(argv=None) -> int:
    """Entry point: a missing or unreadable data root / pair file, or a data set the item
    type cannot use, is one line naming it (exit 2)."""
    from utils.common.cli import run_command

    return run_command(MODULE, _main, argv, extra=(FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
