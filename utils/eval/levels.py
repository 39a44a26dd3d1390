"""Evaluate the coarse, mid and fine matches of one model in one pass per pair.

``predict_fine(..., return_all=True)`` gives all three levels at once; :class:`LevelMatchers`
runs it once per image pair and hands each level to the evaluators (``utils.eval.runner``
matchers: ``matcher(path0, path1) -> (N, 4)`` in original pixels), so HPatches and
MegaDepth-1500 can be scored per level without running the network three times.

Levels:
- ``coarse``: the mutual coarse matches that the regressors refine (cell centres);
- ``mid`` / ``fine``: the refined matches whose probability is above ``io_thres`` (all of them
  when none is), as ``estimate_matches`` returns them;
- ``fine_all``: every refined fine match, unfiltered (the same rows as ``coarse``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from networks.patch2pix import Patch2Pix
from utils.datasets.preprocess import open_image, prepare_image

__all__ = ["LEVELS", "LevelMatchers"]

LEVELS: tuple[str, ...] = ("coarse", "mid", "fine", "fine_all")


class LevelMatchers:
    """Per-level matchers sharing one network pass per pair.

    Args:
        net: a Patch2Pix model with regressors (eval mode is set here).
        imsize: longer image side the network sees (None / <= 0: native).
        io_thres: probability threshold of the mid / fine levels.
        ksize: relocalisation size.
    """

    def __init__(
        self, net: Patch2Pix, imsize: int | None = 640, io_thres: float = 0.5, ksize: int = 2
    ) -> None:
        net.require_regressors("LevelMatchers")
        self.net = net.eval()
        self.imsize = imsize if imsize and imsize > 0 else None
        self.io_thres = float(io_thres)
        self.ksize = int(ksize)
        self._cache: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def _prepare(self, path: str) -> tuple[torch.Tensor, tuple[float, float]]:
        return prepare_image(open_image(path), self.ksize, self.net.upsample, self.imsize, path)

    @torch.no_grad()
    def levels(self, path0: str | os.PathLike, path1: str | os.PathLike) -> dict[str, np.ndarray]:
        """All levels of one pair: ``{level: (N, 4) float64}`` in original pixels (cached)."""
        key = (os.fspath(path0), os.fspath(path1))
        if key in self._cache:
            return self._cache[key]
        t0, s0 = self._prepare(key[0])
        t1, s1 = self._prepare(key[1])
        dev = self.net.device
        fine, fine_p, mid, mid_p, coarse = self.net.predict_fine(
            t0[None].to(dev), t1[None].to(dev), self.ksize, 0.0, True, return_all=True
        )
        up = np.array([s0 + s1], dtype=np.float64)

        def px(t: torch.Tensor) -> np.ndarray:
            return t.double().cpu().numpy().reshape(-1, 4) * up

        def kept(m: torch.Tensor, p: torch.Tensor) -> np.ndarray:
            keep = p > self.io_thres
            return px(m[keep] if bool(keep.any()) else m)

        out = {
            "coarse": px(coarse[0]),
            "mid": kept(mid[0], mid_p[0]),
            "fine": kept(fine[0], fine_p[0]),
            "fine_all": px(fine[0]),
        }
        self._cache[key] = out
        return out

    def matcher(self, level: str) -> Callable[[str, str], np.ndarray]:
        """The matcher of one level for the evaluators."""
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        return lambda p0, p1: self.levels(p0, p1)[level]
