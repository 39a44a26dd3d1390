"""Exact 4D convolution for neighbourhood consensus (docs/architecture.md §2).

The original loops over the first spatial dimension and sums 3D convolutions slice by slice.
Here the first dimension is folded into the batch of a single ``conv3d`` call: either the
input is unfolded along it (few input channels) or the kernel's first dimension is moved into
the output channels and the shifted partial outputs are summed (few output channels). Both
give the same cross-correlation as the original (float rounding aside) and are
differentiable, with no in-place writes into leaf tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv4d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """4D cross-correlation with "same" zero padding and stride 1.

    Args:
        x: (B, Cin, H, W, D, T) input.
        weight: (k1, Cout, Cin, k2, k3, k4) kernel in the original's pre-permuted layout
            (a torch-standard (Cout, Cin, k1, k2, k3, k4) weight ``w`` is stored as
            ``w.permute(2, 0, 1, 3, 4, 5)``).
        bias: (Cout,) or None.
    Returns:
        (B, Cout, H, W, D, T).
    """
    k1, cout, cin, k2, k3, k4 = weight.shape
    b, c, h, w, d, t = x.shape
    if c != cin:
        raise ValueError(f"conv4d: input has {c} channels, the kernel expects {cin}")
    pad1 = k1 // 2
    pad3d = (k2 // 2, k3 // 2, k4 // 2)
    if cin <= cout:
        # Unfold the input along H: (B, Cin, H+2p, W, D, T) -> (B*H, k1*Cin, W, D, T).
        # The copy is laid out channels-last (B*H, W, D, T, k1*Cin): conv3d is several times
        # faster on it, and its output keeps that layout for the next layer.
        xp = F.pad(x, (0, 0, 0, 0, 0, 0, pad1, pad1))
        xw = xp.unfold(2, k1, 1)  # (B, Cin, H, W, D, T, k1)
        xw = xw.permute(0, 2, 3, 4, 5, 6, 1).reshape(b * h, w, d, t, k1 * cin)
        xw = xw.permute(0, 4, 1, 2, 3).contiguous(memory_format=torch.channels_last_3d)
        w3 = weight.permute(1, 0, 2, 3, 4, 5).reshape(cout, k1 * cin, k2, k3, k4)
        y = F.conv3d(xw, w3, bias, padding=pad3d)  # (B*H, Cout, W, D, T)
        return y.view(b, h, cout, w, d, t).transpose(1, 2)
    # Move k1 into the output channels, then sum the partial outputs shifted along H.
    xs = x.transpose(1, 2).reshape(b * h, cin, w, d, t)
    if not xs.is_contiguous(memory_format=torch.channels_last_3d):
        xs = xs.contiguous(memory_format=torch.channels_last_3d)
    w3 = weight.reshape(k1 * cout, cin, k2, k3, k4)
    y = F.conv3d(xs, w3, None, padding=pad3d).view(b, h, k1, cout, w, d, t)
    y = F.pad(y, (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, pad1, pad1))
    out = y[:, 0:h, 0]
    for p in range(1, k1):
        out = out + y[:, p : p + h, p]
    if bias is not None:
        out = out + bias.view(1, 1, cout, 1, 1, 1)
    return out.transpose(1, 2)


class Conv4d(nn.Module):
    """4D convolution layer, kernel k⁴, "same" padding, stride 1.

    The weight parameter has the original's pre-permuted shape (k, out, in, k, k, k), so
    released state_dicts load unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int, int],
        bias: bool = True,
        pre_permuted_filters: bool = True,
    ) -> None:
        super().__init__()
        ks = (kernel_size,) * 4 if isinstance(kernel_size, int) else tuple(kernel_size)
        if any(k % 2 == 0 for k in ks):
            raise ValueError(f"Conv4d needs odd kernel sizes for 'same' padding, got {ks}")
        if not pre_permuted_filters:
            raise ValueError("only the pre-permuted weight layout of the original is supported")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = ks
        self.weight = nn.Parameter(torch.empty(ks[0], out_channels, in_channels, *ks[1:]))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Torch's default conv initialisation, applied in the standard layout."""
        std = torch.empty(self.out_channels, self.in_channels, *self.kernel_size)
        nn.init.kaiming_uniform_(std, a=math.sqrt(5))
        with torch.no_grad():
            self.weight.copy_(std.permute(2, 0, 1, 3, 4, 5))
            if self.bias is not None:
                bound = 1 / math.sqrt(self.in_channels * math.prod(self.kernel_size))
                nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in, H, W, D, T) → (B, out, H, W, D, T)."""
        return conv4d(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
