"""NCNet components against naive references and the original's recorded outputs."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import rule_state_dict

from networks.ncn.conv4d import Conv4d, conv4d
from networks.ncn.model import (
    MutualMatching,
    NeighConsensus,
    correlation_4d,
    feature_l2norm,
    maxpool4d,
    swap_ab,
)
from networks.ncn.reference import conv4d_loop, maxpool4d_slices

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def conv4d_naive(x, weight, bias):
    """Definition: out[o,i,j,k,l] = b[o] + Σ w[o,c,p,q,r,s] x[c,i+p-P,j+q-Q,k+r-R,l+s-S]."""
    w = weight.permute(1, 2, 0, 3, 4, 5)  # standard layout (out, in, k1..k4)
    ks = w.shape[2:]
    pads = [k // 2 for k in ks]
    xp = F.pad(x, [p for pad in reversed(pads) for p in (pad, pad)])
    b, _, h, wd, d, t = x.shape
    out = torch.zeros(b, w.shape[0], h, wd, d, t, dtype=x.dtype)
    for p, q, r, s in itertools.product(*(range(k) for k in ks)):
        patch = xp[:, :, p : p + h, q : q + wd, r : r + d, s : s + t]
        out += torch.einsum("oc,bcijkl->boijkl", w[:, :, p, q, r, s], patch)
    return out + bias.view(1, -1, 1, 1, 1, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cin,cout,k", [(1, 4, 3), (3, 2, 3), (2, 2, 5), (4, 1, 3)])
def test_conv4d_matches_definition(cin, cout, k, device):
    g = torch.Generator().manual_seed(cin * 10 + cout)
    x = torch.randn(2, cin, 5, 4, 6, 3, generator=g, dtype=torch.float64)
    weight = torch.randn(k, cout, cin, k, k, k, generator=g, dtype=torch.float64)
    bias = torch.randn(cout, generator=g, dtype=torch.float64)
    ref = conv4d_naive(x, weight, bias)
    out = conv4d(x.to(device), weight.to(device), bias.to(device)).cpu()
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-10, rtol=0)
    assert torch.allclose(conv4d_loop(x, weight, bias), ref, atol=1e-10, rtol=0)


def test_conv4d_gradcheck():
    g = torch.Generator().manual_seed(0)
    for cin, cout in [(1, 2), (2, 1)]:
        x = torch.randn(1, cin, 3, 2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.randn(3, cout, cin, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
        b = torch.randn(cout, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(conv4d, (x, w, b))


def test_conv4d_module_layout_and_errors():
    m = Conv4d(1, 16, 3)
    assert tuple(m.weight.shape) == (3, 16, 1, 3, 3, 3)
    with pytest.raises(ValueError, match="channels"):
        m(torch.zeros(1, 2, 3, 3, 3, 3))
    with pytest.raises(ValueError, match="odd"):
        Conv4d(1, 1, 2)


def maxpool_naive(corr, k):
    b, c, h1, w1, h2, w2 = corr.shape
    shape = (b, c, h1 // k, w1 // k, h2 // k, w2 // k)
    pooled = torch.empty(shape, dtype=corr.dtype)
    offs = [torch.empty(shape, dtype=torch.long) for _ in range(4)]
    for idx in itertools.product(*(range(s) for s in shape)):
        bb, cc, i, j, kk, ll = idx
        best, arg = None, None
        for d in itertools.product(range(k), repeat=4):  # row-major: first max wins
            v = corr[bb, cc, i * k + d[0], j * k + d[1], kk * k + d[2], ll * k + d[3]]
            if best is None or v > best:
                best, arg = v, d
        pooled[idx] = best
        for o, a in zip(offs, arg):
            o[idx] = a
    return pooled, *offs


@pytest.mark.parametrize("k", [2, 3])
def test_maxpool4d_values_offsets_and_ties(k):
    g = torch.Generator().manual_seed(k)
    # Small integers: many ties inside each block, which must go to the first entry.
    corr = torch.randint(0, 3, (2, 1, 2 * k, k, 2 * k, k), generator=g).double()
    ref = maxpool_naive(corr, k)
    for out in (maxpool4d(corr, k), maxpool4d_slices(corr, k)):
        assert torch.equal(out[0], ref[0])
        for a, b in zip(out[1:], ref[1:]):
            assert torch.equal(a, b)


def test_maxpool4d_rejects_remainder():
    with pytest.raises(ValueError, match="multiples"):
        maxpool4d(torch.zeros(1, 1, 3, 2, 2, 2), 2)


def test_mutual_matching_naive():
    g = torch.Generator().manual_seed(1)
    c = torch.rand(2, 1, 3, 2, 4, 3, generator=g, dtype=torch.float64)
    ref = torch.empty_like(c)
    for b, i, j, k, l in itertools.product(*(range(s) for s in (2, 3, 2, 4, 3))):
        v = c[b, 0, i, j, k, l]
        max_over_a = c[b, 0, :, :, k, l].max()
        max_over_b = c[b, 0, i, j].max()
        ref[b, 0, i, j, k, l] = v * (v / (max_over_a + 1e-5)) * (v / (max_over_b + 1e-5))
    assert torch.allclose(MutualMatching(c), ref, atol=1e-12, rtol=0)


def test_neigh_consensus_symmetric_naive():
    g = torch.Generator().manual_seed(2)
    ncn = NeighConsensus([3, 3], [4, 1]).double()
    x = torch.rand(1, 1, 4, 3, 3, 4, generator=g, dtype=torch.float64)
    w0, b0, w1, b1 = (p.detach() for p in ncn.parameters())

    def net(v):
        return F.relu(conv4d_naive(F.relu(conv4d_naive(v, w0, b0)), w1, b1))

    ref = net(x) + swap_ab(net(swap_ab(x)))
    assert torch.allclose(ncn(x), ref, atol=1e-10, rtol=0)
    ncn.symmetric_mode = False
    assert torch.allclose(ncn(x), net(x), atol=1e-10, rtol=0)


def test_correlation_definition():
    g = torch.Generator().manual_seed(3)
    f1 = feature_l2norm(torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64))
    f2 = feature_l2norm(torch.randn(2, 5, 2, 3, generator=g, dtype=torch.float64))
    corr = correlation_4d(f1, f2)
    assert corr.shape == (2, 1, 3, 4, 2, 3)
    ref = torch.einsum("bcij,bckl->bijkl", f1, f2).unsqueeze(1)
    assert torch.allclose(corr, ref, atol=1e-12)
    assert torch.allclose(f1.pow(2).sum(1), torch.ones(2, 3, 4, dtype=torch.float64), atol=1e-5)


def test_gradients_flow_through_ncn():
    ncn = NeighConsensus([3, 3], [16, 1])
    ncn.load_state_dict(rule_state_dict(ncn, "ncn."))
    x = torch.rand(1, 1, 4, 4, 4, 4, requires_grad=True)
    ncn(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ncn.parameters())
    assert x.grad is not None and x.grad.abs().sum() > 0


# ---------------------------------------------------------------- recorded reference outputs
def test_ref_conv4d(refvec):
    v = refvec["conv4d"]
    m = Conv4d(1, 4, 3)
    m.load_state_dict(rule_state_dict(m))
    assert torch.allclose(m(v["input"]), v["output"], atol=1e-5, rtol=1e-5)


def test_ref_ncn_and_mutual(refvec):
    v = refvec["ncn"]
    ncn = NeighConsensus([3, 3], [16, 1])
    ncn.load_state_dict(rule_state_dict(ncn))
    out = ncn(v["input"])
    assert torch.allclose(out, v["output"], rtol=1e-5, atol=1e-5 * v["output"].abs().max())
    m = refvec["mutual_matching"]
    assert torch.allclose(MutualMatching(m["input"]), m["output"], rtol=1e-6, atol=1e-7)


def test_ref_maxpool4d(refvec):
    v = refvec["maxpool4d"]
    out = maxpool4d(v["input"], 2)
    assert torch.equal(out[0], v["output"])
    for a, key in zip(out[1:], ["max_i", "max_j", "max_k", "max_l"]):
        assert torch.equal(a, v[key])


@pytest.mark.parametrize("chunk", [1, 200, 1 << 22])
def test_fused_correlation_maxpool_equals_separate(chunk):
    from networks.ncn.model import correlation_maxpool4d

    g = torch.Generator().manual_seed(chunk)
    f1 = feature_l2norm(torch.randn(2, 8, 6, 4, generator=g, dtype=torch.float64))
    f2 = feature_l2norm(torch.randn(2, 8, 4, 6, generator=g, dtype=torch.float64))
    ref = maxpool4d(correlation_4d(f1, f2), 2)
    out = correlation_maxpool4d(f1, f2, 2, chunk_elems=chunk)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)


@pytest.mark.parametrize("k", [2, 3])
def test_fused_correlation_maxpool_ties_and_grad(k):
    """Integer features: many exact ties inside each k⁴ block, which must go to the first
    entry in (di, dj, dk, dl) order, as in the two-step pool; with autograd too."""
    from networks.ncn.model import correlation_maxpool4d

    g = torch.Generator().manual_seed(10 + k)
    f1 = torch.randint(0, 2, (2, 3, 2 * k, 3 * k), generator=g).double()
    f2 = torch.randint(0, 2, (2, 3, 3 * k, k), generator=g).double()
    ref = maxpool_naive(correlation_4d(f1, f2), k)
    for chunk in (1, 1 << 22):
        out = correlation_maxpool4d(f1, f2, k, chunk_elems=chunk)
        for a, b in zip(out, ref):
            assert torch.equal(a, b)
    f1.requires_grad_(True)
    out = correlation_maxpool4d(f1, f2, k, chunk_elems=1)
    for a, b in zip(out, ref):
        assert torch.equal(a.detach(), b)
    out[0].sum().backward()
    f1r = f1.detach().clone().requires_grad_(True)
    maxpool4d(correlation_4d(f1r, f2), k)[0].sum().backward()
    assert torch.equal(f1.grad, f1r.grad)


def test_fused_correlation_maxpool_rejects_remainder():
    from networks.ncn.model import correlation_maxpool4d

    with pytest.raises(ValueError, match="multiples"):
        correlation_maxpool4d(torch.zeros(1, 2, 4, 3), torch.zeros(1, 2, 4, 4), 2)
