"""PhotoTourism-like validation scenes as COLMAP models (docs/file-formats.md §4).

Layout written under ``<out>/immatch_benchmark/val_dense/<val scene>/dense``::

    images/<name>.jpg
    sparse/{cameras,images,points3D}.bin     COLMAP binary model (+ pycolmap's rigs/frames)

(``sparse/ov_pairs.npy`` is added by ``data_pairs.precompute_immatch_val_ovs``.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from data_pairs.synthetic.files import save_jpeg
from data_pairs.synthetic.scene import KIND_VAL
from data_pairs.synthetic.synthesize import SceneSpec, scene_spec, synthesize_scene
from utils.colmap.read_model import Camera, Image, Point3D, write_model
from utils.common.data_layout import VAL_SUBDIR
from utils.geometry import rotmat2qvec

__all__ = ["CAMERA_MODELS", "make_val_scene", "val_scene_name"]

CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL")


def val_scene_name(k: int) -> str:
    """Name of validation scene k: 'synthetic_val', then 'synthetic_val_1', ..."""
    return "synthetic_val" if k == 0 else f"synthetic_val_{k}"


def make_val_scene(
    out: Path,
    scene_name: str,
    index: int,
    spec: SceneSpec | None = None,
    *,
    n_untriangulated: int = 40,
    **spec_fields: int,
) -> Path:
    """Render one PhotoTourism-like validation scene; returns its ``dense`` folder.

    One COLMAP camera per image, models cycling through SIMPLE_PINHOLE, PINHOLE,
    SIMPLE_RADIAL (k = 0) and RADIAL (k1 = k2 = 0); each image also gets
    `n_untriangulated` random 2D points without a 3D point (id −1). Point ids start at 1.
    The scene is `spec` with `spec_fields` replaced (see :func:`make_megadepth_scene`).
    """
    spec = scene_spec(spec, **spec_fields)
    dense = out / VAL_SUBDIR / scene_name / "dense"
    for old in (dense / "images", dense / "sparse"):  # a re-run replaces the scene's files
        if old.is_dir():
            shutil.rmtree(old)
    syn = synthesize_scene(spec, KIND_VAL, index)
    views, imgs, pts, kept, rrng = syn.views, syn.images, syn.points, syn.kept, syn.render_rng
    per_idx, per_xy = syn.obs_idx, syn.obs_xy

    cameras: dict[int, Camera] = {}
    images: dict[int, Image] = {}
    obs_images: dict[int, list[int]] = {int(i) + 1: [] for i in range(len(kept))}
    for k, (v, img) in enumerate(zip(views, imgs)):
        iid = k + 1
        name = f"{index:02d}{k:06d}_{int(rrng.integers(1e8, 1e9))}.jpg"
        save_jpeg(dense / "images" / name, img)
        f, cx, cy = v.K[0, 0], v.K[0, 2], v.K[1, 2]
        model = CAMERA_MODELS[k % len(CAMERA_MODELS)]
        params = {
            "SIMPLE_PINHOLE": [f, cx, cy],
            "PINHOLE": [f, v.K[1, 1], cx, cy],
            "SIMPLE_RADIAL": [f, cx, cy, 0.0],
            "RADIAL": [f, cx, cy, 0.0, 0.0],
        }[model]
        cameras[iid] = Camera(model, v.width, v.height, np.array(params, dtype=np.float64))
        extra = np.stack(
            [
                rrng.uniform(0, v.width, n_untriangulated),
                rrng.uniform(0, v.height, n_untriangulated),
            ],
            axis=1,
        )
        xys = np.concatenate([per_xy[k], extra])
        p3d = np.concatenate([per_idx[k] + 1, -np.ones(n_untriangulated, np.int64)])
        order = rrng.permutation(len(xys))
        qvec = np.asarray(rotmat2qvec(v.R), dtype=np.float64)
        images[iid] = Image(name, iid, qvec, v.t.copy(), p3d[order], xys[order])
        for p in per_idx[k]:
            obs_images[int(p) + 1].append(iid)
    points3D = {
        pid: Point3D(pts[kept[pid - 1]].copy(), np.array(ims, dtype=np.int64))
        for pid, ims in obs_images.items()
    }
    write_model(dense / "sparse", cameras, images, points3D)
    return dense
