"""Exact ray casting of the synthetic scenes: images and depth maps.

Every pixel's ray is intersected with every rectangle (nearest hit, bilinear texture
lookup, ``supersample``² rays per pixel averaged); depth maps hold the z-depth of each pixel
centre (0 for sky). Pixel convention (COLMAP's): the centre of pixel (row i, column j) is
(j + 0.5, i + 0.5).
"""

from __future__ import annotations

import numpy as np

from data_pairs.synthetic.camera import View
from data_pairs.synthetic.scene import Scene

__all__ = ["pixel_rays", "cast_rays", "transform_points", "render", "render_views"]


def _dot3(d: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N,) dot products of the rows of d (N, 3) with v (3,).

    Written out instead of ``d @ v``: multi-threaded BLAS on these thin products is slower
    than this, badly so on a busy machine.
    """
    return d[:, 0] * v[0] + d[:, 1] * v[1] + d[:, 2] * v[2]


def transform_points(pts: np.ndarray, M: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
    """(N, 3) rows ``M · p (+ t)`` for points p (N, 3) and M (3, 3), without BLAS."""
    out = np.stack([_dot3(pts, M[0]), _dot3(pts, M[1]), _dot3(pts, M[2])], axis=1)
    return out if t is None else out + t


def pixel_rays(view: View, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """World ray directions scaled to unit camera depth for pixel coordinates (x, y).

    Args:
        xs, ys: (N,) pixel coordinates (COLMAP convention, pixel centres at +0.5).
    Returns:
        (N, 3) directions D with ``Rᵀ K⁻¹ [x, y, 1]ᵀ``: a hit at ``c + τ·D`` has z-depth τ.
    """
    kinv = np.linalg.inv(view.K)
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    # K⁻¹ [x, y, 1]ᵀ for an upper-triangular K, then rotate to world: rows Rᵀ · cam
    cx = kinv[0, 0] * xs + kinv[0, 1] * ys + kinv[0, 2]
    cy = kinv[1, 1] * ys + kinv[1, 2]
    return cx[:, None] * view.R[0] + cy[:, None] * view.R[1] + view.R[2]


def cast_rays(
    scene: Scene, center: np.ndarray, dirs: np.ndarray, chunk: int = 16384
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest rectangle hit by each ray ``center + τ·dirs[n]``, τ > 0.

    Exact ray/rectangle intersection; rays are first culled against each rectangle's
    bounding sphere so that small rectangles cost little.

    Args:
        center: (3,) common ray origin; dirs: (N, 3) directions (not necessarily unit).
    Returns:
        quad (N,) int (−1 for no hit), tau (N,) (inf for no hit), s (N,), r (N,) the hit's
        rectangle coordinates in [0, 1].
    """
    n_rays = dirs.shape[0]
    quad = np.full(n_rays, -1, np.int64)
    tau = np.full(n_rays, np.inf)
    s_out = np.zeros(n_rays)
    r_out = np.zeros(n_rays)
    normal = scene.normal
    uh = scene.u / (scene.u**2).sum(1, keepdims=True)
    vh = scene.v / (scene.v**2).sum(1, keepdims=True)
    num = ((scene.origin - center) * normal).sum(1)  # (Q,)
    s0 = ((center - scene.origin) * uh).sum(1)
    r0 = ((center - scene.origin) * vh).sum(1)
    # bounding spheres, relative to the ray origin
    mid = scene.origin + 0.5 * (scene.u + scene.v) - center  # (Q, 3)
    rho2 = 0.25 * ((scene.u**2).sum(1) + (scene.v**2).sum(1)) * (1 + 1e-6)
    dist2 = (mid**2).sum(1)
    inside = dist2 <= rho2  # the origin is inside the sphere: every ray is a candidate
    far2 = dist2 - rho2
    eps = 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in range(0, n_rays, chunk):
            d = dirs[a : a + chunk]
            dn = d / np.linalg.norm(d, axis=1, keepdims=True)
            # (n, Q): distance along each ray to the sphere centres
            along = dn[:, :1] * mid[:, 0] + dn[:, 1:2] * mid[:, 1] + dn[:, 2:] * mid[:, 2]
            cand = (along > 0) & (along**2 >= far2[None])
            t_best = tau[a : a + chunk]
            q_best = quad[a : a + chunk]
            s_best = s_out[a : a + chunk]
            r_best = r_out[a : a + chunk]
            for q in range(len(num)):
                if inside[q]:
                    # every ray is a candidate; only those heading towards the plane can hit
                    den_all = _dot3(d, normal[q])
                    idx = np.nonzero(den_all * num[q] > 0)[0]
                else:
                    idx = np.nonzero(cand[:, q])[0]
                if len(idx) == 0:
                    continue
                dq = d[idx]
                t = num[q] / _dot3(dq, normal[q])
                s = s0[q] + t * _dot3(dq, uh[q])
                r = r0[q] + t * _dot3(dq, vh[q])
                ok = (t > eps) & (s >= 0) & (s <= 1) & (r >= 0) & (r <= 1) & (t < t_best[idx])
                sel = idx[ok]
                t_best[sel] = t[ok]
                q_best[sel] = q
                s_best[sel] = s[ok]
                r_best[sel] = r[ok]
    return quad, tau, s_out, r_out


