"""Image loading and preprocessing for matching and training.

The rules are those of docs/architecture.md §6 (matching) and docs/file-formats.md §2-3
(training crops and sizes).

Images are opened with PIL as RGB, resized with PIL bicubic, turned into float tensors in
[0, 1] and normalised with the ImageNet mean / std. Sizes are (w, h) in PIL order unless a
function says otherwise; tensors are (C, H, W) or (1, C, H, W).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from utils.common.cli import UsageError
from utils.common.imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "ImageDecodeError",
    "ImageNotFoundError",
    "ImageTooSmallError",
    "open_image",
    "image_size",
    "pil_to_tensor",
    "normalize_imagenet",
    "cal_rescale_size",
    "load_im_flexible",
    "prepare_image",
    "load_im_tensor",
    "TupleTransform",
    "get_tuple_transform_ops",
    "crop_from_bottom_right",
]


class ImageNotFoundError(UsageError, FileNotFoundError):
    """An image file that does not exist (a FileNotFoundError; every command reports it
    as one ``<prog>: error: ...`` line)."""


class ImageDecodeError(UsageError, ValueError):
    """An image file that cannot be decoded (a ValueError; one line in every command)."""


class ImageTooSmallError(UsageError, ValueError):
    """An image smaller than one feature cell at the requested size (a ValueError; one line
    in every command)."""


@contextmanager
def _opened(im_path: str | os.PathLike) -> Iterator[Image.Image]:
    """PIL's lazy ``Image.open`` of a file, with errors that name the path.

    Raises:
        ImageNotFoundError (a FileNotFoundError): the file does not exist.
        ImageDecodeError (a ValueError): the file cannot be decoded as an image.
    """
    path = os.fspath(im_path)
    if not os.path.isfile(path):
        raise ImageNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            yield im
    except Image.DecompressionBombError as e:  # a header claiming > 2 x PIL's pixel limit
        raise ImageDecodeError(f"refusing image file {path}: {' '.join(str(e).split())}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ImageDecodeError(f"cannot decode image file {path}: {e}") from e


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float greyscale ('I;16*', 'I', 'F') scaled to 8-bit 'L'.

    PIL's own conversion clips these to 0..255 (a 16-bit photo becomes almost white): the
    values are scaled by the type's full range instead (16-bit: /257, so 65535 -> 255;
    32-bit integers as 16-bit when they fit, which is what PIL decodes 16-bit PNGs to;
    floats as [0, 1]).
    """
    if im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float64) / 257.0
    elif im.mode == "I":
        a = np.asarray(im).astype(np.float64)
        a = a / 257.0 if a.size and a.min() >= 0 and a.max() <= 65535 else a
    elif im.mode == "F":
        a = np.nan_to_num(np.asarray(im).astype(np.float64), nan=0.0) * 255.0
    else:
        return im
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))  # 2-D uint8: "L"


