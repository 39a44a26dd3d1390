"""Drop-in use by code written for the original (docs/architecture.md §5, §6, §8).

The authors' evaluation toolbox and matcher collections call the public API in a fixed way:
these tests call it exactly so.
"""

from __future__ import annotations

import gc
import weakref
from argparse import Namespace

import numpy as np
import pytest
import torch
from conftest import rule_state_dict
from PIL import Image

from networks.ncn.model import NeighConsensus
from networks.patch2pix import NoRegressorsError, Patch2Pix
from utils.common.cli import UsageError
from utils.common.setup_helper import save_checkpoint_atomic
from utils.datasets.preprocess import load_im_flexible
from utils.eval import model_helper
from utils.eval.model_helper import estimate_matches, refine_matches

SMALL_RC = dict(
    conv_dims=[32, 32],
    conv_kers=[3, 3],
    conv_strs=[2, 1],
    fc_dims=[32, 16],
    feat_comb="pre",
    psize=[16, 16],
    pshift=8,
    panc=1,
    shared=False,
)


def _net(rc: dict | None = SMALL_RC) -> Patch2Pix:
    cfg = Namespace(
        training=False,
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=Namespace(**rc) if rc else None,
        regr_batch=1200,
        weights_dict=None,
        imagenet_init=False,
    )
    net = Patch2Pix(cfg)
    net.load_state_dict(rule_state_dict(net))
    return net.eval()


@pytest.fixture(scope="module")
def net() -> Patch2Pix:
    return _net()


@pytest.fixture(scope="module")
def image_pair(tmp_path_factory) -> tuple[str, str]:
    """Two textured images of different sizes (not multiples of 16, one portrait)."""
    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    im1 = Image.fromarray(base).resize((150, 110), Image.Resampling.BICUBIC)
    im2 = Image.fromarray(base[:, 4:]).resize((90, 130), Image.Resampling.BICUBIC)
    p1, p2 = root / "a.jpg", root / "b.png"
    im1.save(p1, quality=95)
    im2.save(p2)
    return str(p1), str(p2)


