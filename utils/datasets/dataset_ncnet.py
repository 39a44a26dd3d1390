"""Training pairs of the NCNet stage (``python -m train_ncnet``).

Two sources of positive pairs, both giving items ``src_im``, ``pos_im`` (3, H, W) ImageNet-
normalised float tensors:

- :class:`CsvPairDataset`: NCNet's Indoor Venues Dataset (IVD) CSV files, columns
  ``source_image,target_image,class,flip`` (image paths relative to an image root;
  ``flip`` = 1 mirrors both images horizontally; greyscale images are repeated to three
  channels). IVD's ``train_pairs.csv`` / ``val_pairs.csv`` hold 6,928 / 758 pairs.
- :func:`pair_file_dataset`: the pair files of Patch2Pix training (MegaDepth scene_info or
  your own COLMAP reconstruction, ``data_pairs.prep_*_training_pairs``), through
  :class:`ImMatchDatasetMega`; their items also carry the pair's fundamental matrix ``F``
  at the training size, which the per-epoch validation uses for epipolar precision.

Images are resized to ``width × height`` (NCNet: 400 × 400, aspect ratio not kept) with
PIL's bicubic filter, as the Patch2Pix training loader does.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from utils.datasets.preprocess import normalize_imagenet, open_image, pil_to_tensor

__all__ = ["CSV_COLUMNS", "CsvPairDataset", "read_pair_csv", "pair_file_dataset"]

CSV_COLUMNS = ("source_image", "target_image", "class", "flip")


def read_pair_csv(path: str | os.PathLike) -> list[tuple[str, str, bool]]:
    """Rows of an IVD-style CSV as ``(source_image, target_image, flip)``.

    Raises:
        ValueError: naming the file (and the row) for a missing column, an empty file or a
            ``flip`` value other than 0 / 1.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ("source_image", "target_image") if c not in header]
            if missing:
                raise ValueError(
                    f"{path}: not a pair CSV (columns {', '.join(CSV_COLUMNS)}); "
                    f"missing {', '.join(missing)}"
                )
            rows = []
            for n, row in enumerate(reader, start=2):
                src, tgt = (
                    (row.get("source_image") or "").strip(),
                    (row.get("target_image") or "").strip(),
                )
                flip_s = (row.get("flip") or "0").strip() or "0"
                if not src or not tgt:
                    raise ValueError(f"{path} line {n}: empty source_image / target_image")
                try:
                    flip = float(flip_s)
                except ValueError:
                    flip = -1.0
                if flip not in (0.0, 1.0):
                    raise ValueError(f"{path} line {n}: flip must be 0 or 1, got {flip_s!r}")
                rows.append((src, tgt, flip == 1.0))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file") from None
    if not rows:
        raise ValueError(f"{path}: no pairs")
    return rows


class CsvPairDataset(Dataset):
    """Positive pairs from an IVD-style CSV (NCNet's ``ImagePairDataset``).

    Args:
        csv_file: the CSV (see :func:`read_pair_csv`).
        image_root: folder the CSV's image paths are relative to (``--dataset_image_path``).
        width, height: network input size (NCNet: 400 × 400).
    """

    def __init__(
        self,
        csv_file: str | os.PathLike,
        image_root: str | os.PathLike,
        width: int = 400,
        height: int = 400,
    ) -> None:
        self.csv_file = Path(csv_file)
        self.image_root = Path(image_root)
        self.size = (int(width), int(height))
        self.rows = read_pair_csv(csv_file)
        # a missing image is named now, before a training run creates anything
        for n, (src, tgt, _) in enumerate(self.rows, start=2):
            for rel in (src, tgt):
                if not (self.image_root / rel).is_file():
                    raise FileNotFoundError(
                        f"{self.csv_file} line {n}: image not found: {self.image_root / rel}"
                    )

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, rel: str, flip: bool) -> torch.Tensor:
        path = self.image_root / rel
        im = open_image(path)  # RGB: a greyscale image is repeated to three channels
        im = im.resize(self.size, Image.BICUBIC)
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        return normalize_imagenet(pil_to_tensor(im))

    def __getitem__(self, index: int) -> dict[str, Any]:
        src, tgt, flip = self.rows[index]
        return {
            "src_im": self._load(src, flip),
            "pos_im": self._load(tgt, flip),
            "im_pair_refs": (src, tgt),
        }


def pair_file_dataset(
    data_root: str | os.PathLike, pair_file: str | os.PathLike, width: int, height: int
) -> Dataset:
    """A Patch2Pix pair file as positive pairs with geometry (``F`` at the given size)."""
    from utils.datasets.dataset_megadepth import ImMatchDatasetMega

    return ImMatchDatasetMega(data_root, pair_file, wt=width, ht=height, item_type="pair")
