"""Issue 17 part 2: patches sampled straight into the regressor's layout.

`sample_patch_pairs` must give what today's path gave: ``cat([l2norm(f1s), l2norm(f2s)])``
of `select_local_patch_feats` (in float32, as `_regress_chunk` did), reshaped to
(N, 2D, p, p), with the same gradients, and the regressor on it the same outputs and
parameter gradients, within float32 rounding (the norms sum in another order).
"""

from __future__ import annotations

from argparse import Namespace

import pytest
import torch

from networks.ncn.model import feature_l2norm
from networks.patch2pix import channels_last_levels
from networks.regressor import FeatRegressNet
from networks.utils import sample_patch_pairs, select_local_patch_feats

DS = [1, 2, 2, 2, 1]


def levels(g: torch.Generator, b: int = 2, h: int = 40, w: int = 56) -> list[torch.Tensor]:
    chans, sizes = [3, 8, 8, 16, 16], [(h, w), (h // 2, w // 2), (h // 4, w // 4)]
    sizes += [(h // 8, w // 8), (h // 8, w // 8)]
    return [
        torch.randn(b, c, *hw, generator=g, dtype=torch.float64, requires_grad=True)
        for c, hw in zip(chans, sizes, strict=True)
    ]


def todays_patches(f1, f2, ib, m, feat_idx, psize, ptype):
    """The formulation before issue 17 (Patch2Pix._regress_chunk)."""
    a, b = select_local_patch_feats(f1, f2, ib, m, feat_idx, DS, psize, ptype)
    n = m.shape[0]
    a = feature_l2norm(a.float(), dim=0).view(-1, n, psize, psize).transpose(0, 1)
    b = feature_l2norm(b.float(), dim=0).view(-1, n, psize, psize).transpose(0, 1)
    return torch.cat([a, b], dim=1)


def matches(g: torch.Generator, n: int, h: int = 40, w: int = 56) -> torch.Tensor:
    # Beyond the borders too (clamped indices) and fractional (truncated) coordinates.
    scale = torch.tensor([w + 16, h + 16, w + 16, h + 16], dtype=torch.float64)
    return torch.rand(n, 4, generator=g, dtype=torch.float64) * scale - 8


@pytest.mark.parametrize("ptype", ["center", "other"])
@pytest.mark.parametrize("feat_idx", [[0, 1, 2, 3], [1, 3, 4]])
def test_sample_patch_pairs_equals_todays_path(ptype, feat_idx):
    g = torch.Generator().manual_seed(len(feat_idx))
    f1, f2 = levels(g), levels(g)
    m = matches(g, 7)
    for ib in (0, 1):
        ref = todays_patches(f1, f2, ib, m, feat_idx, 8, ptype)
        for cl in (False, True):
            a = channels_last_levels(f1, feat_idx) if cl else f1
            b = channels_last_levels(f2, feat_idx) if cl else f2
            out = sample_patch_pairs(a, b, ib, m, feat_idx, DS, 8, ptype)
            assert out.shape == ref.shape
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert torch.allclose(out, ref, rtol=1e-6, atol=1e-7)
        w = torch.randn(ref.shape, generator=g)
        g_ref = torch.autograd.grad((ref * w).sum(), f1 + f2, allow_unused=True)
        out = sample_patch_pairs(f1, f2, ib, m, feat_idx, DS, 8, ptype)
        g_out = torch.autograd.grad((out * w).sum(), f1 + f2, allow_unused=True)
        for x, y in zip(g_out, g_ref, strict=True):
            assert (x is None) == (y is None)
            if x is not None:
                assert torch.allclose(x, y, rtol=1e-5, atol=1e-6 * y.abs().max().item())


def test_regressor_on_channels_last_patches_float32():
    """The float32 regressor (train mode: batch statistics) on the new layout = on today's,
    outputs and parameter gradients, within float32 rounding."""
    g = torch.Generator().manual_seed(3)
    f1 = [f.detach().float() for f in levels(g, b=1)]
    f2 = [f.detach().float() for f in levels(g, b=1)]
    m = matches(g, 24).float()
    rc = Namespace(
        conv_dims=[32, 32],
        conv_kers=[3, 3],
        conv_strs=[2, 1],
        fc_dims=[32, 16],
        feat_comb="pre",
        feat_dim=3 + 8 + 8 + 16,
    )
    torch.manual_seed(0)
    reg = FeatRegressNet(rc, psize=8).train()
    outs, grads = [], []
    for patches in (
        todays_patches(f1, f2, 0, m, [0, 1, 2, 3], 8, "center"),
        sample_patch_pairs(
            channels_last_levels(f1, [0, 1, 2, 3]),
            channels_last_levels(f2, [0, 1, 2, 3]),
            0,
            m,
            [0, 1, 2, 3],
            DS,
            8,
            "center",
        ),
    ):
        out = reg(patches)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out.pow(2).sum(), list(reg.parameters())))
    assert torch.allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    # Linear biases in front of BatchNorm have zero gradient up to rounding: one scale.
    scale = max(b.abs().max().item() for b in grads[0])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.parametrize("feat_comb", ["pre", "post"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_regressor_global_max_equals_maxpool2d(feat_comb, channels_last):
    """The regressor's pool (a max over the flattened conv map) = its ``MaxPool2d`` over
    the whole map: outputs, input and parameter gradients bit for bit, ties included
    (rows of zeros after the ReLU, and equal positive maxima: the first one wins)."""
    rc = Namespace(
        conv_dims=[16, 8],
        conv_kers=[3, 3],
        conv_strs=[2, 1],
        fc_dims=[8],
        feat_comb=feat_comb,
        feat_dim=6,
    )
    torch.manual_seed(1)
    reg = FeatRegressNet(rc, psize=8).train()
    x = torch.randn(10, 12, 8, 8)
    x[3] = 0.0  # every conv output equal (BN of a constant map): ties everywhere
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def reference(inp):
        def pooled(t):
            return reg.pool(reg.conv(t)).flatten(1)

        if feat_comb == "pre":
            feat = pooled(inp)
        else:
            feat = torch.cat([pooled(inp[:, :6]), pooled(inp[:, 6:])], dim=1)
        return reg.fc[-1](reg.fc[:-1](feat))

    outs, grads = [], []
    for fn in (reg, reference):
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out.pow(2).sum(), [xi, *reg.parameters()]))
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
