"""Drop-in use by code written for the original (api.md, model.md §5-6).

The authors' evaluation toolbox and matcher collections call the public API in a fixed way:
these tests call it exactly so.
"""

from __future__ import annotations

from argparse import Namespace

import numpy as np
import pytest
import torch
from conftest import rule_state_dict
from PIL import Image

from networks.patch2pix import Patch2Pix
from utils.datasets.preprocess import load_im_flexible
from utils.eval.model_helper import estimate_matches

SMALL_RC = dict(conv_dims=[32, 32], conv_kers=[3, 3], conv_strs=[2, 1], fc_dims=[32, 16],
                feat_comb="pre", psize=[16, 16], pshift=8, panc=1, shared=False)


def _net(rc: dict | None = SMALL_RC) -> Patch2Pix:
    cfg = Namespace(training=False, backbone="ResNet34", change_stride=True,
                    feat_idx=[0, 1, 2, 3], regressor_config=Namespace(**rc) if rc else None,
                    regr_batch=1200, weights_dict=None, imagenet_init=False)
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
            im1.unsqueeze(0).to(net.device), im2.unsqueeze(0).to(net.device),
            ksize=ksize, ncn_thres=0.0, mutual=True)
    matches = fine[0].cpu().numpy() * upscale
    scores = scores[0].cpu().numpy()
    coarse = coarse[0].cpu().numpy() * upscale
    assert len(matches) > 0
    m, s, c = estimate_matches(net, p1, p2, ksize=ksize, ncn_thres=0.0, mutual=True,
                               io_thres=0.0, eval_type="fine", imsize=imsize)
    np.testing.assert_allclose(m, matches, rtol=0, atol=1e-4)
    np.testing.assert_allclose(s, scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(c, coarse, rtol=0, atol=1e-6)
    # matches lie inside the original images
    assert (m[:, 0] <= 150 + 1e-3).all() and (m[:, 1] <= 110 + 1e-3).all()
    assert (m[:, 2] <= 90 + 1e-3).all() and (m[:, 3] <= 130 + 1e-3).all()
