"""NCNet components of Patch2Pix: correlation, relocalisation pool, mutual matching, consensus."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv4d import Conv4d


def feature_l2norm(feat: Tensor, dim: int = 1) -> Tensor:
    """``f / sqrt(sum(f²) + 1e-6)`` over `dim` (the original's normalisation)."""
    return feat / torch.sqrt(feat.pow(2).sum(dim, keepdim=True) + 1e-6)


def correlation_4d(f1: Tensor, f2: Tensor) -> Tensor:
    """Dense 4D correlation of two (already normalised) feature maps.

    Args:
        f1: (B, C, h1, w1); f2: (B, C, h2, w2).
    Returns:
        (B, 1, h1, w1, h2, w2) with ``corr[b,0,i,j,k,l] = <f1[b,:,i,j], f2[b,:,k,l]>``.
    """
    b, c, h1, w1 = f1.shape
    h2, w2 = f2.shape[-2:]
    corr = torch.bmm(f1.reshape(b, c, h1 * w1).transpose(1, 2), f2.reshape(b, c, h2 * w2))
    return corr.view(b, 1, h1, w1, h2, w2)


class FeatureCorrelation(nn.Module):
    """The original's parameter-free correlation module (Patch2Pix's ``combine``).

    ``combine(f1, f2)`` is `correlation_4d`; :meth:`pooled` is the fused correlation +
    relocalisation pool that the model's forward uses for ``ksize > 1``. Being a module lets
    outside code move it between devices by name, as with the original (it holds nothing).

    Args:
        shape: only '4D' (the original's Patch2Pix setting).
        normalization: only False (the original's Patch2Pix setting; features are
            L2-normalised before the correlation instead).
    """

    def __init__(self, shape: str = "4D", normalization: bool = False) -> None:
        super().__init__()
        if shape != "4D" or normalization:
            raise ValueError("FeatureCorrelation supports shape='4D', normalization=False only")
        self.shape = shape
        self.normalization = normalization

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        """(B, C, h1, w1), (B, C, h2, w2) → (B, 1, h1, w1, h2, w2)."""
        return correlation_4d(f1, f2)

    def pooled(self, f1: Tensor, f2: Tensor, k_size: int) -> tuple[Tensor, ...]:
        """``maxpool4d(self(f1, f2), k_size)`` without the full volume (`correlation_maxpool4d`)."""
        return correlation_maxpool4d(f1, f2, k_size)


def maxpool4d(corr: Tensor, k_size: int = 2) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Relocalisation max-pool over k⁴ blocks, remembering the argmax offsets.

    Ties go to the first entry in (di, dj, dk, dl) row-major order. Computed as two 2D
    max-pools (over (k, l) for every A cell, then over (i, j) on a channels-last view),
    which reads the volume once instead of copying it into k⁴ slices; each 2D pool keeps
    the first maximum of its window, so the combined tie rule is the row-major one.

    Args:
        corr: (B, 1, H1, W1, H2, W2), every size a multiple of `k_size`.
    Returns:
        pooled (B, 1, H1/k, W1/k, H2/k, W2/k) and the int64 offsets max_i, max_j, max_k,
        max_l of the same shape.
    """
    b, c, h1, w1, h2, w2 = corr.shape
    k = k_size
    if any(s % k for s in (h1, w1, h2, w2)):
        raise ValueError(f"maxpool4d: sizes {(h1, w1, h2, w2)} are not multiples of {k}")
    hk1, wk1, hk2, wk2 = h1 // k, w1 // k, h2 // k, w2 // k
    # Stage 1: pool (k, l) for each A cell; indices are flat positions in the H2×W2 plane.
    v1, idx_b = F.max_pool2d(corr.reshape(b * c * h1 * w1, 1, h2, w2), k, return_indices=True)
    # Stage 2: pool (i, j); (B·C, H1, W1, hk2·wk2) is a channels-last (B·C, hk2·wk2, H1, W1).
    v1 = v1.view(b * c, h1, w1, hk2 * wk2).permute(0, 3, 1, 2)
    v2, idx_a = F.max_pool2d(v1, k, return_indices=True)  # flat positions in the H1×W1 plane
    shape = (b, c, hk1, wk1, hk2, wk2)
    pooled = v2.permute(0, 2, 3, 1).reshape(shape)
    idx_a = idx_a.permute(0, 2, 3, 1).reshape(b * c, hk1 * wk1, hk2 * wk2)
    idx_b = idx_b.view(b * c, h1 * w1, hk2 * wk2).gather(1, idx_a)

    # Windows are aligned with k and the widths are multiples of k, so x % k = (x % w) % k;
    # for a power of two, x % k is x & (k - 1), which is much cheaper on int64.
    def mod_k(x: Tensor) -> Tensor:
        return x & (k - 1) if k & (k - 1) == 0 else x % k

    max_i, max_j = mod_k(idx_a // w1), mod_k(idx_a)
    max_k, max_l = mod_k(idx_b // w2), mod_k(idx_b)
    return pooled, *(m.reshape(shape) for m in (max_i, max_j, max_k, max_l))


def correlation_maxpool4d(
    f1: Tensor, f2: Tensor, k_size: int = 2, chunk_elems: int = 1 << 22
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`maxpool4d` of `correlation_4d` without materialising the full-resolution volume.

    The feature cells are reordered so that the matrix product itself lays every k⁴ pooling
    block out along one axis: A cells of a pooled row in (j', di, dj) order, B cells in
    (dk, dl, i', j') order, so that a chunk of the product is a (rows, k⁴, H2/k·W2/k) array
    whose k⁴ axis runs over the block in (di, dj, dk, dl) row-major order. One ``max`` over
    that axis then gives the pooled value and the offsets, the first maximum winning ties
    (the rule of `maxpool4d`). Only a few pooled rows of A are computed at a time (about
    `chunk_elems` values), so the full volume never exists. Every value is the same dot
    product as in ``maxpool4d(correlation_4d(f1, f2), k)``.

    Args:
        f1: (B, C, H1, W1), f2: (B, C, H2, W2), already normalised; sides multiples of k.
    Returns:
        as `maxpool4d`.
    """
    b, c, h1, w1 = f1.shape
    h2, w2 = f2.shape[-2:]
    k = k_size
    if any(s % k for s in (h1, w1, h2, w2)):
        raise ValueError(
            f"correlation_maxpool4d: sizes {(h1, w1, h2, w2)} are not multiples of {k}"
        )
    hk1, wk1, hk2, wk2 = h1 // k, w1 // k, h2 // k, w2 // k
    kk, p2 = k * k, hk2 * wk2
    # A: (B, H1/k, W1/k·k·k, C), rows of pooled row i' in (j', di, dj) order.
    fa = f1.reshape(b, c, hk1, k, wk1, k).permute(0, 2, 4, 3, 5, 1).reshape(b, hk1, wk1 * kk, c)
    # B: (B, C, k·k·P2), columns in (dk, dl, i', j') order.
    fb = f2.reshape(b, c, hk2, k, wk2, k).permute(0, 1, 3, 5, 2, 4).reshape(b, c, kk * p2)
    rows = max(1, chunk_elems // (wk1 * kk * kk * p2))  # pooled rows of A per chunk
    shape = (b, 1, hk1, wk1, hk2, wk2)
    if torch.is_grad_enabled() and (f1.requires_grad or f2.requires_grad):
        vals, args = [], []
        for r0 in range(0, hk1, rows):
            r1 = min(hk1, r0 + rows)
            corr = torch.bmm(fa[:, r0:r1].reshape(b, (r1 - r0) * wk1 * kk, c), fb)
            v, i = corr.view(b, (r1 - r0) * wk1, kk * kk, p2).max(dim=2)
            vals.append(v.view(b, r1 - r0, wk1, p2))
            args.append(i.view(b, r1 - r0, wk1, p2))
        pooled, arg = torch.cat(vals, dim=1), torch.cat(args, dim=1)
    else:
        # One chunk buffer, reused; the max writes straight into the outputs.
        buf = fa.new_empty((min(rows, hk1) * wk1 * kk, kk * p2))
        pooled = fa.new_empty((b, hk1, wk1, p2))
        arg = torch.empty((b, hk1, wk1, p2), dtype=torch.long, device=fa.device)
        for ib in range(b):
            for r0 in range(0, hk1, rows):
                r1 = min(hk1, r0 + rows)
                n = (r1 - r0) * wk1
                corr = torch.mm(fa[ib, r0:r1].reshape(n * kk, c), fb[ib], out=buf[: n * kk])
                out = (pooled[ib, r0:r1].view(n, p2), arg[ib, r0:r1].view(n, p2))
                torch.max(corr.view(n, kk * kk, p2), dim=1, out=out)
    # arg = ((di·k + dj)·k + dk)·k + dl
    if k & (k - 1) == 0:  # a power of two: shifts and masks (int64 division is slow)
        s = k.bit_length() - 1
        offs = (arg >> 3 * s, (arg >> 2 * s) & (k - 1), (arg >> s) & (k - 1), arg & (k - 1))
    else:
        offs = (arg // (k * kk), arg // kk % k, arg // k % k, arg % k)
    return pooled.view(shape), *(o.view(shape) for o in offs)


def mutual_matching(corr: Tensor) -> Tensor:
    """Soft mutual nearest-neighbour filtering.

    ``c * (c / (max over (i,j) + 1e-5)) * (c / (max over (k,l) + 1e-5))``.

    Args:
        corr: (B, 1, H1, W1, H2, W2).
    Returns:
        the filtered volume, same shape.
    """
    b, _, h1, w1, h2, w2 = corr.shape
    corr_b = corr.view(b, h1 * w1, h2, w2)
    corr_a = corr.view(b, h1, w1, h2 * w2)
    max_b = corr_b.max(dim=1, keepdim=True)[0]
    max_a = corr_a.max(dim=3, keepdim=True)[0]
    ratio_b = (corr_b / (max_b + 1e-5)).view_as(corr)
    ratio_a = (corr_a / (max_a + 1e-5)).view_as(corr)
    return corr * (ratio_a * ratio_b)


def MutualMatching(corr4d: Tensor) -> Tensor:  # noqa: N802 (original's public name)
    """Original name of `mutual_matching`."""
    return mutual_matching(corr4d)


def swap_ab(corr: Tensor) -> Tensor:
    """Exchange the (i, j) and (k, l) axes of a (B, C, H1, W1, H2, W2) volume."""
    return corr.permute(0, 1, 4, 5, 2, 3)


_UNSET: Any = object()


class NeighConsensus(nn.Module):
    """Neighbourhood consensus: a stack of Conv4d + ReLU, optionally symmetric in A and B.

    The original's signature, positionally or by keyword (docs/architecture.md §8):
    ``NeighConsensus(use_cuda=True, kernel_sizes=[3, 3, 3], channels=[10, 10, 1],
    symmetric_mode=True)``; Patch2Pix uses ``kernel_sizes=[3, 3], channels=[16, 1]``.
    A call whose first positional argument is a list (``NeighConsensus([3, 3], [16, 1])``)
    is read as ``(kernel_sizes, channels, symmetric_mode)``.

    Args:
        use_cuda: accepted for compatibility with the original and ignored: the module runs
            wherever its parameters are (the original moved itself to CUDA; docs/architecture.md
            §7).
        kernel_sizes: kernel of each layer.
        channels: output channels of each layer; the input has 1 channel.
        symmetric_mode: ``y = net(x) + swapAB(net(swapAB(x)))``.
    """

    def __init__(
        self,
        use_cuda: bool | Sequence[int] = True,
        kernel_sizes: Sequence[int] = _UNSET,
        channels: Sequence[int] | bool = _UNSET,
        symmetric_mode: bool = _UNSET,
    ) -> None:
        super().__init__()
        if isinstance(use_cuda, (list, tuple)):  # (kernel_sizes, channels[, symmetric_mode])
            if channels is not _UNSET and symmetric_mode is not _UNSET:
                raise TypeError("NeighConsensus: symmetric_mode given twice")
            shifted = channels if channels is not _UNSET else symmetric_mode
            kernel_sizes, channels, symmetric_mode = use_cuda, kernel_sizes, shifted
        kernel_sizes = [3, 3, 3] if kernel_sizes is _UNSET else list(kernel_sizes)
        channels = [10, 10, 1] if channels is _UNSET else list(channels)  # type: ignore[arg-type]
        symmetric_mode = True if symmetric_mode is _UNSET else bool(symmetric_mode)
        if len(kernel_sizes) != len(channels):
            raise ValueError(
                f"NeighConsensus: {len(kernel_sizes)} kernel sizes but "
                f"{len(channels)} channel counts"
            )
        layers: list[nn.Module] = []
        ch_in = 1
        for k, ch in zip(kernel_sizes, channels, strict=True):
            layers += [Conv4d(ch_in, ch, k, bias=True), nn.ReLU(inplace=True)]
            ch_in = ch
        self.symmetric_mode = symmetric_mode
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, H1, W1, H2, W2) → same shape."""
        if self.symmetric_mode:
            return self.conv(x) + swap_ab(self.conv(swap_ab(x)))
        return self.conv(x)
