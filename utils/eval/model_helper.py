"""Loading Patch2Pix / NCNet checkpoints and matching image pairs with them."""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from networks.config import CHECKPOINT_REGRESSOR_KEYS, Patch2PixConfig
from networks.patch2pix import Patch2Pix
from utils.common.setup_helper import CheckpointError, load_checkpoint_safe
from utils.datasets.preprocess import load_im_flexible, load_im_tensor

AMP_MODES = (None, "off", "bf16")
"""Matching precisions: float32 (None / 'off', the default) or bfloat16 autocast."""

# The checkpoint checks live with the configuration (networks/config.py); these names
# stay importable from here.
REGRESSOR_KEYS = CHECKPOINT_REGRESSOR_KEYS


def check_weights_fit(config: Patch2PixConfig, weights: dict[str, torch.Tensor]) -> None:
    """The model of `config` built on the meta device (no memory): `weights` must have
    exactly its keys and shapes, and be finite.

    Raises:
        ValueError: naming the first keys that differ, or a non-finite tensor.
    """
    meta = replace(config, weights_dict=None, device=None, imagenet_init=False, training=False)
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in Patch2Pix(meta).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    missing, extra = sorted(own.keys() - got.keys()), sorted(got.keys() - own.keys())
    # in the model's key order, so the message names the first layer that differs
    bad = [f"{k}: {got[k]} vs {own[k]}" for k in own if k in got and got[k] != own[k]]
    missing = [k for k in missing if k.startswith("regress")]  # (a partial backbone is
    # loaded non-strictly, as before; regressors without weights would be built for nothing)
    if bad or extra or missing:
        raise ValueError(
            "weights do not fit the architecture the file describes ("
            + "; ".join([*bad[:3], *(f"unexpected {k}" for k in extra[:3])][:3] or missing[:3])
            + ")"
        )
    for k, v in weights.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"weights hold NaN or inf values ({k})")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def state_dict_of(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights in a loaded checkpoint: its ``state_dict`` entry, or the bare state_dict.

    Raises:
        CheckpointError: naming `path`, when there is no non-empty dict of tensors.
    """
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict of tensors")
    return obj


def load_model(
    ckpt_path: str | os.PathLike,
    method: str = "patch2pix",
    lprint: Callable[[str], Any] = print,
    device: str | torch.device | None = None,
    change_stride: bool = True,
) -> Patch2Pix:
    """Build a model from a checkpoint file, in eval mode.

    Args:
        ckpt_path: a training checkpoint in the original format (dict with ``backbone``,
            ``feat_idx``, ``change_stride``, ``regressor_config``, ``state_dict``) for
            ``method='patch2pix'``; a bare NCNet state_dict (``extract.*``, ``ncn.*``) or a
            dict with ``state_dict`` for ``method='nc'`` (coarse-only model).
        lprint: where to report what was loaded.
        device: defaults to CUDA when available, else CPU.
        change_stride: backbone stride for ``'nc'`` weights, which do not record it
            (the released ``ncn_ivd_5ep.pth`` uses the stride-8 layer3 of every released model).
    Returns:
        the model, in eval mode, on `device`.
    Raises:
        CheckpointError: a missing / unsafe / malformed file, or weights of another
            architecture (the message names the file and the problem).
    """
    device = torch.device(device) if device is not None else default_device()
    ckpt = load_checkpoint_safe(ckpt_path)
    if method not in ("patch2pix", "nc"):
        raise ValueError(f"method must be 'patch2pix' or 'nc', got {method!r}")
    if method == "patch2pix" and (not isinstance(ckpt, dict) or "backbone" not in ckpt):
        raise CheckpointError(
            f"{ckpt_path} is not a Patch2Pix training checkpoint (no 'backbone' key); "
            "for NCNet weights use method='nc'"
        )
    inputs = dict(device=device, regr_batch=1200, imagenet_init=False, lprint=lprint)
    try:
        if method == "patch2pix":
            # panc 1: anchors are a training device only
            config = Patch2PixConfig.from_checkpoint(ckpt, panc=1, **inputs)
        else:
            config = Patch2PixConfig(change_stride=change_stride, **inputs)
    except ValueError as e:
        raise CheckpointError(f"{ckpt_path}: {e}") from None
    config = replace(config, weights_dict=state_dict_of(ckpt, ckpt_path))
    try:
        check_weights_fit(config, config.weights_dict)
        net = Patch2Pix(config)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt_path}: {e}") from None
    net.eval()
    epoch = ckpt.get("last_epoch") if isinstance(ckpt, dict) else None
    lprint(
        f"Loaded {method} model from {ckpt_path}"
        + (f" (epoch {epoch})" if epoch is not None else "")
        + f" on {device}"
    )
    return net


@torch.inference_mode()
def estimate_matches(
    net: Patch2Pix,
    im1: str | os.PathLike,
    im2: str | os.PathLike,
    ksize: int = 2,
    ncn_thres: float = 0.0,
    mutual: bool = True,
    io_thres: float = 0.25,
    eval_type: str = "fine",
    imsize: int | None = None,
    amp: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match two image files; matches are returned in original image pixels.

    Args:
        eval_type: 'coarse' (NCNet proposals, scores = NCN scores), 'mid' or 'fine'.
        io_thres: keep rows whose score is above it (all rows when none pass).
        amp: None (float32, the default) or 'bf16' (see :func:`match_prepared`).
    Returns:
        matches (N, 4) (x1, y1, x2, y2), scores (N,), coarse matches (M, 4), all numpy.
    Raises:
        NoRegressorsError: eval_type 'fine' / 'mid' with a coarse-only (NCNet) model.
    """
    t1, sc1 = load_im_flexible(im1, ksize, net.upsample, imsize=imsize)
    t2, sc2 = load_im_flexible(im2, ksize, net.upsample, imsize=imsize)
    return match_prepared(
        net, t1, t2, sc1, sc2, ksize, ncn_thres, mutual, io_thres, eval_type, amp=amp
    )


@torch.inference_mode()
def match_prepared(
    net: Patch2Pix,
    t1: torch.Tensor,
    t2: torch.Tensor,
    scale1: tuple[float, float],
    scale2: tuple[float, float],
    ksize: int = 2,
    ncn_thres: float = 0.0,
    mutual: bool = True,
    io_thres: float = 0.25,
    eval_type: str = "fine",
    amp: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match two preprocessed images (the core of :func:`estimate_matches`).

    Args:
        t1, t2: (3, H, W) or (1, 3, H, W) ImageNet-normalised images, sides multiples of
            ``net.upsample · ksize`` (``preprocess.load_im_flexible`` / ``prepare_image``).
        scale1, scale2: (sx, sy) from network-input pixels to the caller's pixels.
        amp: None / 'off' (float32, the default) or 'bf16': the backbone and the
            regressors run under bfloat16 autocast; normalisation, correlation,
            relocalisation pool, NCN, mutual filtering, match extraction and the regressors'
            output layer stay float32. Matches agree with float32 up to near ties (measured
            in benchmarks/RESULTS.md), they are not identical.
        Others: as in :func:`estimate_matches`.
    Returns:
        matches (N, 4), scores (N,), coarse matches (N, 4), numpy, in the caller's pixels.
    """
    if eval_type not in ("coarse", "mid", "fine"):
        raise ValueError(f"eval_type must be 'coarse', 'mid' or 'fine', got {eval_type!r}")
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if eval_type != "coarse":
        net.require_regressors(f"eval_type={eval_type!r}")
    device = net.device
    t1 = (t1 if t1.dim() == 4 else t1.unsqueeze(0)).to(device)
    t2 = (t2 if t2.dim() == 4 else t2.unsqueeze(0)).to(device)
    upscale = np.array([tuple(scale1) + tuple(scale2)], dtype=np.float64)
    bf16 = amp == "bf16"
    before = net.coarse_amp
    try:
        net.coarse_amp = bf16
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if eval_type == "coarse":
                coarse, scores = net.predict_coarse(t1, t2, ksize, ncn_thres, mutual)
                matches, scores, coarse = coarse[0], scores[0], coarse[0]
            else:
                fine, fine_p, mid, mid_p, coarse = net.predict_fine(
                    t1, t2, ksize, ncn_thres, mutual, return_all=True
                )
                fine_level = eval_type == "fine"
                matches, scores = (fine[0], fine_p[0]) if fine_level else (mid[0], mid_p[0])
                coarse = coarse[0]
    finally:
        net.coarse_amp = before
    matches = matches.float().cpu().numpy() * upscale
    coarse = coarse.float().cpu().numpy() * upscale
    scores = scores.float().cpu().numpy()
    if io_thres > 0:
        keep = scores > io_thres
        if keep.any():
            matches, scores, coarse = matches[keep], scores[keep], coarse[keep]
    return matches, scores, coarse


def init_patch2pix_matcher(args: Namespace) -> Callable:
    """A matcher ``(im1_path, im2_path) -> (matches, scores, coarse)`` from `args`
    (ckpt, ksize, io_thres, imsize; ncn_thres optional)."""
    net = load_model(args.ckpt, method="patch2pix")

    def matcher(im1, im2):
        return estimate_matches(
            net,
            im1,
            im2,
            ksize=args.ksize,
            ncn_thres=getattr(args, "ncn_thres", 0.0),
            io_thres=args.io_thres,
            eval_type="fine",
            imsize=args.imsize,
        )

    return matcher


def init_ncn_matcher(args: Namespace) -> Callable:
    """A coarse NCNet matcher ``(im1_path, im2_path) -> (matches, scores, coarse)`` from
    `args` (ckpt, ksize, ncn_thres, imsize)."""
    net = load_model(args.ckpt, method="nc")

    def matcher(im1, im2):
        return estimate_matches(
            net,
            im1,
            im2,
            ksize=args.ksize,
            ncn_thres=args.ncn_thres,
            mutual=True,
            io_thres=0.0,
            eval_type="coarse",
            imsize=args.imsize,
        )

    return matcher


@torch.inference_mode()
def refine_matches(
    im1_path: str | os.PathLike,
    im2_path: str | os.PathLike,
    net: Patch2Pix,
    coarse_matcher: Callable,
    io_thres: float = 0.0,
    imsize: int | None = None,
    coarse_only: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Refine the matches of another coarse matcher with Patch2Pix's regressors.

    Args:
        coarse_matcher: ``(gray1 (1,1,H1,W1), gray2 (1,1,H2,W2)) -> (N, 4)`` matches in the
            loaded (possibly downscaled) images' pixels.
    Returns:
        matches (M, 4) in original pixels and their scores (None with `coarse_only`).
    Raises:
        NoRegressorsError: refinement (not `coarse_only`) with a coarse-only (NCNet) model.
    """
    if not coarse_only:
        net.require_regressors("refine_matches")
    t1, g1, sc1 = load_im_tensor(im1_path, net.device, imsize, with_gray=True)
    t2, g2, sc2 = load_im_tensor(im2_path, net.device, imsize, with_gray=True)
    upscale = np.array([sc1 + sc2], dtype=np.float64)
    coarse = coarse_matcher(g1, g2)
    if torch.is_tensor(coarse):
        coarse = coarse.detach().cpu().numpy()
    coarse = np.asarray(coarse, dtype=np.float64).reshape(-1, 4)
    if coarse_only:
        return coarse * upscale, None
    refined, scores, _ = net.refine_matches(t1, t2, coarse, io_thres)
    return refined * upscale, scores
