"""Per-epoch validation on the PhotoTourism "immatch" val set (docs/training.md §6).

For each scene folder ``<val_dense>/<scene>/dense/`` (sorted by name; the downloaded set is
reichstag, sacre_coeur, st_peters_square, taj_mahal, temple_nara_japan):

1. the pairs with overlap ≥ ``min_overlap`` from ``sparse/ov_pairs.npy``, at most
   ``sample_max`` per scene drawn without replacement by one ``numpy.random.RandomState(0)``
   shared by the scenes in order (the draws of the original's global ``np.random.seed(0)``,
   without touching the global numpy state that training uses);
2. matches from ``estimate_matches(imsize, ksize, io_thres, eval_type)`` with the network's
   ``panc`` set to 1 (restored afterwards), in eval mode and without gradients;
3. the ground-truth relative pose from the COLMAP model (``R12 = R2 R1ᵀ``,
   ``t12 = R2 (c1 − c2)``), the essential matrix by OpenCV RANSAC (``rthres`` px at the
   second camera's focal length) and ``recoverPose``;
   ``err = max(translation angle error, rotation angle error)`` in degrees; a pair whose pose
   cannot be estimated (fewer than 5 matches, no essential matrix) counts as 180°;
4. Sampson distance (px², ground-truth F) histograms of the coarse, fine and RANSAC-inlier
   matches, mean / median error, pass rates at 1..10° and the selection rate
   ``0.34·pass@1° + 0.33·pass@5° + 0.33·pass@10°``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.colmap.read_model import camera_intrinsics, image_pose, read_model
from utils.common.data_layout import VAL_SUBDIR
from utils.common.safe_pickle import NpyFileError, safe_load_npy
from utils.eval.measure import (
    INLIER_DIST_BINS,
    PASS_THRESHOLDS,
    cal_pass_rates,
    cal_selection_rate,
    check_inliers_distr,
    eval_matches_relapose,
)
from utils.eval.runner import as_matches, run_pairs
from utils.geometry import pose2fund, relative_pose, sampson_distance

FAILED_POSE_ERR = 180.0


class ValidationDataMissing(FileNotFoundError):
    """The validation data (or its ``ov_pairs.npy`` files) is absent."""


@dataclass
class ImmatchValResult:
    """Outcome of :func:`eval_immatch_val_sets`.

    Attributes:
        mean_err, median_err: pose error (degrees) over all evaluated pairs.
        rate: selection rate ``0.34·p1 + 0.33·p5 + 0.33·p10``.
        pass_rates: {threshold (deg): fraction of pairs with err < threshold}, 1..10.
        fine_dist: mean over pairs of the mean fine-match Sampson distance (px²).
        inlier_ratio: mean over pairs of the RANSAC inlier fraction (failed pairs count 0).
        num_pairs, num_failed: evaluated pairs / pairs whose pose could not be estimated.
        per_scene: {scene: number of pairs}.
        seconds: wall time.
        dist_hist: {'coarse' | 'fine' | 'inlier': fractions of the matches per Sampson
            distance bin of ``INLIER_DIST_BINS`` (mean over pairs)}.
    """

    mean_err: float
    median_err: float
    rate: float
    pass_rates: dict[int, float]
    fine_dist: float
    inlier_ratio: float
    num_pairs: int
    num_failed: int
    per_scene: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    dist_hist: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        d = asdict(self)
        d["pass_rates"] = {str(k): v for k, v in self.pass_rates.items()}
        return d


def resolve_val_root(data_root: str | Path) -> Path:
    """``<data_root>/immatch_benchmark/val_dense`` when it exists, else `data_root` itself
    (so both the training data root and the val_dense folder are accepted).

    Raises:
        ValidationDataMissing: when neither holds a scene with ``dense/sparse/ov_pairs.npy``.
    """
    root = Path(data_root)
    cand = root / VAL_SUBDIR
    val_root = cand if cand.is_dir() else root
    if not val_root.is_dir() or not list_scenes(val_root):
        raise ValidationDataMissing(
            f"no validation scenes <scene>/dense/sparse/ov_pairs.npy under {cand} or {root} "
            "(run data/prepare_immatch_val_data.sh, or for your own reconstructions "
            f"python -m data_pairs.precompute_immatch_val_ovs --data_root {val_root})"
        )
    return val_root


def list_scenes(val_root: Path) -> list[str]:
    """Sorted scene names under `val_root` that have ``dense/sparse/ov_pairs.npy``."""
    return sorted(
        p.name
        for p in val_root.iterdir()
        if p.is_dir() and (p / "dense" / "sparse" / "ov_pairs.npy").is_file()
    )


def load_overlap_pairs(path: Path, min_overlap: float) -> list[tuple[str, str]]:
    """Pairs stored under the overlap key equal to `min_overlap` in an ``ov_pairs.npy``.

    Raises:
        KeyError: naming the file and its keys when `min_overlap` is not one of them.
    """
    ov = safe_load_npy(path)  # a pickled dict: refused unless it holds only data
    if not isinstance(ov, dict):
        raise NpyFileError(f"{path} does not hold a dict of overlap → pairs")
    for k, pairs in ov.items():
        if math.isclose(float(k), float(min_overlap), abs_tol=1e-6):
            return [(str(a), str(b)) for a, b in pairs]
    raise KeyError(f"{path} has no pairs for overlap {min_overlap} (keys: {sorted(ov)})")


def sample_pairs(
    pairs: list[tuple[str, str]], sample_max: int, rng: np.random.RandomState
) -> list[tuple[str, str]]:
    """At most `sample_max` pairs drawn without replacement (all pairs when fewer)."""
    if sample_max <= 0 or len(pairs) <= sample_max:
        return list(pairs)
    idx = rng.choice(len(pairs), sample_max, replace=False)
    return [pairs[i] for i in idx]


@dataclass
class _SceneModel:
    K: dict[str, np.ndarray]
    R: dict[str, np.ndarray]
    t: dict[str, np.ndarray]


def _load_scene_model(sparse_dir: Path) -> _SceneModel:
    cameras, images, _ = read_model(sparse_dir)
    K, R, t = {}, {}, {}
    for im in images.values():
        K[im.name] = camera_intrinsics(cameras[im.camera_id])
        R[im.name], t[im.name] = image_pose(im)
    return _SceneModel(K, R, t)


@dataclass
class _ValPair:
    """One validation pair: its image files and ground-truth geometry."""

    im1: Path
    im2: Path
    K1: np.ndarray
    K2: np.ndarray
    R12: np.ndarray
    t12: np.ndarray


@dataclass
class _PairOutcome:
    err: float  # FAILED_POSE_ERR when no pose could be estimated
    inlier_ratio: float
    cdist: np.ndarray  # Sampson distances (px²) of the coarse, fine, RANSAC-inlier matches
    fdist: np.ndarray
    idist: np.ndarray | None  # None when no pose could be estimated


def _val_pairs(
    val_root: Path, min_overlap: float, sample_max: int
) -> tuple[list[_ValPair], dict[str, int]]:
    """The sampled pairs of every scene (scenes in name order, one seeded draw stream)."""
    rng = np.random.RandomState(0)
    jobs: list[_ValPair] = []
    per_scene: dict[str, int] = {}
    for scene in list_scenes(val_root):
        dense = val_root / scene / "dense"
        pairs = load_overlap_pairs(dense / "sparse" / "ov_pairs.npy", min_overlap)
        pairs = sample_pairs(pairs, sample_max, rng)
        model = _load_scene_model(dense / "sparse")
        per_scene[scene] = len(pairs)
        for im1, im2 in pairs:
            if im1 not in model.K or im2 not in model.K:
                missing = im1 if im1 not in model.K else im2
                raise KeyError(
                    f"{scene}: image {missing!r} of ov_pairs.npy is not in the COLMAP model"
                )
            R12, t12 = relative_pose(model.R[im1], model.t[im1], model.R[im2], model.t[im2])
            images = dense / "images"
            jobs.append(_ValPair(images / im1, images / im2, model.K[im1], model.K[im2], R12, t12))
    return jobs, per_scene


def _evaluate_pair(matches: np.ndarray, coarse: np.ndarray, pair: _ValPair, rthres: float):
    """Pose error and Sampson distances of one pair's matches (see the module docstring)."""
    F = pose2fund(pair.K1, pair.K2, pair.R12, pair.t12)
    fd = sampson_distance(matches[:, :2], matches[:, 2:], F)
    cd = sampson_distance(coarse[:, :2], coarse[:, 2:], F)
    res = eval_matches_relapose(matches, pair.K1, pair.K2, pair.R12, pair.t12, cv_thres=rthres)
    if res is None:
        return _PairOutcome(FAILED_POSE_ERR, 0.0, cd, fd, None)
    err_q, err_t, inliers = res
    return _PairOutcome(max(err_q, err_t), float(inliers.mean()), cd, fd, fd[inliers])


