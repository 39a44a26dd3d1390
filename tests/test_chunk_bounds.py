"""Regressor chunk bounds (docs/architecture.md §4.6): the original's rule, train and eval."""

from __future__ import annotations

import copy
from argparse import Namespace

import pytest
import torch

from networks.patch2pix import Patch2Pix
from networks.regr_chunks import chunk_sizes
from utils.common.cli import UsageError
from utils.train.cli import parse_args

SMALL_RC = dict(
    conv_dims=[16, 16],
    conv_kers=[3, 3],
    conv_strs=[2, 1],
    fc_dims=[16, 8],
    feat_comb="pre",
    psize=[16, 16],
    pshift=8,
    panc=1,
    shared=False,
)


def original_bounds(n: int, regr_batch: int) -> list[tuple[int, int]]:
    """The original's rule written out naively: step by regr_batch; a single row that would
    be left over after a step is taken into that step's chunk."""
    bounds, i = [], 0
    while i < n:
        j = i + regr_batch
        if n - j == 1:
            j = n
        j = min(j, n)
        bounds.append((i, j))
        i = j
    return bounds


def bounds_of(sizes: list[int]) -> list[tuple[int, int]]:
    out, i = [], 0
    for s in sizes:
        out.append((i, i + s))
        i += s
    return out


@pytest.mark.parametrize("regr_batch", [2, 3, 4, 7, 1200])
def test_chunk_sizes_follow_the_original(regr_batch):
    ns = (
        list(range(0, 4 * regr_batch + 3))
        if regr_batch < 100
        else [0, 1, 1199, 1200, 1201, 2400, 2401, 3200]
    )
    for n in ns:
        assert bounds_of(chunk_sizes(n, regr_batch)) == original_bounds(n, regr_batch), n


def test_chunk_sizes_known_values():
    assert chunk_sizes(3201, 1200) == [1200, 1200, 801]
    assert chunk_sizes(2401, 1200) == [1200, 1201]  # k·regr_batch + 1: joins the last chunk
    assert chunk_sizes(1201, 1200) == [1201]
    assert chunk_sizes(9, 4) == [4, 5] and chunk_sizes(8, 4) == [4, 4]
    assert chunk_sizes(3, 4) == [3] and chunk_sizes(0, 4) == []
    assert min(chunk_sizes(n, 2)[-1] for n in range(2, 30)) >= 2  # no one-row chunk


def make_net() -> Patch2Pix:
    torch.manual_seed(0)
    cfg = Namespace(
        training=False,
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=Namespace(**SMALL_RC),
        regr_batch=4,
        weights_dict=None,
        imagenet_init=False,
    )
    return Patch2Pix(cfg)


def bn_buffers(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "tracked" in k}


@pytest.mark.parametrize("n", [9, 13, 8])  # 2·4 + 1, 3·4 + 1, 2·4
def test_chunked_forward_equals_per_chunk_computation(n):
    """In train mode each chunk is normalised with its own statistics: the chunked forward
    equals running the regressor on each of the original's chunks separately, and the
    running statistics move once per chunk."""
    net = make_net().train()
    ref = copy.deepcopy(net)
    ref.regr_batch = 1200  # one call per chunk below: no further chunking
    g = torch.Generator().manual_seed(n)
    im = torch.randn(1, 3, 48, 64, generator=g)
    matches = torch.rand(n, 4, generator=g) * torch.tensor([64.0, 48.0, 64.0, 48.0])
    with torch.no_grad():
        feats = net.extract.forward_all(im)
        m, p = net.forward_fine_match(feats, feats, [matches], 16, "center", net.regress_mid)
        ms, ps = [], []
        for i, j in original_bounds(n, 4):
            mi, pi = ref.forward_fine_match(
                feats, feats, [matches[i:j]], 16, "center", ref.regress_mid
            )
            ms.append(mi[0])
            ps.append(pi[0])
    torch.testing.assert_close(m[0], torch.cat(ms), rtol=0, atol=0)
    torch.testing.assert_close(p[0], torch.cat(ps), rtol=0, atol=0)
    for k, v in bn_buffers(net.regress_mid).items():
        torch.testing.assert_close(v, bn_buffers(ref.regress_mid)[k], rtol=0, atol=0, msg=k)
    # the bounds matter in training: one chunk of all rows gives other probabilities
    with torch.no_grad():
        _, p_one = ref.forward_fine_match(feats, feats, [matches], 16, "center", ref.regress_mid)
    assert not torch.allclose(p_one[0], p[0])


def test_same_bounds_in_eval_mode():
    net = make_net().eval()
    assert net._chunk_sizes(9) == [4, 5] and net._chunk_sizes(10) == [4, 4, 2]
    net.train()
    assert net._chunk_sizes(9) == [4, 5] and net._chunk_sizes(10) == [4, 4, 2]


def test_regr_batch_below_two_is_a_usage_error_in_training():
    with pytest.raises(UsageError, match=r"^--regr_batch must be >= 2 in training.*got 1$"):
        parse_args(["--regr_batch", "1"])
    with pytest.raises(UsageError, match="--regr_batch must be positive"):
        parse_args(["--regr_batch", "0"])
    assert parse_args(["--regr_batch", "2"]).regr_batch == 2