def _bilinear_wrap(tex: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear lookup with wrap-around of a (Ht, Wt, 3) texture at continuous (x, y)."""
    ht, wt = tex.shape[:2]
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0)[:, None].astype(np.float32)
    fy = (y - y0)[:, None].astype(np.float32)
    x0 = x0.astype(np.int64) % wt
    y0 = y0.astype(np.int64) % ht
    x1 = (x0 + 1) % wt
    y1 = (y0 + 1) % ht
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bot = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def _shade_rays(
    scene: Scene, dirs: np.ndarray, quad: np.ndarray, s: np.ndarray, r: np.ndarray
) -> np.ndarray:
    """(N, 3) float32 colours of cast rays: texture × shade, sky gradient where no hit."""
    out = np.empty((len(quad), 3), np.float32)
    sky = quad < 0
    if sky.any():
        d = dirs[sky]
        elev = np.clip(d[:, 2] / np.linalg.norm(d, axis=1), 0, 1)[:, None]
        horizon = np.array([0.78, 0.85, 0.95], np.float32)
        zenith = np.array([0.35, 0.55, 0.9], np.float32)
        out[sky] = horizon * (1 - elev) + zenith * elev
    for q in np.unique(quad[~sky]):
        m = quad == q
        tex = scene.textures[int(scene.tex_id[q])]
        ht, wt = tex.shape[:2]
        ru, rv = scene.tex_rep[q]
        col = _bilinear_wrap(tex, s[m] * ru * wt - 0.5, (1 - r[m]) * rv * ht - 0.5)
        out[m] = col * np.float32(scene.shade[q])
    return out


def render(
    scene: Scene,
    view: View,
    supersample: int = 2,
    gain: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one view.

    Returns:
        image (H, W, 3) uint8 RGB (mean of ``supersample``² rays per pixel) and depth
        (H, W) float32 z-depth of the pixel centres, 0 where the ray hits nothing (sky).
    """
    w, h = view.width, view.height
    c = view.center
    jj, ii = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    dirs = pixel_rays(view, (jj + 0.5).ravel(), (ii + 0.5).ravel())
    quad, tau, s, r = cast_rays(scene, c, dirs)
    depth = np.where(quad >= 0, tau, 0.0).reshape(h, w).astype(np.float32)
    ss = max(int(supersample), 1)
    if ss == 1:
        col = _shade_rays(scene, dirs, quad, s, r).reshape(h, w, 3)
    else:
        col = np.zeros((h * w, 3), np.float32)
        offs = (np.arange(ss) + 0.5) / ss
        for oy in offs:
            for ox in offs:
                d = pixel_rays(view, (jj + ox).ravel(), (ii + oy).ravel())
                qd, _, sd, rd = cast_rays(scene, c, d)
                col += _shade_rays(scene, d, qd, sd, rd)
        col = (col / (ss * ss)).reshape(h, w, 3)
    img = np.clip(col * gain * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return img, depth


def render_views(
    scene: Scene, views: list[View], rng: np.random.Generator, supersample: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Render every view with a random exposure gain (0.85–1.15) drawn from `rng`.

    Returns:
        images: list of (H, W, 3) uint8; depths: list of (H, W) float32 (see :func:`render`).
    """
    imgs, depths = [], []
    for v in views:
        img, depth = render(scene, v, supersample=supersample, gain=rng.uniform(0.85, 1.15))
        imgs.append(img)
        depths.append(depth)
    return imgs, depths
