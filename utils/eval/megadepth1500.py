"""MegaDepth-1500 relative pose (the protocol of LoFTR, used since by LightGlue, RoMa, ...).

Data (as the field distributes it, docs/file-formats.md §7): a folder of scene-info files
``0015_0.1_0.3.npz``, ``0015_0.3_0.5.npz``, ``0022_0.1_0.3.npz``, ``0022_0.3_0.5.npz``,
``0022_0.5_0.7.npz`` listed in ``megadepth_test_1500.txt`` (names with or without ``.npz``).
LoFTR's files are plain pickles (protocol 4) of a dict despite their name; zip archives of
the same arrays are read too, both with the safe loader. They hold ``image_paths``
(relative to the data root, e.g. ``Undistorted_SfM/0015/images/x.jpg``; a path that is
absolute or climbs out with ``..`` is refused), ``depth_paths``, ``intrinsics`` (per image
3×3), ``poses`` (per image 4×4 world-to-camera) and ``pair_infos`` (a list of
``(array([i, j]), overlap, central_matches)``). Ground truth of a pair:
``T_0to1 = poses[j] @ inv(poses[i])``.

Protocol, per pair:

- matches from the matcher, in original pixels;
- pose: points normalised with each image's K (LoFTR's expression); ``cv2.findEssentialMat``
  on them with the identity camera, ``prob=0.99999`` and
  ``threshold = 0.5 / mean(fx0, fy1, fx0, fy1)`` (LoFTR's expression, kept as is), RANSAC
  or OpenCV's USAC MAGSAC++; fewer than 5 matches or no essential matrix → failure; for
  every 3×3 solution ``cv2.recoverPose`` and keep the one with the most inliers, the mask
  carried from one solution to the next as LoFTR's loop does
  (``utils.eval.geometry.essential_relapose``, protocol ``'loftr'``);
- errors: rotation angle of ``Rᵀ R_gt``; translation angle between t and t_gt taken as
  ``min(e, 180 − e)``; pose error = max of the two; a failure counts as infinite;
- epipolar precision: the share of matches whose symmetric epipolar distance (squared,
  normalised coordinates, true essential matrix) is below 5e-4 (LoFTR's ``EPI_ERR_THR``).

Summary: AUC of the pose errors at 5°, 10°, 20° (``utils.geometry.error_auc``), mean matches
per pair, mean precision, failures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from utils.common.cli import UsageError
from utils.common.safe_pickle import safe_load_pickle_or_npz
from utils.eval.geometry import essential_relapose
from utils.eval.runner import Matcher, as_matches, run_pairs
from utils.geometry import (
    cal_rot_angle_error,
    cal_vec_angle_error,
    error_auc,
    normalize_points,
    pose2essential,
)

LIST_FILE = "megadepth_test_1500.txt"
AUC_THRESHOLDS: tuple[int, ...] = (5, 10, 20)
EPI_THRESHOLD = 5e-4
RANSAC_PIXEL_THRESHOLD = 0.5
RANSAC_CONF = 0.99999
RANSAC_METHODS = {"opencv": cv2.RANSAC, "usac": cv2.USAC_MAGSAC}


@dataclass
class Pair:
    """One benchmark pair.

    Attributes:
        name: ``<scene file>:<i>-<j>``.
        image0, image1: absolute image paths; depth0, depth1: depth-map paths (or None).
        K0, K1: (3, 3) intrinsics; T_0to1: (4, 4) relative pose (camera 0 → camera 1).
        overlap: the file's overlap score.
    """

    name: str
    image0: str
    image1: str
    depth0: str | None
    depth1: str | None
    K0: np.ndarray
    K1: np.ndarray
    T_0to1: np.ndarray
    overlap: float


def read_list(scene_info_dir: str | os.PathLike) -> list[str]:
    """The scene-info file names (without ``.npz``) listed in ``megadepth_test_1500.txt``."""
    path = Path(scene_info_dir) / LIST_FILE
    if not path.is_file():
        raise UsageError(
            f"{path} not found: --scene_info must be the folder holding "
            f"{LIST_FILE} and the scene-info .npz files"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not a text list of scene-info files ({e})") from None
    names = [ln.split()[0] for ln in text.splitlines() if ln.strip()]
    return [n[:-4] if n.endswith(".npz") else n for n in names]


class _OutsideRoot(Exception):
    """A path of a scene-info file that is absolute or leaves the data root."""


def _inside(root: Path, rel: Any) -> str:
    """``root / rel`` for a relative path that stays under `root` (no ``..``, not absolute).

    Raises:
        _OutsideRoot: naming the path; TypeError: not a str.
    """
    if not isinstance(rel, str):
        raise TypeError(f"a path that is a {type(rel).__name__}, not a str")
    parts = rel.replace("\\", "/").split("/")
    if (
        not rel
        or rel.startswith(("/", "\\"))
        or ".." in parts
        or Path(rel).is_absolute()
        or (len(rel) > 1 and rel[1] == ":")
    ):
        raise _OutsideRoot(f"{rel!r}, a path outside the data root (absolute or with '..')")
    return str(root / rel)


def _depth_path(root: Path, depths: np.ndarray | None, k: int) -> str | None:
    """Absolute path of depth map `k` (None when the file lists none)."""
    if depths is None or depths[k] is None:
        return None
    return _inside(root, depths[k])


def load_pairs(
    scene_info_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    max_pairs: int | None = None,
) -> list[Pair]:
    """Every pair of the listed scene-info files, in list order (the first `max_pairs`).

    Raises:
        UsageError: naming the file, for a missing list / npz, missing keys or a pair that
            refers to an image slot without an image, K or pose.
    """
    info = Path(scene_info_dir)
    root = Path(data_root)
    pairs: list[Pair] = []
    for name in read_list(info):
        path = info / f"{name}.npz"
        if not path.is_file():
            raise UsageError(f"{path} (listed in {info / LIST_FILE}) not found")
        d = safe_load_pickle_or_npz(path)
        if not isinstance(d, dict):
            raise UsageError(f"{path}: not a scene-info dict (a {type(d).__name__})")
        missing = {"image_paths", "intrinsics", "poses", "pair_infos"} - set(d)
        if missing:
            raise UsageError(f"{path}: missing keys {sorted(missing)}")
        depths = d.get("depth_paths")
        if not isinstance(d["pair_infos"], (list, tuple, np.ndarray)):
            raise UsageError(f"{path}: pair_infos is not a list of pairs")
        for row, info_row in enumerate(d["pair_infos"]):
            try:
                pair = _pair(root, name, d, depths, info_row)
            except _OutsideRoot as e:
                raise UsageError(f"{path}: pair_infos[{row}] refers to {e}") from None
            except (IndexError, TypeError, ValueError, np.linalg.LinAlgError) as e:
                raise UsageError(
                    f"{path}: pair_infos[{row}] is not a valid pair ({type(e).__name__}: {e})"
                ) from None
            if pair is None:
                raise UsageError(
                    f"{path}: pair_infos[{row}] uses an image slot without an "
                    "image, intrinsics or pose"
                )
            pairs.append(pair)
            if max_pairs is not None and len(pairs) >= max_pairs:
                return pairs
    return pairs


def _pair(
    root: Path, name: str, d: dict[str, np.ndarray], depths: np.ndarray | None, info_row: Sequence
) -> Pair | None:
    """One row ``((i, j), overlap, ...)`` of ``pair_infos`` → :class:`Pair` (None when one of
    its image slots is empty). Malformed rows raise IndexError / TypeError / ValueError."""
    (i, j), overlap = info_row[0], info_row[1]
    i, j = int(i), int(j)
    if min(i, j) < 0:
        raise IndexError(f"negative image index in ({i}, {j})")
    for k in (i, j):
        if any(d[key][k] is None for key in ("image_paths", "poses", "intrinsics")):
            return None
    T0 = np.asarray(d["poses"][i], dtype=np.float64).reshape(4, 4)
    T1 = np.asarray(d["poses"][j], dtype=np.float64).reshape(4, 4)
    return Pair(
        name=f"{name}:{i}-{j}",
        image0=_inside(root, d["image_paths"][i]),
        image1=_inside(root, d["image_paths"][j]),
        depth0=_depth_path(root, depths, i),
        depth1=_depth_path(root, depths, j),
        K0=np.asarray(d["intrinsics"][i], dtype=np.float64).reshape(3, 3),
        K1=np.asarray(d["intrinsics"][j], dtype=np.float64).reshape(3, 3),
        T_0to1=T1 @ np.linalg.inv(T0),
        overlap=float(overlap),
    )


def estimate_pose(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    K0: np.ndarray,
    K1: np.ndarray,
    thresh: float = RANSAC_PIXEL_THRESHOLD,
    conf: float = RANSAC_CONF,
    ransac: str = "opencv",
    seed: int | None = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Relative pose from matches (the protocol of the module docstring).

    Args:
        kpts0, kpts1: (N, 2) pixel coordinates in image 0 / 1.
        K0, K1: (3, 3) intrinsics.
        thresh: RANSAC threshold in pixels (divided by ``mean(fx0, fy1, fx0, fy1)``).
        conf: RANSAC confidence.
        ransac: 'opencv' (cv2.RANSAC) or 'usac' (cv2.USAC_MAGSAC).
        seed: seeds OpenCV's RNG for reproducible results (None: leave it).
    Returns:
        None on failure, else (R (3, 3), t (3,) unit, inliers (N,) bool: the mask after the
        chosen solution's recoverPose, as LoFTR returns it).
    """
    if ransac not in RANSAC_METHODS:
        raise ValueError(f"ransac must be one of {sorted(RANSAC_METHODS)}, got {ransac!r}")
    if len(kpts0) < 5:
        return None
    # LoFTR's own expressions, to the last bit: with 5 matches a difference of 1e-17 in the
    # normalised points can pick another of OpenCV's solutions
    n0 = (kpts0 - K0[[0, 1], [2, 2]][None]) / K0[[0, 1], [0, 1]][None]
    n1 = (kpts1 - K1[[0, 1], [2, 2]][None]) / K1[[0, 1], [0, 1]][None]
    thr = thresh / np.mean([K0[0, 0], K1[1, 1], K0[0, 0], K1[1, 1]])
    return essential_relapose(
        n0,
        n1,
        np.eye(3),
        thr,
        conf,
        method=RANSAC_METHODS[ransac],
        protocol="loftr",
        seed=seed,
    )


