"""MegaDepth training pairs (docs/file-formats.md §2-3): `ImMatchDatasetMega`.

The pair file is a numpy-saved dict (a pickle inside; loaded through the restricted unpickler of
:mod:`utils.common.safe_pickle`, which refuses anything but data, docs/file-formats.md §6)::

    {scene: {'ims': [Namespace(name, crop)],
             'pairs': [Namespace(im1, im2, overlap, K1, K2, t, q, R, crop1, crop2)]}}

Image names are relative to ``<data_root>/MegaDepth_undistort/`` (e.g.
``0000/images/123.jpg``); `crop` = (dw, dh) pixels cut from the right and the bottom.
A scene entry may also hold ``'image_dir'`` (the pair files of
``data_pairs.prep_colmap_training_pairs``): its image names are then relative to that folder,
an absolute path or one relative to `data_root`.
"""

from __future__ import annotations

import os
import random
from argparse import Namespace
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from utils.common.safe_pickle import NpyFileError, safe_load_npy
from utils.datasets.preprocess import get_tuple_transform_ops, open_image
from utils.geometry import pose2fund, qvec2rotmat

__all__ = ["ImMatchDatasetMega", "load_pair_file", "resolve_megadepth_root"]

MEGADEPTH_DIR = "MegaDepth_undistort"


def resolve_megadepth_root(data_root: str | os.PathLike) -> str:
    """The folder that image names are relative to: ``<data_root>/MegaDepth_undistort``.

    A `data_root` that is itself the ``MegaDepth_undistort`` folder is accepted too.

    Raises:
        FileNotFoundError: naming the paths that were looked for.
    """
    root = os.fspath(data_root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"MegaDepth data root not found: {root}")
    sub = os.path.join(root, MEGADEPTH_DIR)
    if os.path.isdir(sub):
        return sub
    if os.path.basename(os.path.normpath(root)) == MEGADEPTH_DIR:
        return root
    raise FileNotFoundError(
        f"MegaDepth images not found: expected the folder {sub} (data root {root})"
    )


