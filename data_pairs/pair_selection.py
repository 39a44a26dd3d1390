"""The training-pair selection rules (docs/file-formats.md §2), shared by both pair generators.

``data_pairs.prep_megadepth_training_pairs`` (D2Net scene_info files) and
``data_pairs.prep_colmap_training_pairs`` (COLMAP models) turn their input into one
*scene table* and call :func:`scene_pairs` on it. The table is a dict with, per image slot
i (entries may be None for unusable images):

- ``overlap_matrix`` (n, n): entry [a, b] = shared 3D points / 3D points of a (−1 or any
  value outside the range where undefined);
- ``image_paths``: the image name stored in the pair file;
- ``intrinsics``: (3, 3) K of the undistorted pinhole camera;
- ``poses``: (4, 4) or (3, 4) world-to-camera [R|t];
- ``points3D_id_to_2D``: {point3D_id: (x, y)} observations of the image;
- optional ``image_sizes``: (w, h) of the image file; without it the size is taken from K
  as the D2Net data requires (``w, h = 2·cx, 2·cy``).

The rules, in order, for the ordered pairs (a, b):

1. ``min_overlap_ratio ≤ overlap[a, b] < 1``, visited in an order shuffled by the caller's
   ``numpy.random.RandomState`` (scale ratio unconstrained);
2. both images landscape (``w ≥ h``) and both admitting
   ``crop_from_bottom_right(w, h, im_target_ratio)``;
3. relative pose ``R12 = R2 R1ᵀ``, ``t12 = R2 (c1 − c2)`` (``c = −Rᵀt``), stored as the
   quaternion ``q`` (w, x, y, z) and ``R`` = the matrix of q;
4. ``F = pose2fund(K1, K2, R, t)``; the pair is rejected when the mean Sampson distance (px²)
   of the two images' observations of their shared 3D points exceeds ``sampson_thres``;
5. at most ``max_pairs`` kept pairs.

A kept pair is ``Namespace(im1, im2, overlap, K1, K2, t, q, R, crop1, crop2)`` with crops
(dw, dh) as ints; :func:`add_pair_images` collects the ``ims`` list of a scene entry.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable, Sequence

import numpy as np

from utils.common.cli import UsageError
from utils.datasets.preprocess import crop_from_bottom_right
from utils.geometry import pose2fund, qvec2rotmat, relative_pose, rotmat2qvec, sampson_distance

__all__ = [
    "SCENE_TABLE_KEYS",
    "image_size_from_K",
    "pair_sampson_error",
    "make_pair",
    "scene_pairs",
    "add_pair_images",
]

#: The keys of a scene table that the selection reads (``image_sizes`` is optional).
SCENE_TABLE_KEYS = ("overlap_matrix", "image_paths", "intrinsics", "poses", "points3D_id_to_2D")


class SceneDataError(UsageError, ValueError):
    """A camera of a scene that no pair can be computed from (non-finite or singular K,
    non-positive focal length, non-finite pose): one line in every command."""


def check_camera(K: object, pose: object, what: str) -> None:
    """Refuse intrinsics / a pose that would give NaN pairs or a singular K.

    Raises:
        SceneDataError naming `what` (the image).
    """
    try:
        K = np.asarray(K, dtype=np.float64)
        pose = np.asarray(pose, dtype=np.float64)
    except (TypeError, ValueError):
        raise SceneDataError(f"{what}: intrinsics / pose are not numbers") from None
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise SceneDataError(f"{what}: the intrinsics are not a finite 3x3 matrix")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise SceneDataError(
            f"{what}: focal length fx={K[0, 0]:g}, fy={K[1, 1]:g} (must be positive)"
        )
    if pose.shape not in ((3, 4), (4, 4)) or not np.all(np.isfinite(pose)):
        raise SceneDataError(f"{what}: the pose is not a finite 3x4 / 4x4 matrix")


def image_size_from_K(K: np.ndarray) -> tuple[int, int]:
    """(w, h) = (2·cx, 2·cy) of a (3, 3) intrinsic matrix, rounded to ints."""
    K = np.asarray(K, dtype=np.float64)
    return int(round(2 * K[0, 2])), int(round(2 * K[1, 2]))


def pair_sampson_error(pts1_by_id: dict, pts2_by_id: dict, F: np.ndarray) -> tuple[float, int]:
    """Mean Sampson distance (px²) of the shared 3D points' observations, and their count.

    Args:
        pts1_by_id, pts2_by_id: {point3D_id: (2,) xy} of image 1 and image 2.
        F: (3, 3) with x2ᵀ F x1 = 0.
    Returns:
        (mean distance, number of shared points); (inf, 0) when they share none.
    """
    shared = sorted(pts1_by_id.keys() & pts2_by_id.keys())
    if not shared:
        return float("inf"), 0
    p1 = np.array([pts1_by_id[p] for p in shared], dtype=np.float64).reshape(-1, 2)
    p2 = np.array([pts2_by_id[p] for p in shared], dtype=np.float64).reshape(-1, 2)
    return float(np.mean(sampson_distance(p1, p2, F))), len(shared)


def make_pair(
    im1: str,
    im2: str,
    overlap: float,
    K1: np.ndarray,
    K2: np.ndarray,
    pose1: np.ndarray,
    pose2: np.ndarray,
    crop1: tuple[int, int],
    crop2: tuple[int, int],
) -> Namespace:
    """Pair record from two world-to-camera poses (4, 4) or (3, 4) and intrinsics (3, 3).

    Returns:
        Namespace(im1, im2, overlap, K1, K2, t (3,), q (4,) (w, x, y, z), R (3, 3) = matrix
        of q, crop1, crop2).
    """
    pose1 = np.asarray(pose1, dtype=np.float64)
    pose2 = np.asarray(pose2, dtype=np.float64)
    R12, t12 = relative_pose(pose1[:3, :3], pose1[:3, 3], pose2[:3, :3], pose2[:3, 3])
    q = np.asarray(rotmat2qvec(R12), dtype=np.float64)
    return Namespace(
        im1=im1,
        im2=im2,
        overlap=float(overlap),
        K1=np.asarray(K1, dtype=np.float64).copy(),
        K2=np.asarray(K2, dtype=np.float64).copy(),
        t=np.asarray(t12, dtype=np.float64),
        q=q,
        R=np.asarray(qvec2rotmat(q), dtype=np.float64),
        crop1=tuple(int(c) for c in crop1),
        crop2=tuple(int(c) for c in crop2),
    )


def scene_pairs(
    info: dict,
    rng: np.random.RandomState,
    min_overlap_ratio: float = 0.35,
    im_target_ratio: float = 1.5,
    max_pairs: int = 500,
    sampson_thres: float = 1.0,
    stats: dict[str, int] | None = None,
    name_of: Callable[[str], str] = str,
) -> list[Namespace]:
    """Selected pairs of one scene table (rules 1–5 of the module docstring).

    Args:
        info: the scene table; rng: shuffles the valid pairs.
        max_pairs: stop after this many kept pairs (≤ 0: keep none).
        stats: optional dict that receives counts 'valid', 'size', 'sampson', 'kept'.
        name_of: maps ``image_paths[i]`` to the name stored in the pair record.
    Returns:
        the kept pair Namespaces, in visiting order.
    Raises:
        SceneDataError naming the image whose intrinsics / pose cannot give a pair.
    """
    overlap = np.asarray(info["overlap_matrix"], dtype=np.float64)
    paths, Ks, poses = info["image_paths"], info["intrinsics"], info["poses"]
    pts2d = info["points3D_id_to_2D"]
    sizes: Sequence | None = info.get("image_sizes")
    valid = np.logical_and(overlap >= min_overlap_ratio, overlap < 1)
    idx = np.stack(np.nonzero(valid), axis=1)
    rng.shuffle(idx)
    counts = {"valid": len(idx), "size": 0, "sampson": 0, "kept": 0}
    crops: dict[int, tuple[int, int] | None] = {}

    def crop_of(i: int) -> tuple[int, int] | None:
        if i not in crops:
            if paths[i] is None or Ks[i] is None or poses[i] is None:
                crops[i] = None
            else:
                check_camera(Ks[i], poses[i], f"image {i} ({paths[i]})")
                w, h = image_size_from_K(Ks[i]) if sizes is None else sizes[i]
                crops[i] = crop_from_bottom_right(w, h, im_target_ratio) if w >= h else None
        return crops[i]

    pairs: list[Namespace] = []
    for a, b in idx:
        if len(pairs) >= max_pairs:
            break
        a, b = int(a), int(b)
        c1, c2 = crop_of(a), crop_of(b)
        if c1 is None or c2 is None:
            counts["size"] += 1
            continue
        pair = make_pair(
            name_of(paths[a]),
            name_of(paths[b]),
            overlap[a, b],
            Ks[a],
            Ks[b],
            poses[a],
            poses[b],
            c1,
            c2,
        )
        F = pose2fund(pair.K1, pair.K2, pair.R, pair.t)
        err, _ = pair_sampson_error(pts2d[a] or {}, pts2d[b] or {}, F)
        if not err <= sampson_thres:
            counts["sampson"] += 1
            continue
        pairs.append(pair)
    counts["kept"] = len(pairs)
    if stats is not None:
        for k, v in counts.items():
            stats[k] = stats.get(k, 0) + v
    return pairs


def add_pair_images(entry: dict[str, list[Namespace]], pairs: Sequence[Namespace]) -> None:
    """Append `pairs` to a scene entry {'ims', 'pairs'}, adding each new image once to
    ``ims`` as Namespace(name, crop) in first-seen order."""
    known = {im.name for im in entry["ims"]}
    for p in pairs:
        for name, crop in ((p.im1, p.crop1), (p.im2, p.crop2)):
            if name not in known:
                known.add(name)
                entry["ims"].append(Namespace(name=name, crop=crop))
    entry["pairs"].extend(pairs)
