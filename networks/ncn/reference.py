"""The original's formulations of the 4D convolution and relocalisation pool (slow, exact).

Kept as references for the tests and the benchmark (`benchmarks/bench_matching.py`): the
4D convolution loops over the first spatial dimension and sums 3D convolutions; the pool
stacks the k⁴ strided slices. Not used by the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import correlation_4d


def conv4d_loop(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Slice-loop 4D convolution. x (B,Cin,H,W,D,T); weight (k1,Cout,Cin,k2,k3,k4)."""
    b, c, h, w, d, t = x.shape
    k1, cout = weight.shape[:2]
    pad = k1 // 2
    # Like the original: permute once so that every slice is contiguous inside the loop.
    xs = F.pad(x, (0, 0, 0, 0, 0, 0, pad, pad)).permute(2, 0, 1, 3, 4, 5).contiguous()
    pad3d = tuple(k // 2 for k in weight.shape[3:])
    out = []
    for i in range(h):
        acc = F.conv3d(xs[i + pad], weight[pad], bias, padding=pad3d)
        for p in range(1, pad + 1):
            acc = acc + F.conv3d(xs[i + pad - p], weight[pad - p], None, padding=pad3d)
            acc = acc + F.conv3d(xs[i + pad + p], weight[pad + p], None, padding=pad3d)
        out.append(acc)
    return torch.stack(out, dim=2)


def maxpool4d_slices(corr: Tensor, k_size: int = 2) -> tuple[Tensor, ...]:
    """Strided-slice relocalisation pool; returns pooled volume and max_i..max_l offsets."""
    k = k_size
    slices = [
        corr[:, 0, i::k, j::k, kk::k, ll::k].unsqueeze(1)
        for i in range(k)
        for j in range(k)
        for kk in range(k)
        for ll in range(k)
    ]
    pooled, idx = torch.cat(slices, dim=1).max(dim=1, keepdim=True)
    max_l = idx % k
    max_k = (idx // k) % k
    max_j = (idx // (k * k)) % k
    max_i = idx // (k * k * k)
    return pooled, max_i, max_j, max_k, max_l


def correlation_then_maxpool4d(f1: Tensor, f2: Tensor, k_size: int = 2) -> tuple[Tensor, ...]:
    """The original's order: the full-resolution correlation volume, then the slice pool."""
    return maxpool4d_slices(correlation_4d(f1, f2), k_size)
