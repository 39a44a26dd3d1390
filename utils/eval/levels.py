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

__all__ = ["LEVELS", "LevelMatchers", "OracleCoarseLevels"]

LEVELS: tuple[str, ...] = ("coarse", "mid", "fine", "fine_all")


def _rows(t: torch.Tensor) -> np.ndarray:
    """Matches as an (N, 4) float64 numpy array."""
    return t.double().cpu().numpy().reshape(-1, 4)


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

        out = {
            "coarse": _rows(coarse[0]) * up,
            "mid": self._kept(mid[0], mid_p[0]) * up,
            "fine": self._kept(fine[0], fine_p[0]) * up,
            "fine_all": _rows(fine[0]) * up,
        }
        self._cache[key] = out
        return out

    def _kept(self, m: torch.Tensor, p: torch.Tensor) -> np.ndarray:
        """Rows with probability above ``io_thres`` (all rows when none is), (N, 4) float64."""
        keep = p > self.io_thres
        return _rows(m[keep] if bool(keep.any()) else m)

    def matcher(self, level: str) -> Callable[[str, str], np.ndarray]:
        """The matcher of one level for the evaluators."""
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        return lambda p0, p1: self.levels(p0, p1)[level]


class OracleCoarseLevels(LevelMatchers):
    """The regressors alone: ground-truth matches snapped to the coarse grid, then refined.

    Separates what the regressors learned from what the coarse stage finds: the coarse
    matches are exact correspondences (from `ground_truth(path0, path1)`, original pixels)
    moved to the centres of the network's stride-``upsample`` cells in both images — the
    positions a perfect coarse matcher would propose, up to half a cell off — thinned to
    one per block of `thin` × `thin` cells of image 0 (about as many rows as the coarse
    stage's mutual matches for thin=4), and refined by the mid and fine regressors.

    Args:
        ground_truth: (path0, path1) -> (N, 4) exact matches in original pixels, e.g.
            ``utils.eval.megadepth1500.oracle_matcher(pairs)``.
        net, imsize, io_thres, ksize: as :class:`LevelMatchers`.
    """

    def __init__(
        self,
        ground_truth: Callable[[str, str], np.ndarray],
        net: Patch2Pix,
        imsize: int | None = 640,
        io_thres: float = 0.5,
        ksize: int = 2,
        thin: int = 4,
    ) -> None:
        super().__init__(net, imsize, io_thres, ksize)
        self.ground_truth = ground_truth
        self.thin = int(thin)

    @torch.no_grad()
    def levels(self, path0: str | os.PathLike, path1: str | os.PathLike) -> dict[str, np.ndarray]:
        key = (os.fspath(path0), os.fspath(path1))
        if key in self._cache:
            return self._cache[key]
        t0, s0 = self._prepare(key[0])
        t1, s1 = self._prepare(key[1])
        up = np.array([s0 + s1], dtype=np.float64)
        gt = np.asarray(self.ground_truth(*key), dtype=np.float64).reshape(-1, 4) / up
        u = self.net.upsample
        snapped = np.floor(gt / u) * u + u // 2  # cell centres, as cal_coarse_matches gives
        h0, w0 = t0.shape[-2:]
        h1, w1 = t1.shape[-2:]
        inside = (snapped[:, 0] < w0) & (snapped[:, 1] < h0)
        inside &= (snapped[:, 2] < w1) & (snapped[:, 3] < h1)
        # one coarse match per block of thin x thin cells of image 0 (its first point)
        block = np.floor(snapped[inside][:, :2] / (u * self.thin))
        _, first = np.unique(block, axis=0, return_index=True)
        coarse = snapped[inside][np.sort(first)]
        dev = self.net.device
        if len(coarse):
            feats0 = self.net.extract.forward_all(t0[None].to(dev))
            feats1 = self.net.extract.forward_all(t1[None].to(dev))
            m = torch.as_tensor(coarse, dtype=torch.float32, device=dev)
            mid, mid_p, fine, fine_p = self.net.regress_levels(feats0, feats1, [m])
        else:
            mid = fine = [torch.zeros(0, 4)]
            mid_p = fine_p = [torch.zeros(0)]
        out = {
            "coarse": coarse * up,
            "mid": self._kept(mid[0], mid_p[0]) * up,
            "fine": self._kept(fine[0], fine_p[0]) * up,
            "fine_all": _rows(fine[0]) * up,
        }
        self._cache[key] = out
        return out
