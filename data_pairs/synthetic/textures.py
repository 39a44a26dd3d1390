"""Textures of the synthetic scenes: scikit-image's bundled photographs and drawn patterns.

Only images that are installed with scikit-image (its ``data/`` folder, no download) are
used, and every one of them must be there: a missing one is an error naming the texture, so
the same seed gives the same scenes on every machine.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["PHOTO_TEXTURES", "photo_textures", "pattern_texture", "make_textures"]

# scikit-image loader name → the file it reads, bundled in skimage/data/ with the package
PHOTO_TEXTURES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "immunohistochemistry": "ihc.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "camera": "camera.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "coins": "coins.png",
    "clock": "clock_motion.png",
    "moon": "moon.png",
    "text": "text.png",
    "page": "page.png",
}


def _to_rgb01(im: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) image (bool, uint8 or float) → (H, W, 3) float32 in [0, 1]."""
    im = np.asarray(im)
    if im.dtype == bool:
        im = im.astype(np.uint8) * 255
    if im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=2)
    im = im[..., :3].astype(np.float32)
    return im / 255.0 if im.max() > 1.0 else im


def _load_photo(name: str) -> np.ndarray:
    """The scikit-image sample image `name`, read from the package's own data folder.

    Raises:
        RuntimeError: naming the texture, when scikit-image lacks the loader or the file.
    """
    import skimage.data as skd

    path = Path(skd.__file__).parent / PHOTO_TEXTURES[name]
    loader = getattr(skd, name, None)
    if loader is None or not path.is_file():
        raise RuntimeError(
            f"synthetic texture {name!r}: scikit-image {_skimage_version()} does not ship "
            f"{path} (the synthetic scenes need every texture of "
            "data_pairs.synthetic.textures.PHOTO_TEXTURES; reinstall scikit-image)"
        )
    try:
        return np.asarray(loader())
    except Exception as e:  # a corrupt / hash-mismatched file: say which one
        raise RuntimeError(f"synthetic texture {name!r}: cannot load {path}: {e}") from e


def _skimage_version() -> str:
    import skimage

    return str(skimage.__version__)


@lru_cache(maxsize=1)
def photo_textures() -> tuple[tuple[np.ndarray, bool], ...]:
    """All of :data:`PHOTO_TEXTURES` in order: ((H, W, 3) float32 in [0, 1], is_grey)."""
    out = []
    for name in PHOTO_TEXTURES:
        im = _load_photo(name)
        out.append((_to_rgb01(im), im.ndim == 2))
    return tuple(out)


def pattern_texture(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A drawn (size, size, 3) float32 texture: coloured discs and stripes over noise.

    The discs use periodic distances, so the pattern tiles seamlessly.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    freq = rng.uniform(2, 8) * 2 * np.pi / size
    ang = rng.uniform(0, np.pi)
    stripes = 0.5 + 0.5 * np.sin(freq * (np.cos(ang) * xx + np.sin(ang) * yy))
    img += (stripes[..., None] - 0.5) * rng.uniform(0.1, 0.3, 3).astype(np.float32)
    for _ in range(int(rng.integers(15, 35))):
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(size / 40, size / 8)
        dx = np.minimum(np.abs(xx - cx), size - np.abs(xx - cx))
        dy = np.minimum(np.abs(yy - cy), size - np.abs(yy - cy))
        mask = (dx**2 + dy**2) < r**2
        img[mask] = rng.uniform(0, 1, 3).astype(np.float32)
    img += rng.normal(0, 0.04, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def make_textures(rng: np.random.Generator, n_patterns: int = 3) -> list[np.ndarray]:
    """Photographs (grey ones tinted with a random colour) plus `n_patterns` drawn patterns.

    Returns a list of (Ht, Wt, 3) float32 images in [0, 1].
    """
    textures = []
    for im, grey in photo_textures():
        if grey:
            tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
            im = im * tint
        textures.append(im)
    textures += [pattern_texture(rng) for _ in range(n_patterns)]
    return textures
