"""Small file helpers shared by the synthetic data writers (images, depth maps, npz lists)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from PIL import Image as PILImage

from utils.common.setup_helper import write_atomic

__all__ = ["save_jpeg", "save_depth", "save_npz", "object_array"]


def save_jpeg(path: Path, img: np.ndarray, quality: int = 95) -> None:
    """Write an (H, W, 3) uint8 image as a JPEG (atomically), creating the parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: PILImage.fromarray(img).save(f, format="JPEG", quality=quality))


def save_depth(path: Path, depth: np.ndarray) -> None:
    """Write an (H, W) depth map as MegaDepth does: HDF5 dataset 'depth', float32 (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(fobj) -> None:
        with h5py.File(fobj, "w") as f:
            f.create_dataset(
                "depth",
                data=depth.astype(np.float32),
                compression="gzip",
                compression_opts=4,
                shuffle=True,
            )

    write_atomic(path, write)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` (uncompressed, pickled object arrays allowed) written atomically."""
    write_atomic(path, lambda f: np.savez(f, **arrays))


def object_array(items: Sequence) -> np.ndarray:
    """1-D object array holding `items` as they are (arrays, dicts, tuples, strings or None)."""
    arr = np.empty(len(items), dtype=object)
    for k, it in enumerate(items):
        arr[k] = it
    return arr
