"""Small file helpers shared by the synthetic data writers (images, depth maps, npz lists)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from PIL import Image as PILImage

__all__ = ["save_jpeg", "save_depth", "object_array"]


def save_jpeg(path: Path, img: np.ndarray, quality: int = 95) -> None:
    """Write an (H, W, 3) uint8 image as a JPEG, creating the parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(img).save(path, quality=quality)


def save_depth(path: Path, depth: np.ndarray) -> None:
    """Write an (H, W) depth map as MegaDepth does: HDF5 dataset 'depth', float32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("depth", data=depth.astype(np.float32), compression="gzip",
                         compression_opts=4, shuffle=True)


def object_array(items: Sequence) -> np.ndarray:
    """1-D object array holding `items` as they are (arrays, dicts, tuples, strings or None)."""
    arr = np.empty(len(items), dtype=object)
    for k, it in enumerate(items):
        arr[k] = it
    return arr