def relative_pose_error(T_0to1: np.ndarray, R: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """(translation angle error, rotation angle error) in degrees; the translation error is
    sign-invariant, ``min(e, 180 − e)``."""
    err_t = cal_vec_angle_error(t, T_0to1[:3, 3], sign_invariant=True)
    err_R = cal_rot_angle_error(R, T_0to1[:3, :3])
    return err_t, err_R


def epipolar_errors(
    matches: np.ndarray, K0: np.ndarray, K1: np.ndarray, T_0to1: np.ndarray
) -> np.ndarray:
    """(N,) squared symmetric epipolar distances in normalised coordinates (true E)."""
    from utils.geometry import symmetric_epipolar_distance

    if not len(matches):
        return np.zeros(0)
    E = pose2essential(T_0to1[:3, :3], T_0to1[:3, 3])
    return symmetric_epipolar_distance(
        normalize_points(matches[:, :2], K0), normalize_points(matches[:, 2:], K1), E
    )


def evaluate_pair(matches: np.ndarray, pair: Pair, ransac: str = "opencv") -> dict[str, Any]:
    """Metrics of one pair from its (N, 4) matches in original pixels.

    Returns:
        {'pair', 'n_matches', 'n_inliers', 'precision', 'err_t', 'err_R', 'pose_error'}
        (errors in degrees; inf when the pose could not be estimated; precision is 0 for a
        pair without matches).
    """
    m = np.asarray(matches, dtype=np.float64).reshape(-1, 4)
    epi = epipolar_errors(m, pair.K0, pair.K1, pair.T_0to1)
    res = estimate_pose(m[:, :2], m[:, 2:], pair.K0, pair.K1, ransac=ransac)
    if res is None:
        err_t = err_R = float("inf")
        n_inl = 0
    else:
        R, t, inl = res
        err_t, err_R = relative_pose_error(pair.T_0to1, R, t)
        n_inl = int(inl.sum())
    return {
        "pair": pair.name,
        "n_matches": len(m),
        "n_inliers": n_inl,
        "precision": float(np.mean(epi < EPI_THRESHOLD)) if len(m) else 0.0,
        "err_t": err_t,
        "err_R": err_R,
        "pose_error": max(err_t, err_R),
    }


def summarize(
    results: Sequence[dict[str, Any]], thresholds: Sequence[float] = AUC_THRESHOLDS
) -> dict[str, Any]:
    """AUC of the pose errors at `thresholds`, mean matches, mean precision, failures."""
    errs = np.array([r["pose_error"] for r in results], dtype=np.float64)
    auc = error_auc(errs, thresholds)
    n = len(results)
    return {
        "n_pairs": n,
        "auc": {f"{t:g}": v for t, v in zip(thresholds, auc)},
        "mean_matches": float(np.mean([r["n_matches"] for r in results])) if n else 0.0,
        "precision": float(np.mean([r["precision"] for r in results])) if n else 0.0,
        "failures": int(np.sum(~np.isfinite(errs))),
        "median_pose_error": float(np.median(errs)) if n else None,
    }


def format_summary(s: dict[str, Any]) -> str:
    """One block of text: AUC@5/10/20, matches per pair, precision, failures."""
    auc = "  ".join(f"@{t}° {100 * v:.2f}" for t, v in s["auc"].items())
    return (
        f"MegaDepth-1500: {s['n_pairs']} pairs  AUC {auc}\n"
        f"  matches/pair {s['mean_matches']:.1f}  precision@{EPI_THRESHOLD:g} "
        f"{100 * s['precision']:.2f}%  failures {s['failures']}"
    )


def evaluate_megadepth1500(
    scene_info_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    matcher: Matcher,
    ransac: str = "opencv",
    max_pairs: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Match and evaluate every pair.

    Returns:
        {'summary': summarize(...), 'pairs': [per-pair dicts], 'time_s': float}.
    """
    pairs = load_pairs(scene_info_dir, data_root, max_pairs)
    if not pairs:
        raise UsageError(f"no pairs in the scene-info files of {scene_info_dir}")

    def evaluate(pair: Pair) -> dict[str, Any]:
        return evaluate_pair(as_matches(matcher(pair.image0, pair.image1)), pair, ransac)

    def postfix(done: list[dict[str, Any]]) -> dict[str, Any]:
        auc5 = error_auc([r["pose_error"] for r in done], (5,))[0]
        return {"matches": done[-1]["n_matches"], "auc5": f"{auc5:.3f}"}

    results, seconds = run_pairs(pairs, evaluate, "MegaDepth-1500", progress, postfix)
    return {"summary": summarize(results), "pairs": results, "time_s": seconds}


def read_depth(path: str) -> np.ndarray:
    """An (H, W) depth map from a MegaDepth HDF5 file (dataset 'depth').

    Raises:
        UsageError: one line naming the file when it is missing or not such a file.
    """
    import h5py

    if not Path(path).is_file():
        raise UsageError(f"depth map {path} not found (the oracle matcher reads depth maps)")
    try:
        with h5py.File(path, "r") as f:
            depth = np.asarray(f["depth"], dtype=np.float64)
    except (OSError, KeyError, ValueError, TypeError) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        raise UsageError(f"cannot read depth map {path}: {why}") from None
    if depth.ndim != 2:
        raise UsageError(f"depth map {path}: 'depth' has shape {depth.shape}, not (H, W)")
    return depth


def oracle_matcher(pairs: Sequence[Pair], step: int = 8, depth_tol: float = 0.01) -> Matcher:
    """Ground-truth matches from the depth maps (tests the data and the protocol).

    Pixel centres (j + 0.5, i + 0.5) of image 0 on a grid of spacing `step` with a depth are
    lifted with K0, moved by T_0to1 and projected with K1; kept when they land inside image 1
    in front of the camera and agree with image 1's depth (relative difference <
    `depth_tol`: not occluded).
    """
    by_images = {(p.image0, p.image1): p for p in pairs}

    def match(im0: str, im1: str) -> np.ndarray:
        p = by_images[(str(im0), str(im1))]
        if p.depth0 is None or p.depth1 is None:
            raise UsageError(f"the oracle matcher needs depth maps ({p.name} has none)")
        d0, d1 = read_depth(p.depth0), read_depth(p.depth1)
        ys, xs = np.mgrid[0 : d0.shape[0] : step, 0 : d0.shape[1] : step]
        z0 = d0[ys, xs].ravel()
        x0 = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)[z0 > 0]
        z0 = z0[z0 > 0]
        X0 = np.concatenate([normalize_points(x0, p.K0), np.ones((len(x0), 1))], 1) * z0[:, None]
        X1 = X0 @ p.T_0to1[:3, :3].T + p.T_0to1[:3, 3]
        z1 = X1[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            x1 = (X1 @ p.K1.T)[:, :2] / z1[:, None]
        h1, w1 = d1.shape
        ok = (z1 > 0) & (x1[:, 0] >= 0) & (x1[:, 0] < w1) & (x1[:, 1] >= 0) & (x1[:, 1] < h1)
        ok &= np.isfinite(x1).all(axis=1)
        col = np.clip(np.floor(np.nan_to_num(x1[:, 0])).astype(int), 0, w1 - 1)
        row = np.clip(np.floor(np.nan_to_num(x1[:, 1])).astype(int), 0, h1 - 1)
        ok &= np.abs(d1[row, col] - z1) < depth_tol * np.abs(z1)
        return np.concatenate([x0[ok], x1[ok]], axis=1)

    return match
