"""A matcher object in the style people know from LightGlue: ``matcher(image0, image1)``.

    from utils.eval.matcher import Patch2PixMatcher

    matcher = Patch2PixMatcher("pretrained/patch2pix_pretrained.pth", imsize=1024)
    out = matcher("a.jpg", "b.jpg")          # or numpy / PIL / torch images
    out["keypoints0"], out["keypoints1"]      # (N, 2) each, in the input images' pixels
    out["scores"], out["coarse"]              # (N,), (N, 4)

Every image is brought to an RGB PIL image first (paths are opened as
``utils.datasets.preprocess.open_image`` does; [0, 1] float tensors are quantised to 8 bits,
as the network's input pipeline, PIL's bicubic resize of 8-bit images, needs) and then
prepared exactly as ``load_im_flexible`` prepares a file, so the matches equal those of
``estimate_matches`` for the same files. ``estimate_matches`` stays for the original's callers.

The object is also a matcher for the evaluation runners (``utils.eval.runner``): they call it
with two image paths and read ``keypoints0`` / ``keypoints1``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from networks.patch2pix import Patch2Pix
from utils.datasets.preprocess import open_image, prepare_image
from utils.eval.model_helper import AMP_MODES, load_model, match_prepared

ImageInput = str | os.PathLike | np.ndarray | Image.Image | torch.Tensor
"""A path, an (H, W, 3) / (H, W) uint8 array, a PIL image, or a (3, H, W) / (1, 3, H, W)
float tensor in [0, 1]."""

EVAL_TYPES = ("coarse", "mid", "fine")


def to_pil_rgb(image: ImageInput, name: str = "image") -> Image.Image:
    """Any supported image input → RGB PIL image of the same size.

    Args:
        image: see :data:`ImageInput`; float numpy arrays are taken as [0, 1] like tensors.
        name: how errors refer to the input.
    Raises:
        TypeError / ValueError naming `name` for unsupported types or shapes.
    """
    if isinstance(image, (str, os.PathLike)):
        return open_image(image)
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"{name}: expected a (3, H, W) tensor, got shape {tuple(t.shape)}")
        arr = t.permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise TypeError(f"{name}: unsupported image type {type(image).__name__}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"{name}: expected an (H, W, 3) image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name}: expected uint8 or [0, 1] float values, got {arr.dtype}")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if not (-1e-3 <= lo and hi <= 1.0 + 1e-3):  # a 0-255 float image would turn white
            raise ValueError(
                f"{name}: float values must be in [0, 1], got [{lo:g}, {hi:g}] "
                "(divide by 255, or pass uint8)"
            )
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


class Patch2PixMatcher:
    """Patch2Pix as a callable matcher.

    Args:
        model: a checkpoint path (loaded with ``load_model(..., method='patch2pix')``) or a
            loaded :class:`Patch2Pix` (a coarse-only model needs ``eval_type='coarse'``).
        imsize: longer side the images are resized to for the network (None / ≤ 0: native).
        io_thres: keep matches with a score above it (all when none pass).
        ksize: relocalisation pooling size.
        eval_type: 'fine', 'mid' or 'coarse'.
        ncn_thres, mutual: coarse matching settings (as ``estimate_matches``).
        device: where a checkpoint is loaded (default: CUDA when available); a given model
            stays where it is.
        amp: None / 'off' (float32, the default) or 'bf16' (bfloat16 autocast of the
            backbone and regressors: faster on CPUs with AVX-512 BF16 and on tensor-core
            GPUs; matches agree with float32 up to near ties, see ``match_prepared``).
    """

    def __init__(
        self,
        model: Patch2Pix | str | os.PathLike,
        imsize: int | None = 1024,
        io_thres: float = 0.25,
        ksize: int = 2,
        eval_type: str = "fine",
        ncn_thres: float = 0.0,
        mutual: bool = True,
        device: str | torch.device | None = None,
        lprint: Any = print,
        amp: str | None = None,
    ) -> None:
        if eval_type not in EVAL_TYPES:
            raise ValueError(f"eval_type must be one of {EVAL_TYPES}, got {eval_type!r}")
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, method="patch2pix", lprint=lprint, device=device)
        if eval_type != "coarse":  # NoRegressorsError for a coarse-only (NCNet) model
            model.require_regressors(f"eval_type={eval_type!r}")
        self.net = model
        self.imsize = imsize if imsize is not None and imsize > 0 else None
        self.io_thres = float(io_thres)
        self.ksize = int(ksize)
        self.eval_type = eval_type
        self.ncn_thres = float(ncn_thres)
        self.mutual = bool(mutual)
        self.amp = None if amp == "off" else amp

    def config(self) -> dict[str, Any]:
        """The matching settings (for result files; ``amp`` only when not float32)."""
        out = {
            "imsize": self.imsize,
            "io_thres": self.io_thres,
            "ksize": self.ksize,
            "eval_type": self.eval_type,
            "ncn_thres": self.ncn_thres,
            "mutual": self.mutual,
        }
        if self.amp is not None:
            out["amp"] = self.amp
        return out

    def _prepare(self, image: ImageInput, name: str) -> tuple[torch.Tensor, tuple[float, float]]:
        label = os.fspath(image) if isinstance(image, (str, os.PathLike)) else name
        return prepare_image(
            to_pil_rgb(image, name), self.ksize, self.net.upsample, self.imsize, name=label
        )

    def __call__(self, image0: ImageInput, image1: ImageInput) -> dict[str, np.ndarray]:
        """Match two images.

        Returns:
            ``keypoints0`` (N, 2), ``keypoints1`` (N, 2) (x, y in each input's own pixels),
            ``scores`` (N,), ``coarse`` (N, 4) (the patch-level match of each row, same
            pixels), all float64 numpy.
        """
        t0, s0 = self._prepare(image0, "image0")
        t1, s1 = self._prepare(image1, "image1")
        matches, scores, coarse = match_prepared(
            self.net,
            t0,
            t1,
            s0,
            s1,
            self.ksize,
            self.ncn_thres,
            self.mutual,
            self.io_thres,
            self.eval_type,
            amp=self.amp,
        )
        m = np.asarray(matches, dtype=np.float64).reshape(-1, 4)
        return {
            "keypoints0": m[:, :2].copy(),
            "keypoints1": m[:, 2:].copy(),
            "scores": np.asarray(scores, dtype=np.float64).reshape(-1),
            "coarse": np.asarray(coarse, dtype=np.float64).reshape(-1, 4),
        }