def test_original_caller_load_unsqueeze_predict_fine_scale(net, image_pair):
    """The toolbox's Patch2Pix wrapper: load_im_flexible → unsqueeze(0) → predict_fine →
    multiply by the scales; the same matches as estimate_matches returns."""
    p1, p2 = image_pair
    ksize, imsize = 2, 128
    im1, sc1 = load_im_flexible(p1, ksize, net.upsample, imsize=imsize)
    im2, sc2 = load_im_flexible(p2, ksize, net.upsample, imsize=imsize)
    assert im1.dim() == 3 and im1.shape[0] == 3  # one unbatched image, as the original
    assert tuple(im1.shape[1:]) == (80, 128) and tuple(im2.shape[1:]) == (128, 80)
    assert sc1 == (150 / 128, 110 / 80) and sc2 == (90 / 80, 130 / 128)
    upscale = np.array([sc1 + sc2])
    with torch.no_grad():
        fine, scores, coarse = net.predict_fine(
            im1.unsqueeze(0).to(net.device),
            im2.unsqueeze(0).to(net.device),
            ksize=ksize,
            ncn_thres=0.0,
            mutual=True,
        )
    matches = fine[0].cpu().numpy() * upscale
    scores = scores[0].cpu().numpy()
    coarse = coarse[0].cpu().numpy() * upscale
    assert len(matches) > 0
    m, s, c = estimate_matches(
        net,
        p1,
        p2,
        ksize=ksize,
        ncn_thres=0.0,
        mutual=True,
        io_thres=0.0,
        eval_type="fine",
        imsize=imsize,
    )
    np.testing.assert_allclose(m, matches, rtol=0, atol=1e-4)
    np.testing.assert_allclose(s, scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(c, coarse, rtol=0, atol=1e-6)
    # matches lie inside the original images
    assert (m[:, 0] <= 150 + 1e-3).all() and (m[:, 1] <= 110 + 1e-3).all()
    assert (m[:, 2] <= 90 + 1e-3).all() and (m[:, 3] <= 130 + 1e-3).all()


# ---------------------------------------------------------------- coarse-only models
@pytest.fixture(scope="module")
def nc_net() -> Patch2Pix:
    return _net(rc=None)


def test_coarse_only_model_says_use_coarse(nc_net, image_pair):
    p1, p2 = image_pair
    im = torch.randn(1, 3, 64, 64)
    calls = [
        lambda: nc_net.predict_fine(im, im),
        lambda: nc_net.predict_fine(im, im, return_all=True),
        lambda: nc_net.refine_matches(im, im, np.array([[8.0, 8.0, 8.0, 8.0]])),
        lambda: estimate_matches(nc_net, p1, p2, eval_type="fine"),
        lambda: estimate_matches(nc_net, p1, p2, eval_type="mid"),
        lambda: refine_matches(p1, p2, nc_net, lambda g1, g2: np.zeros((1, 4))),
    ]
    for call in calls:
        with pytest.raises(NoRegressorsError) as ei:
            call()
        msg = str(ei.value)
        assert "has no regressors" in msg and "eval_type='coarse'" in msg
        assert isinstance(ei.value, RuntimeError) and isinstance(ei.value, UsageError)
    assert not nc_net.has_regressors()
    # the coarse path works, and so does refine_matches(coarse_only=True)
    m, s, c = estimate_matches(nc_net, p1, p2, eval_type="coarse", io_thres=0.0)
    assert m.shape[1] == 4 and len(m) == len(s) == len(c) > 0
    got, scores = refine_matches(p1, p2, nc_net, lambda g1, g2: np.ones((2, 4)), coarse_only=True)
    assert got.shape == (2, 4) and scores is None


# ---------------------------------------------------------------- combine, NeighConsensus
def test_combine_is_the_parameter_free_correlation_used_in_forward(net):
    assert isinstance(net.combine, torch.nn.Module)
    assert list(net.combine.parameters()) == [] and list(net.combine.buffers()) == []
    assert not any(k.startswith("combine") for k in net.state_dict())
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 2, 6, generator=g)
    want = torch.einsum("bcij,bckl->bijkl", f1, f2).unsqueeze(1)
    torch.testing.assert_close(net.combine(f1, f2), want)
    pooled, di, dj, dk, dl = net.combine.pooled(
        torch.randn(1, 5, 4, 4, generator=g), torch.randn(1, 5, 2, 4, generator=g), 2
    )
    assert pooled.shape == di.shape == (1, 1, 2, 2, 1, 2)

    class Counting(type(net.combine)):
        calls = 0

        def forward(self, a, b):
            Counting.calls += 1
            return super().forward(a, b)

        def pooled(self, a, b, k):
            Counting.calls += 1
            return super().pooled(a, b, k)

    other = _net()
    other.combine = Counting()
    x = torch.randn(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        for k in (1, 2):
            torch.testing.assert_close(other(x, x, ksize=k)[0], net(x, x, ksize=k)[0])
    assert Counting.calls == 2
    # matcher collections move it by name
    assert net.combine.to("cpu") is net.combine


def test_neigh_consensus_original_signature(net):
    sd = net.ncn.state_dict()
    x = torch.rand(1, 1, 3, 4, 3, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net.ncn(x)
    made = [
        NeighConsensus(True, [3, 3], [16, 1], True),  # the original, positionally
        NeighConsensus(False, [3, 3], [16, 1]),
        NeighConsensus(use_cuda=True, kernel_sizes=[3, 3], channels=[16, 1], symmetric_mode=True),
        NeighConsensus(kernel_sizes=[3, 3], channels=[16, 1]),
        NeighConsensus([3, 3], [16, 1], True),  # (kernel_sizes, channels, symmetric_mode)
    ]
    for ncn in made:
        assert ncn.symmetric_mode is True
        assert {k: v.shape for k, v in ncn.state_dict().items()} == {
            k: v.shape for k, v in sd.items()
        }
        ncn.load_state_dict(sd)
        with torch.no_grad():
            torch.testing.assert_close(ncn(x), want)
    default = NeighConsensus()  # the original's defaults: kernels [3, 3, 3], channels 10 10 1
    convs = [m for m in default.conv if hasattr(m, "weight")]
    assert [tuple(c.weight.shape) for c in convs] == [
        (3, 10, 1, 3, 3, 3),
        (3, 10, 10, 3, 3, 3),
        (3, 1, 10, 3, 3, 3),
    ]
    assert NeighConsensus(True, [3], [1], False).symmetric_mode is False
    assert NeighConsensus([3], [1], symmetric_mode=False).symmetric_mode is False
    with pytest.raises(ValueError, match="kernel sizes"):
        NeighConsensus(True, [3, 3], [1])


# ---------------------------------------------------------------- no second copy of weights
def test_model_does_not_keep_the_weights_dict(net, tmp_path, monkeypatch):
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = Namespace(
        training=False,
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=Namespace(**SMALL_RC),
        regr_batch=1200,
        weights_dict=sd,
        imagenet_init=False,
    )
    built = Patch2Pix(cfg)
    assert not hasattr(built.config, "weights_dict") and cfg.weights_dict is sd
    assert built.config.regressor_config is built.regressor_config
    assert torch.equal(built.ncn.conv[0].weight, sd["ncn.conv.0.weight"])
    assert all(v.data_ptr() != p.data_ptr() for v in sd.values() for p in built.parameters())

    # load_model: once it returns, nothing refers to the tensors read from the file
    path = tmp_path / "ckpt.pth"
    save_checkpoint_atomic(
        {
            "last_epoch": 0,
            "best_vals": [0.0] * 4,
            "backbone": "ResNet34",
            "feat_idx": [0, 1, 2, 3],
            "change_stride": True,
            "regressor_config": Namespace(**SMALL_RC),
            "state_dict": sd,
            "optim": {},
        },
        path,
    )
    refs: list[weakref.ref] = []
    real = model_helper.load_checkpoint_safe

    def spying(p, *a, **kw):
        ck = real(p, *a, **kw)
        refs.extend(weakref.ref(t) for t in ck["state_dict"].values())
        return ck

    monkeypatch.setattr(model_helper, "load_checkpoint_safe", spying)
    loaded = model_helper.load_model(path, lprint=lambda *_: None, device="cpu")
    gc.collect()
    assert len(refs) == len(sd) and all(r() is None for r in refs)
    assert not hasattr(loaded.config, "weights_dict")
    torch.testing.assert_close(loaded.state_dict(), net.state_dict())
