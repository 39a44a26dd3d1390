"""MegaDepth-like training scenes in D2Net's layout (docs/file-formats.md §1).

Layout written under ``<out>/MegaDepth_undistort``::

    scene_info/<scene>.0.npz                 D2Net keys (docs/file-formats.md §1)
    <scene>/images/<i>.jpg                   the images (where the training loader looks)
    Undistorted_SfM/<scene> -> ../<scene>    so that the npz image_paths resolve too
    phoenix/S6/zl548/MegaDepth_v1/<scene>/dense0/depths/<i>.h5   (dataset 'depth')

``image_paths`` in the npz keep D2Net's form ``Undistorted_SfM/<scene>/images/<i>.jpg``
(relative to ``MegaDepth_undistort``); the pair generator strips ``Undistorted_SfM/`` and the
loader joins the rest to ``MegaDepth_undistort/``, which finds ``<scene>/images/<i>.jpg``.
``Undistorted_SfM/<scene>`` is a relative symbolic link to ``../<scene>`` (layout ``copy``
writes a second copy of the JPEGs instead, ``none`` omits it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from data_pairs.synthetic.files import object_array, save_depth, save_jpeg, save_npz
from data_pairs.synthetic.scene import KIND_TRAIN
from data_pairs.synthetic.synthesize import SceneSpec, scene_spec, synthesize_scene
from utils.common.data_layout import SFM_PREFIX

__all__ = ["DEPTH_SUBDIR", "SFM_LAYOUTS", "make_megadepth_scene"]

DEPTH_SUBDIR = Path("phoenix/S6/zl548/MegaDepth_v1")
SFM_LAYOUTS = ("link", "copy", "none")


def _link_or_copy_sfm(mega_root: Path, scene_name: str, layout: str) -> None:
    """Make ``Undistorted_SfM/<scene>/images`` reach ``<scene>/images`` (see module doc)."""
    if layout == "none":
        return
    sfm = mega_root / SFM_PREFIX
    sfm.mkdir(parents=True, exist_ok=True)
    dst = sfm / scene_name
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)
    if layout == "link":
        try:
            os.symlink(Path("..") / scene_name, dst, target_is_directory=True)
            return
        except OSError:
            pass  # file system without symbolic links: fall back to a copy
    shutil.copytree(mega_root / scene_name, dst)


def _pair_matrices(
    poses: list, id_to_2d: list, id_to_nd: list
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """D2Net's pair matrices of one scene, −1 where a slot is None or nothing is shared.

    Args:
        poses: per slot a (4, 4) world-to-camera matrix or None; id_to_2d / id_to_nd: per
            slot a dict point id → (2,) pixel / normalised depth (z / mean focal), or None.
    Returns:
        overlap (S, S) (shared points / points of the row image), scale_ratio (S, S)
        (min over shared points of the larger normalised-depth ratio) and angles (S, S)
        (degrees between the optical axes).
    """
    n_slots = len(poses)
    overlap = -np.ones((n_slots, n_slots))
    scale_ratio = -np.ones((n_slots, n_slots))
    angles = -np.ones((n_slots, n_slots))
    for a in range(n_slots):
        if id_to_2d[a] is None:
            continue
        for b in range(a + 1, n_slots):
            if id_to_2d[b] is None:
                continue
            za, zb = poses[a][2, :3], poses[b][2, :3]
            ang = np.degrees(np.arccos(np.clip(float(za @ zb), -1.0, 1.0)))
            angles[a, b] = angles[b, a] = ang
            shared = sorted(id_to_2d[a].keys() & id_to_2d[b].keys())
            if id_to_2d[a]:
                overlap[a, b] = len(shared) / len(id_to_2d[a])
            if id_to_2d[b]:
                overlap[b, a] = len(shared) / len(id_to_2d[b])
            if shared:
                nda = np.array([id_to_nd[a][p] for p in shared])
                ndb = np.array([id_to_nd[b][p] for p in shared])
                ratio = float(np.min(np.maximum(nda / ndb, ndb / nda)))
                scale_ratio[a, b] = scale_ratio[b, a] = ratio
    return overlap, scale_ratio, angles


def make_megadepth_scene(
    out: Path,
    scene_name: str,
    index: int,
    spec: SceneSpec | None = None,
    *,
    none_entries: int = 1,
    sfm_layout: str = "link",
    **spec_fields: int,
) -> Path:
    """Render one MegaDepth-like scene under ``out/MegaDepth_undistort``; returns the npz.

    The scene is `spec` with `spec_fields` (``seed``, ``n_images``, ``width``, ... of
    :class:`~data_pairs.synthetic.synthesize.SceneSpec`) replaced. Writes images, depth maps
    and ``scene_info/<scene>.0.npz`` with D2Net's keys; the npz lists get `none_entries`
    extra None slots at random positions (as real files have for unusable images). Point
    ids are 0..n_points3D−1.
    """
    spec = scene_spec(spec, **spec_fields)
    mega = out / "MegaDepth_undistort"
    # a re-run replaces the scene's files instead of mixing old and new ones
    for old in (mega / scene_name / "images", mega / DEPTH_SUBDIR / scene_name):
        if old.is_dir():
            shutil.rmtree(old)
    syn = synthesize_scene(spec, KIND_TRAIN, index)
    views, imgs, depths, prng = syn.views, syn.images, syn.depths, syn.points_rng
    per_idx, per_xy, per_z = syn.obs_idx, syn.obs_xy, syn.obs_z
    n_pts3d = int(max((int(i.max()) + 1 for i in per_idx if len(i)), default=0))

    # slot order of the npz lists, with None slots mixed in
    n_slots = spec.n_images + none_entries
    none_slots = set(prng.choice(n_slots, size=none_entries, replace=False).tolist())
    slot_of = [s for s in range(n_slots) if s not in none_slots]

    image_paths: list = [None] * n_slots
    depth_paths: list = [None] * n_slots
    intrinsics: list = [None] * n_slots
    poses: list = [None] * n_slots
    id_to_2d: list = [None] * n_slots
    id_to_nd: list = [None] * n_slots
    for k, (v, img, depth) in enumerate(zip(views, imgs, depths)):
        s = slot_of[k]
        stem = f"{k:04d}"
        save_jpeg(mega / scene_name / "images" / f"{stem}.jpg", img)
        save_depth(mega / DEPTH_SUBDIR / scene_name / "dense0" / "depths" / f"{stem}.h5", depth)
        image_paths[s] = f"{SFM_PREFIX}/{scene_name}/images/{stem}.jpg"
        depth_paths[s] = f"{DEPTH_SUBDIR.as_posix()}/{scene_name}/dense0/depths/{stem}.h5"
        intrinsics[s] = v.K.copy()
        poses[s] = v.pose
        mean_f = 0.5 * (v.K[0, 0] + v.K[1, 1])
        id_to_2d[s] = {int(p): per_xy[k][j].copy() for j, p in enumerate(per_idx[k])}
        id_to_nd[s] = {int(p): float(per_z[k][j] / mean_f) for j, p in enumerate(per_idx[k])}
    _link_or_copy_sfm(mega, scene_name, sfm_layout)

    overlap, scale_ratio, angles = _pair_matrices(poses, id_to_2d, id_to_nd)

    info = out / "MegaDepth_undistort" / "scene_info"
    info.mkdir(parents=True, exist_ok=True)
    npz = info / f"{scene_name}.0.npz"
    save_npz(
        npz,
        image_paths=object_array(image_paths),
        depth_paths=object_array(depth_paths),
        intrinsics=object_array(intrinsics),
        poses=object_array(poses),
        overlap_matrix=overlap,
        scale_ratio_matrix=scale_ratio,
        angles=angles,
        n_points3D=np.array(n_pts3d),
        points3D_id_to_2D=object_array(id_to_2d),
        points3D_id_to_ndepth=object_array(id_to_nd),
    )
    return npz