def eval_immatch_val_sets(
    net: torch.nn.Module,
    data_root: str | Path = "data",
    ksize: int = 2,
    eval_type: str = "fine",
    io_thres: float = 0.5,
    ncn_thres: float = 0.0,
    imsize: int | None = 1024,
    rthres: float = 0.5,
    sample_max: int = 150,
    min_overlap: float = 0.3,
    lprint_: Callable[[str], Any] = print,
) -> ImmatchValResult:
    """Validate a Patch2Pix model on the immatch val scenes (see the module docstring).

    The pair loop and the match arrays are the evaluators' (:mod:`utils.eval.runner`); the
    matches come from ``estimate_matches``, as in the original.

    Args:
        net: the model (``panc`` is set to 1 during the call and restored; eval mode and
            no gradients during the call, the previous mode is restored).
        data_root: the training data root (holding ``immatch_benchmark/val_dense``) or the
            ``val_dense`` folder itself.
        ksize, eval_type, io_thres, ncn_thres, imsize: passed to ``estimate_matches``.
        rthres: RANSAC threshold in pixels.
        sample_max: pairs per scene at most.
        min_overlap: overlap key of ``ov_pairs.npy``.
        lprint_: where the report lines go.
    Returns:
        :class:`ImmatchValResult`.
    Raises:
        ValidationDataMissing: no validation data; other errors propagate with their reason.
    """
    from utils.eval.model_helper import estimate_matches

    t0 = time.time()
    jobs, per_scene = _val_pairs(resolve_val_root(data_root), min_overlap, sample_max)

    def evaluate(pair: _ValPair) -> _PairOutcome:
        matches, _, coarse = estimate_matches(
            net,
            str(pair.im1),
            str(pair.im2),
            ksize=ksize,
            ncn_thres=ncn_thres,
            mutual=True,
            io_thres=io_thres,
            eval_type=eval_type,
            imsize=imsize,
        )
        return _evaluate_pair(as_matches(matches), as_matches(coarse), pair, rthres)

    old_panc, was_training = getattr(net, "panc", None), net.training
    net.panc = 1
    net.eval()
    try:
        with torch.no_grad():
            outcomes, _ = run_pairs(jobs, evaluate, "val immatch", progress=False)
    finally:
        if old_panc is not None:
            net.panc = old_panc
        net.train(was_training)

    result, texts = _summarise(outcomes, per_scene, time.time() - t0)
    _report(result, texts, lprint_, imsize, io_thres, rthres)
    return result