def open_image(im_path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Open an image file and convert it to `mode`, with errors that name the path.

    High-bit-depth greyscale images (16-bit PNG / TIFF) are scaled to 8 bits, not clipped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded as an image (or its header claims more than
            twice PIL's ``Image.MAX_IMAGE_PIXELS``: a decompression bomb).
    """
    with _opened(im_path) as im:
        return _to_8bit(im).convert(mode)


def image_size(im_path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, read from its header (the pixels are not decoded).

    Raises:
        FileNotFoundError / ValueError naming the path, as :func:`open_image`.
    """
    with _opened(im_path) as im:
        return im.size


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL image → float32 tensor in [0, 1], (C, H, W) (C = 1 for 'L', 3 for 'RGB')."""
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def normalize_imagenet(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of an RGB tensor (3, H, W) or (B, 3, H, W) in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def cal_rescale_size(
    image_size: float | None,
    w: int,
    h: int,
    k_size: int = 2,
    scale_factor: float = 1.0 / 16,
    upsample: float | None = None,
) -> tuple[int, int]:
    """Target size for matching: longer side ≈ `image_size`, sides multiples of upsample·k_size.

    Each side becomes ``int(floor(side / (longer / image_size) / upsample / k_size) · upsample
    · k_size)``, evaluated left to right in float64 (docs/architecture.md §6). No upsampling: an
    `image_size` that is None, ≤ 0 or larger than the longer side is replaced by the longer side.

    Args:
        image_size: target longer side in pixels.
        w, h: original image width and height.
        k_size: relocalisation pooling size.
        scale_factor: 1 / upsample (the original's parameter); ignored when `upsample` is given.
        upsample: feature down-sampling factor of the coarse matcher (16 by default).
    Returns:
        (wt, ht) target width and height (0 when the image is too small for one cell).
    """
    up = float(upsample) if upsample is not None else 1.0 / scale_factor
    longer = max(w, h)
    if image_size is None or image_size <= 0 or image_size > longer:
        image_size = longer
    ratio = longer / image_size
    wt = int(math.floor(w / ratio / up / k_size) * up * k_size)
    ht = int(math.floor(h / ratio / up / k_size) * up * k_size)
    return wt, ht


def load_im_flexible(
    im_path: str | os.PathLike,
    k_size: int = 2,
    upsample: int = 16,
    imsize: int | None = None,
    crop_square: bool = False,
) -> tuple[torch.Tensor, tuple[float, float]]:
    """Load an image for Patch2Pix matching (docs/architecture.md §6).

    The longer side is brought to `imsize` (never upsampled) and each side rounded down to a
    multiple of ``upsample · k_size`` (:func:`cal_rescale_size`), resized with PIL bicubic,
    scaled to [0, 1] and ImageNet-normalised.

    Args:
        im_path: image file.
        k_size: relocalisation pooling size.
        upsample: down-sampling factor of the coarse features.
        imsize: target longer side; None / ≤ 0 keeps the image's own size.
        crop_square: after resizing, keep the first ``W`` rows (``im[:, :W, :]``, for
            plotting): a portrait image becomes W×W, a landscape one is unchanged; `scale`
            stays that of the resize.
    Returns:
        (im, scale): im **unbatched** (3, H, W) float32 CPU tensor (callers add the batch
        dimension, ``im.unsqueeze(0)``, as with the original), scale
        ``(w_orig / W, h_orig / H)`` of the resize.
    Raises:
        FileNotFoundError / ValueError naming the path when the file is missing / unreadable;
        ValueError when the image is smaller than one feature cell.
    """
    x, scale = prepare_image(open_image(im_path), k_size, upsample, imsize, name=os.fspath(im_path))
    if crop_square:
        x = x[:, : x.shape[-1], :].contiguous()
    return x, scale


def prepare_image(
    im: Image.Image,
    k_size: int = 2,
    upsample: int = 16,
    imsize: int | None = None,
    name: str = "image",
) -> tuple[torch.Tensor, tuple[float, float]]:
    """The resize + normalisation of :func:`load_im_flexible`, for an RGB PIL image in memory.

    Args:
        im: RGB PIL image (w × h).
        k_size, upsample, imsize: as in :func:`load_im_flexible`.
        name: how errors refer to the image (e.g. its path).
    Returns:
        (im, scale): (3, H, W) float32 CPU tensor, scale ``(w / W, h / H)``.
    Raises:
        ValueError: naming `name`, when the image is smaller than one feature cell.
    """
    w, h = im.size
    wt, ht = cal_rescale_size(imsize, w, h, k_size=k_size, upsample=upsample)
    if wt <= 0 or ht <= 0:
        raise ImageTooSmallError(
            f"image {name} ({w}x{h}) is too small for imsize={imsize}, "
            f"k_size={k_size}, upsample={upsample}: each side must reach "
            f"{upsample * k_size} px after resizing"
        )
    if (wt, ht) != (w, h):
        im = im.resize((wt, ht), Image.Resampling.BICUBIC)
    return normalize_imagenet(pil_to_tensor(im)), (w / wt, h / ht)


def load_im_tensor(
    im_path: str | os.PathLike,
    device: torch.device | str,
    imsize: int | None = None,
    with_gray: bool = True,
) -> (
    tuple[torch.Tensor, torch.Tensor, tuple[float, float]]
    | tuple[torch.Tensor, tuple[float, float]]
):
    """Load an image for other coarse matchers (docs/architecture.md §6).

    Downscaled only when the longer side exceeds `imsize`, to ``round(side · imsize /
    longer)`` per side (PIL bicubic, no rounding to multiples).

    Args:
        im_path: image file.
        device: where the returned tensors live.
        imsize: maximum longer side; None / ≤ 0 keeps the size.
        with_gray: also return the greyscale image (PIL 'L' of the resized RGB image).
    Returns:
        ``(im, gray, scale)`` with `with_gray`, else ``(im, scale)``: im (1, 3, H, W)
        ImageNet-normalised float32, gray (1, 1, H, W) in [0, 1], scale
        ``(w_orig / W, h_orig / H)``.
    """
    im = open_image(im_path)
    w, h = im.size
    longer = max(w, h)
    if imsize is not None and 0 < imsize < longer:
        wt = max(1, round(w * imsize / longer))
        ht = max(1, round(h * imsize / longer))
        im = im.resize((wt, ht), Image.Resampling.BICUBIC)
    else:
        wt, ht = w, h
    scale = (w / wt, h / ht)
    x = normalize_imagenet(pil_to_tensor(im)).unsqueeze(0).to(device)
    if not with_gray:
        return x, scale
    gray = pil_to_tensor(im.convert("L")).unsqueeze(0).to(device)
    return x, gray, scale


class TupleTransform:
    """Apply the same resize / to-tensor / normalise steps to every image of a tuple.

    Args:
        resize: (H, W) target size (torchvision order) or None to keep each size.
        normalize: apply ImageNet normalisation after scaling to [0, 1].
    Call:
        images: sequence of PIL images → list of float32 tensors (3, H, W) (or (1, H, W) for
        greyscale inputs, which are not normalised).
    """

    def __init__(self, resize: Sequence[int] | None = None, normalize: bool = True) -> None:
        self.resize = tuple(int(s) for s in resize) if resize is not None else None
        if self.resize is not None and len(self.resize) != 2:
            raise ValueError(f"resize must be (H, W), got {resize}")
        self.normalize = normalize

    def _one(self, im: Image.Image) -> torch.Tensor:
        if self.resize is not None:
            ht, wt = self.resize
            if im.size != (wt, ht):
                im = im.resize((wt, ht), Image.Resampling.BICUBIC)
        x = pil_to_tensor(im)
        if self.normalize and x.shape[0] == 3:
            x = normalize_imagenet(x)
        return x

    def __call__(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        return [self._one(im) for im in images]

    def __repr__(self) -> str:
        return f"TupleTransform(resize={self.resize}, normalize={self.normalize})"


def get_tuple_transform_ops(
    resize: Sequence[int] | None = None, normalize: bool = True
) -> TupleTransform:
    """The training-image transform: bicubic resize to `resize` = (H, W), [0, 1], ImageNet.

    Returns:
        A :class:`TupleTransform` mapping a tuple of PIL images to a list of (3, H, W) tensors.
    """
    return TupleTransform(resize=resize, normalize=normalize)


def crop_from_bottom_right(
    w: int, h: int, target_ratio: float = 1.5, max_ratio_diff: float = 0.2
) -> tuple[int, int] | None:
    """Pixels to cut from the right (dw) and bottom (dh) to reach aspect ratio w/h = target.

    The rule of docs/file-formats.md §2, written for ``target_ratio = p/q`` in lowest terms
    (p = 3, q = 2 for 1.5): ratio w/h outside ``[target − 0.2, target + 0.2]`` → rejected;
    equal → (0, 0); wider → ``dh = h mod q``, ``dw = w − (h − dh)·target``; taller →
    ``dw = w mod p``, ``dh = h − (w − dw)/target``.

    Args:
        w, h: image width and height in pixels.
        target_ratio: wanted width / height.
        max_ratio_diff: largest accepted |w/h − target_ratio|.
    Returns:
        (dw, dh) as ints, or None when the image is rejected.
    """
    ratio = w / h
    # bounds rounded to the nearest decimal so that e.g. 1.5 ± 0.2 are exactly 1.3 and 1.7
    lo = round(target_ratio - max_ratio_diff, 12)
    hi = round(target_ratio + max_ratio_diff, 12)
    if ratio < lo or ratio > hi:
        return None
    if ratio == target_ratio:
        return 0, 0
    frac = Fraction(target_ratio).limit_denominator(1000)
    p, q = frac.numerator, frac.denominator
    if ratio > target_ratio:
        dh = h % q
        dw = w - (h - dh) * target_ratio
    else:
        dw = w % p
        dh = h - (w - dw) / target_ratio
    return int(round(dw)), int(round(dh))