def load_pair_file(match_file: str | os.PathLike) -> dict[str, dict[str, list[Any]]]:
    """Load a training-pair file (docs/file-formats.md §2) without running code from it.

    Returns:
        {scene: {'ims': [...], 'pairs': [...]}}.
    Raises:
        FileNotFoundError naming the file when it is missing;
        UnsafePickleError (a ValueError) when its pickle refers to anything but data;
        NpyFileError (a ValueError) when it is not a readable pair file.
    """
    path = os.fspath(match_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training-pair file not found: {path}")
    data = safe_load_npy(path)
    if isinstance(data, np.ndarray) and data.dtype == object and data.size == 1:
        data = data.reshape(()).item()
    if not isinstance(data, dict):
        raise NpyFileError(f"training-pair file {path} does not hold a dict of scenes")
    return data


def _items(value: Any, what: str) -> list[Any]:
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return list(value)
    if not isinstance(value, (list, tuple)):
        raise NpyFileError(f"{what} must be a list, got {type(value).__name__}")
    return list(value)


def _numbers(value: Any, shape: tuple[int, ...], what: str) -> None:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise NpyFileError(f"{what} must be numbers, got {type(value).__name__}") from None
    if a.size != int(np.prod(shape)):
        raise NpyFileError(f"{what} must have {int(np.prod(shape))} numbers {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise NpyFileError(f"{what} has NaN or infinite values")


def check_scene_entry(entry: Any, where: str) -> None:
    """Check one scene of a training-pair file (docs/file-formats.md §2) before any use, so that
    a malformed file fails at start (one line naming it), not in the middle of training.

    An entry is ``{'ims': [Namespace(name, crop)], 'pairs': [Namespace(im1, im2, K1, K2,
    t, q or R, crop1, crop2, ...)]}`` (``image_dir`` optional).

    Raises:
        NpyFileError (a ValueError) starting with `where`.
    """
    if not isinstance(entry, dict):
        raise NpyFileError(
            f"{where}: expected a dict with 'ims' and 'pairs', got {type(entry).__name__}"
        )
    pairs = _items(entry.get("pairs", []), f"{where}: 'pairs'")
    for i, p in enumerate(pairs):
        at = f"{where}: pair {i}"
        if not isinstance(p, Namespace):
            raise NpyFileError(f"{at} must be a Namespace, got {type(p).__name__}")
        for key in ("im1", "im2"):
            if not isinstance(getattr(p, key, None), str):
                raise NpyFileError(f"{at}: '{key}' must be an image name (str)")
        for key in ("K1", "K2", "t"):
            if not hasattr(p, key):
                raise NpyFileError(f"{at} has no '{key}'")
            _numbers(getattr(p, key), (3,) if key == "t" else (3, 3), f"{at}: '{key}'")
        if getattr(p, "R", None) is not None:
            _numbers(p.R, (3, 3), f"{at}: 'R'")
        elif getattr(p, "q", None) is not None:
            _numbers(p.q, (4,), f"{at}: 'q'")
        else:
            raise NpyFileError(f"{at} has neither 'R' nor 'q' (the relative rotation)")
        for key in ("crop1", "crop2"):
            if getattr(p, key, None) is not None:
                _numbers(getattr(p, key), (2,), f"{at}: '{key}'")
    for i, im in enumerate(_items(entry.get("ims", []), f"{where}: 'ims'")):
        if not isinstance(im, Namespace) or not isinstance(getattr(im, "name", None), str):
            raise NpyFileError(f"{where}: ims {i} must be a Namespace with a 'name' (str)")
        if getattr(im, "crop", None) is not None:
            _numbers(im.crop, (2,), f"{where}: ims {i}: 'crop'")


class ImMatchDatasetMega(Dataset):
    """MegaDepth image pairs at training resolution with their fundamental matrix.

    Each item is a dict:
        - ``src_im``, ``pos_im``: (3, ht, wt) float32, ImageNet-normalised;
        - ``F``: (3, 3) float32 fundamental matrix at training resolution
          (``x2ᵀ F x1 = 0``, x in (wt, ht) pixel coordinates);
        - ``K1``, ``K2``: (3, 3) float32 intrinsics scaled to the training resolution;
        - ``im_pair_refs``: (im1 name, im2 name);
        - 'triplet' mode only: ``neg_im`` (3, ht, wt), a random image of another scene, and
          ``neg_im_ref`` its name.

    Images are cropped by ``int(dw)``, ``int(dh)`` pixels on the right and bottom, then
    resized (PIL bicubic) to wt × ht; K is scaled by ``diag(wt / w_crop, ht / h_crop, 1)``.

    Args:
        data_root: folder holding ``MegaDepth_undistort/`` (or that folder itself); scenes
            with a relative ``image_dir`` read their images from ``<data_root>/<image_dir>``.
        match_file: the pair file (.npy).
        scene_list: scenes to use (default: all scenes of the file, in file order).
        wt, ht: training width and height.
        item_type: 'triplet' (also a negative image, as the original) or 'pair'.
        max_pairs_per_scene: keep at most this many pairs of each scene (file order).
    Raises:
        FileNotFoundError naming the missing data root / pair file (at construction) or image
        (when an item is loaded); ValueError for an unknown item type / scene or no pairs.
    """

    ITEM_TYPES = ("triplet", "pair")

    def __init__(
        self,
        data_root: str | os.PathLike,
        match_file: str | os.PathLike,
        scene_list: Sequence[str] | None = None,
        wt: int = 480,
        ht: int = 320,
        item_type: str = "triplet",
        max_pairs_per_scene: int | None = None,
    ) -> None:
        if item_type not in self.ITEM_TYPES:
            raise ValueError(f"item_type must be one of {self.ITEM_TYPES}, got {item_type!r}")
        self.data_root = os.fspath(data_root)
        self.im_root: str | None = None  # <data_root>/MegaDepth_undistort, once a scene needs it
        self.match_file = os.fspath(match_file)
        self.wt, self.ht = int(wt), int(ht)
        self.item_type = item_type
        self.transform = get_tuple_transform_ops(resize=(self.ht, self.wt), normalize=True)

        data = load_pair_file(self.match_file)
        if scene_list is None:
            scenes = list(data.keys())
        else:
            scenes = [str(s) for s in scene_list]
            missing = [s for s in scenes if s not in data]
            if missing:
                raise ValueError(f"scenes {missing} are not in the pair file {self.match_file}")
        for scene in scenes:
            check_scene_entry(data[scene], f"training-pair file {self.match_file}: scene {scene}")
        self.scenes = scenes
        self.scene_roots = {scene: self._scene_root(scene, data[scene]) for scene in scenes}
        self.pairs: list[tuple[str, Any]] = []
        self.scene_ims: dict[str, list[Any]] = {}
        for scene in scenes:
            entry = data[scene]
            pairs = list(entry.get("pairs", []))
            if max_pairs_per_scene is not None:
                pairs = pairs[:max_pairs_per_scene]
            self.pairs.extend((scene, p) for p in pairs)
            self.scene_ims[scene] = list(entry.get("ims", []))
        if not self.pairs:
            raise ValueError(f"no training pairs for scenes {scenes} in {self.match_file}")
        if self.item_type == "triplet":
            others = [s for s in scenes if self.scene_ims[s]]
            if len(others) < 2:
                raise ValueError(
                    "item_type='triplet' needs images of at least two scenes for negatives "
                    f"({len(others)} scene(s) with images in {self.match_file}); "
                    "use item_type='pair'"
                )
        self._geo_cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def _scene_root(self, scene: str, entry: dict[str, Any]) -> str:
        """The folder that the image names of `scene` are relative to: the entry's
        ``image_dir`` (joined to the data root when relative), else the MegaDepth root."""
        image_dir = entry.get("image_dir")
        if image_dir is None:
            if self.im_root is None:
                self.im_root = resolve_megadepth_root(self.data_root)
            return self.im_root
        if not isinstance(image_dir, str):
            raise NpyFileError(
                f"training-pair file {self.match_file}: scene {scene}: image_dir "
                f"must be a string, got {type(image_dir).__name__}"
            )
        root = os.path.join(self.data_root, image_dir)  # an absolute image_dir is kept as is
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"image folder of scene {scene} not found: {root} (image_dir {image_dir!r} in "
                f"{self.match_file}; a relative one is joined to the data root {self.data_root})"
            )
        return root

    def __repr__(self) -> str:
        return (
            f"ImMatchDatasetMega(scenes={len(self.scenes)}, pairs={len(self.pairs)}, "
            f"size={self.wt}x{self.ht}, item_type={self.item_type!r}, "
            f"root={self.im_root or self.data_root})"
        )

    def load_cropped(
        self, name: str, crop: Sequence[float] | None, scene: str | None = None
    ) -> Image.Image:
        """Open `name` (relative to the image folder of `scene`; None: the MegaDepth root) as
        RGB and cut (dw, dh) at the right and bottom. Returns the cropped PIL image
        (w − int(dw)) × (h − int(dh))."""
        root = self.scene_roots[scene] if scene is not None else self.im_root
        if root is None:
            root = self.im_root = resolve_megadepth_root(self.data_root)
        im = open_image(os.path.join(root, name))
        if crop is not None:
            dw, dh = int(crop[0]), int(crop[1])
            if dw or dh:
                w, h = im.size
                if dw >= w or dh >= h or dw < 0 or dh < 0:
                    raise ValueError(f"crop {tuple(crop)} does not fit image {name} ({w}x{h})")
                im = im.crop((0, 0, w - dw, h - dh))
        return im

    def _scaled_K(self, K: Any, size: tuple[int, int]) -> np.ndarray:
        """(3, 3) K of the cropped image of `size` = (w, h) → K at training resolution."""
        w, h = size
        S = np.diag([self.wt / w, self.ht / h, 1.0])
        return S @ np.asarray(K, dtype=np.float64).reshape(3, 3)

    def pair_geometry(
        self, index: int, size1: tuple[int, int], size2: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """F, K1, K2 (float32 (3, 3)) of pair `index` at training resolution, given the cropped
        image sizes (w, h); cached per pair."""
        cached = self._geo_cache.get(index)
        if cached is not None:
            return cached
        _, p = self.pairs[index]
        K1 = self._scaled_K(p.K1, size1)
        K2 = self._scaled_K(p.K2, size2)
        R = getattr(p, "R", None)
        R = qvec2rotmat(p.q) if R is None else np.asarray(R, dtype=np.float64)
        F = pose2fund(K1, K2, R, np.asarray(p.t, dtype=np.float64).reshape(3))
        out = (
            torch.from_numpy(F.astype(np.float32)),
            torch.from_numpy(K1.astype(np.float32)),
            torch.from_numpy(K2.astype(np.float32)),
        )
        self._geo_cache[index] = out
        return out

    def _sample_negative(self, scene: str) -> tuple[str, Any]:
        others = [s for s in self.scenes if s != scene and self.scene_ims[s]]
        other = random.choice(others)
        return other, random.choice(self.scene_ims[other])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        scene, p = self.pairs[index]
        im1 = self.load_cropped(p.im1, getattr(p, "crop1", None), scene)
        im2 = self.load_cropped(p.im2, getattr(p, "crop2", None), scene)
        F, K1, K2 = self.pair_geometry(index, im1.size, im2.size)
        images = [im1, im2]
        neg = None
        if self.item_type == "triplet":
            neg_scene, neg = self._sample_negative(scene)
            images.append(self.load_cropped(neg.name, getattr(neg, "crop", None), neg_scene))
        tensors = self.transform(images)
        item: dict[str, Any] = {
            "src_im": tensors[0],
            "pos_im": tensors[1],
            "F": F,
            "K1": K1,
            "K2": K2,
            "im_pair_refs": (p.im1, p.im2),
        }
        if neg is not None:
            item["neg_im"] = tensors[2]
            item["neg_im_ref"] = neg.name
        return item
