"""Small file writers shared by the synthetic data writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PILImage

__all__ = ["save_jpeg"]


def save_jpeg(path: Path, img: np.ndarray, quality: int = 95) -> None:
    """Write an (H, W, 3) uint8 image as a JPEG, creating the parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(img).save(path, quality=quality)
