"""SfM-style observations of the synthetic scenes: 3D points and the images that see them.

3D points are sampled on the surfaces and observed in every image where they project
inside the image, lie in front of the camera, are not occluded (an exact ray test) and
agree with the depth map at their pixel (within 1 %). Only points seen by ≥ 2 images are
kept, as in an SfM model.
"""

from __future__ import annotations

import numpy as np

from data_pairs.synthetic.camera import View
from data_pairs.synthetic.render import cast_rays, transform_points
from data_pairs.synthetic.scene import Scene

__all__ = ["sample_surface_points", "observe_points", "observations"]


def sample_surface_points(scene: Scene, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) points drawn uniformly (by area) on the scene's rectangles."""
    p = scene.area / scene.area.sum()
    q = rng.choice(len(p), size=n, p=p)
    s, r = rng.uniform(0.01, 0.99, (2, n))
    return scene.origin[q] + s[:, None] * scene.u[q] + r[:, None] * scene.v[q]


def observe_points(
    scene: Scene, view: View, depth: np.ndarray, pts: np.ndarray, depth_tol: float = 0.01
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which 3D points a view observes, and where.

    A point is observed when it is in front of the camera (z > 0.1), projects inside the
    image (0 ≤ x < w, 0 ≤ y < h), is the nearest surface along its ray (exact ray cast) and
    the depth map at its pixel agrees with its depth within `depth_tol` (relative).

    Args:
        pts: (N, 3) world points; depth: (H, W) the view's depth map.
    Returns:
        mask (N,) bool, xy (N, 2) projections (pixels), z (N,) camera depths.
    """
    cam = transform_points(pts, view.R, view.t)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = transform_points(cam, view.K)
        xy = proj[:, :2] / proj[:, 2:3]
    mask = (z > 0.1) & (xy[:, 0] >= 0) & (xy[:, 0] < view.width)
    mask &= (xy[:, 1] >= 0) & (xy[:, 1] < view.height)
    idx = np.nonzero(mask)[0]
    if len(idx):
        c = view.center
        dirs = (pts[idx] - c) / z[idx, None]
        _, tau, _, _ = cast_rays(scene, c, dirs)
        vis = tau >= z[idx] * (1 - 1e-6)
        col = np.clip(np.floor(xy[idx, 0]).astype(int), 0, view.width - 1)
        row = np.clip(np.floor(xy[idx, 1]).astype(int), 0, view.height - 1)
        dval = depth[row, col]
        vis &= (dval > 0) & (np.abs(dval - z[idx]) <= depth_tol * z[idx])
        mask[idx[~vis]] = False
    return mask, xy, z


def observations(
    scene: Scene, views: list[View], depths: list[np.ndarray], pts: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Observe `pts` in all views and keep the points seen at least twice.

    Returns:
        kept (M,) indices into pts, and per view: idx (K_v,) indices into kept (sorted),
        xy (K_v, 2), z (K_v,).
    """
    obs = [observe_points(scene, v, d, pts) for v, d in zip(views, depths)]
    count = np.sum([m for m, _, _ in obs], axis=0)
    kept = np.nonzero(count >= 2)[0]
    remap = -np.ones(len(pts), np.int64)
    remap[kept] = np.arange(len(kept))
    per_idx, per_xy, per_z = [], [], []
    for m, xy, z in obs:
        sel = np.nonzero(m & (remap >= 0))[0]
        per_idx.append(remap[sel])
        per_xy.append(xy[sel])
        per_z.append(z[sel])
    return kept, per_idx, per_xy, per_z
