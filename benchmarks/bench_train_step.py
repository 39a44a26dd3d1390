"""Benchmark: one Patch2Pix training step at the paper's setting (performance.md, last row).

Batch 1, 320×480 images, panc 8, ptmax 400 (3,200 anchor rows per regressor), default
model configuration, Adam; forward, the loss of training.md §3 and backward + step. Prints
the median step time and the process's peak RSS (or CUDA allocator peak).

    python -m benchmarks.bench_train_step [--threads 2] [--steps 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from argparse import Namespace

import torch

from networks.patch2pix import Patch2Pix
from utils.train.losses import LossConfig, batch_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ptmax", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rc = Namespace(conv_dims=[512, 512], conv_kers=[3, 3], conv_strs=[2, 1], fc_dims=[512, 256],
                   feat_comb="pre", psize=[16, 16], pshift=8, panc=8, shared=False)
    oc = Namespace(opt="adam", lr_init=5e-4, weight_decay=0, lr_decay=None,
                   optimizer_dict=None, lr_scheduler_dict=None)
    net = Patch2Pix(Namespace(
        training=True, device=args.device, backbone="ResNet34", change_stride=True,
        feat_idx=[0, 1, 2, 3], regressor_config=rc, regr_batch=1200, weights_dict=None,
        imagenet_init=False, freeze_feat=87, start_epoch=0, optim_config=oc)).train()
    im1 = torch.randn(1, 3, 320, 480, device=args.device)
    im2 = torch.randn(1, 3, 320, 480, device=args.device)
    # A plausible F at training resolution: a sideways camera translation.
    F = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]], device=args.device)
    cfg = LossConfig(cls_dthres=(1e9, 1e9), epi_dthres=(1e9, 1e9))  # every row counts

    def step():
        coarse, mid, mid_p, fine, fine_p = net.forward_train(im1, im2, ksize=2, ptmax=args.ptmax)
        out = batch_loss(coarse, mid, mid_p, fine, fine_p, F, cfg)
        net.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        net.optimizer.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return coarse[0].shape[0]

    rows = step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    print(json.dumps({"device": args.device, "threads": args.threads, "rows_per_regressor": rows,
                      "step_s": statistics.median(times), "peak_gib": round(peak, 2)}))


if __name__ == "__main__":
    main()