def _summarise(
    outcomes: list[_PairOutcome], per_scene: dict[str, int], seconds: float
) -> tuple[ImmatchValResult, dict[str, str]]:
    """The result over all pairs and the histogram report lines {coarse, fine, inlier}."""
    err = np.asarray([o.err for o in outcomes], dtype=np.float64)
    fine_means = [float(o.fdist.mean()) for o in outcomes if o.fdist.size]
    inlier_ratios = [o.inlier_ratio for o in outcomes]
    dists = {
        "coarse": [o.cdist for o in outcomes],
        "fine": [o.fdist for o in outcomes],
        "inlier": [o.idist for o in outcomes if o.idist is not None],
    }
    hists, texts = {}, {}
    for tag, d in dists.items():
        hist, texts[tag] = check_inliers_distr(d, INLIER_DIST_BINS, tag=tag, return_hist=True)
        hists[tag] = [float(v) for v in hist]
    result = ImmatchValResult(
        mean_err=float(err.mean()) if err.size else float("inf"),
        median_err=float(np.median(err)) if err.size else float("inf"),
        rate=cal_selection_rate(err),
        pass_rates=cal_pass_rates(err, PASS_THRESHOLDS),
        fine_dist=float(np.mean(fine_means)) if fine_means else float("inf"),
        inlier_ratio=float(np.mean(inlier_ratios)) if inlier_ratios else 0.0,
        num_pairs=int(err.size),
        num_failed=sum(o.idist is None for o in outcomes),
        per_scene=per_scene,
        seconds=seconds,
        dist_hist=hists,
    )
    return result, texts


def _report(
    result: ImmatchValResult,
    texts: dict[str, str],
    lprint_: Callable[[str], Any],
    imsize: int | None,
    io_thres: float,
    rthres: float,
) -> None:
    scenes = " ".join(f"{k}:{v}" for k, v in result.per_scene.items())
    lprint_(
        f">>Val immatch: {result.num_pairs} pairs ({scenes}), {result.num_failed} without "
        f"pose, imsize={imsize} io_thres={io_thres} rthres={rthres} ({result.seconds:.1f}s)"
    )
    for tag in ("coarse", "fine", "inlier"):
        lprint_("  " + texts[tag])
    rates = " ".join(f"{k}°={100 * v:.1f}%" for k, v in result.pass_rates.items())
    lprint_(
        f"  err mean={result.mean_err:.2f} median={result.median_err:.2f} pass: {rates} "
        f"rate={result.rate:.4f}"
    )


@dataclass
class BestTracker:
    """``best_vals`` of the checkpoint: [fine dist, io, mean pose error, selection rate].

    The best-checkpoint rule: a validation improves when its mean error is lower or its
    rate is higher than the best so far. Entries 2 and 3 keep the lowest error and the
    highest rate seen; entries 0 and 1 hold the mean fine Sampson distance and the RANSAC
    inlier ratio of the latest improving validation.
    """

    vals: list[float] = field(default_factory=lambda: [float("inf"), 0.0, float("inf"), 0.0])

    def update(self, res: ImmatchValResult) -> bool:
        """Fold one validation in; True when it improves the mean error or the rate."""
        improved = res.mean_err < self.vals[2] or res.rate > self.vals[3]
        if improved:
            self.vals = [
                float(res.fine_dist),
                float(res.inlier_ratio),
                min(float(self.vals[2]), res.mean_err),
                max(float(self.vals[3]), res.rate),
            ]
        return improved
