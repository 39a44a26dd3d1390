"""The original's matcher factories, called as an outside tool calls them.

image-matching-toolbox (and matcher collections built on the original) build their Patch2Pix
and NCNet matchers with ``init_patch2pix_matcher(args)`` / ``init_ncn_matcher(args)`` from an
argparse Namespace of their own, then call ``matcher(im1_path, im2_path)``. The weights are
tests/conftest.py's tiny_ckpt: an identity neighbourhood consensus and regressors with zero
offsets, so on a pair whose second image is the first one enlarged 1.5x every match satisfies
(x2, y2) = 1.5 (x1, y1) in original pixels, and the refined matches are the coarse ones.
"""

from __future__ import annotations

from argparse import Namespace
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_scaled_pair

from utils.eval.model_helper import (
    estimate_matches,
    init_ncn_matcher,
    init_patch2pix_matcher,
    load_model,
)

SCALE = 1.5
IMSIZE = 192


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    p1, p2 = write_scaled_pair(tmp_path_factory.mktemp("pair"), (200, 150), SCALE)
    return str(p1), str(p2)


@pytest.fixture(scope="module")
def ncn_ckpt(tiny_ckpt: Path, tmp_path_factory) -> Path:
    """NCNet weights the way the released ncn_ivd_5ep.pth holds them: a bare OrderedDict
    state_dict of the backbone (``extract.*``) and the consensus filter (``ncn.*``)."""
    sd = torch.load(tiny_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    bare = OrderedDict((k, v) for k, v in sd.items() if k.startswith(("extract.", "ncn.")))
    path = tmp_path_factory.mktemp("ncn") / "ncn_tiny.pth"
    torch.save(bare, path)
    return path


def _assert_scaled(matches: np.ndarray, strict: bool = True) -> None:
    """Rows (x1, y1, x2, y2) with (x2, y2) = 1.5 (x1, y1): all of them, or (coarse matches,
    mutual nearest neighbours of random features) most of them."""
    assert matches.ndim == 2 and matches.shape[1] == 4 and len(matches) > 10
    err = np.linalg.norm(matches[:, 2:] - SCALE * matches[:, :2], axis=1)
    assert (err.max() if strict else np.median(err)) < 1e-3


def test_init_patch2pix_matcher(tiny_ckpt, pair, capsys):
    args = Namespace(ckpt=str(tiny_ckpt), ksize=2, io_thres=0.25, imsize=IMSIZE)
    matcher = init_patch2pix_matcher(args)  # no ncn_thres: the toolbox's args lack it
    matches, scores, coarse = matcher(*pair)
    assert "patch2pix" in capsys.readouterr().out.lower()  # the load is reported on stdout
    _assert_scaled(matches)
    assert scores.shape == (len(matches),) and (scores > args.io_thres).all()
    np.testing.assert_allclose(coarse, matches, atol=1e-3)  # zero offsets: fine = coarse
    # the same numbers as loading the model and calling estimate_matches by hand
    net = load_model(tiny_ckpt, device="cpu", lprint=lambda *a: None)
    want = estimate_matches(net, *pair, ksize=2, io_thres=0.25, eval_type="fine", imsize=IMSIZE)
    for got, ref in zip((matches, scores, coarse), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    # the optional coarse threshold is honoured when the caller's args have one
    c_all, c_scores, _ = estimate_matches(
        net, *pair, ksize=2, io_thres=0.0, eval_type="coarse", imsize=IMSIZE
    )
    thres = float(np.median(c_scores))
    m2, _, c2 = init_patch2pix_matcher(Namespace(**vars(args), ncn_thres=thres))(*pair)
    assert 0 < len(m2) < len(matches)
    strong = {tuple(np.round(r, 4)) for r in c_all[c_scores > thres]}
    assert {tuple(np.round(r, 4)) for r in c2} <= strong


def test_init_ncn_matcher(ncn_ckpt, tiny_ckpt, pair):
    args = Namespace(ckpt=str(ncn_ckpt), ksize=2, ncn_thres=0.0, imsize=IMSIZE)
    matcher = init_ncn_matcher(args)
    matches, scores, coarse = matcher(*pair)
    _assert_scaled(matches, strict=False)
    assert np.array_equal(matches, coarse) and scores.shape == (len(matches),)
    # the coarse stage of the full model from the same backbone and filter
    net = load_model(tiny_ckpt, device="cpu", lprint=lambda *a: None)
    _, _, full_coarse = estimate_matches(
        net, *pair, ksize=2, io_thres=0.0, eval_type="coarse", imsize=IMSIZE
    )
    np.testing.assert_allclose(matches, full_coarse, atol=1e-4)
    # ncn_thres drops the weak coarse matches
    thres = float(np.median(scores))
    m2, s2, _ = init_ncn_matcher(Namespace(**{**vars(args), "ncn_thres": thres}))(*pair)
    assert 0 < len(m2) < len(matches) and (s2 > thres).all()
