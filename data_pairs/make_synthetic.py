"""Synthetic MegaDepth / PhotoTourism look-alike data with exact geometry.

Real MegaDepth and PhotoTourism cannot be downloaded everywhere, so this generator renders
small textured 3D scenes and writes them in the real on-disk formats (data-formats.md §1 and
§4), with exact poses, intrinsics, depth maps and 3D point observations. Every consumer of
the real data (pair generation, training loader, per-epoch validation) runs on it unchanged.

Scenes: a courtyard (textured ground and four walls, open sky) holding a few textured boxes.
Textures are photographs shipped with scikit-image (astronaut, coffee, chelsea, rocket, ...)
and grey-level images tinted with random colours. Images are rendered by exact ray casting
(every pixel's ray against every rectangle, nearest hit, bilinear texture lookup,
``--supersample``² rays per pixel averaged); depth maps hold the z-depth of each pixel centre
(0 for sky). 3D points are sampled on the surfaces and observed in every image where they
project inside the image, lie in front of the camera, are not occluded (an exact ray test)
and agree with the depth map at their pixel (within 1 %). Only points seen by ≥ 2 images are
kept, as in an SfM model.

Pixel convention (COLMAP's, as in the real data): the top-left image corner is (0, 0) and
the centre of pixel (row i, column j) is (j + 0.5, i + 0.5); the principal point is the
image centre, so ``w = 2·cx`` and ``h = 2·cy`` exactly.

Layout written under ``--out`` (default ``data``)::

    MegaDepth_undistort/
      scene_info/<scene>.0.npz                 D2Net keys (data-formats.md §1)
      <scene>/images/<i>.jpg                   the images (where the training loader looks)
      Undistorted_SfM/<scene> -> ../<scene>    so that the npz image_paths resolve too
      phoenix/S6/zl548/MegaDepth_v1/<scene>/dense0/depths/<i>.h5   (dataset 'depth')
    immatch_benchmark/val_dense/<val scene>/dense/
      images/<name>.jpg
      sparse/{cameras,images,points3D}.bin     COLMAP binary model (+ pycolmap's rigs/frames)
      sparse/ov_pairs.npy                      (data-formats.md §4, unless --no-ov-pairs)

``image_paths`` in the npz keep D2Net's form ``Undistorted_SfM/<scene>/images/<i>.jpg``
(relative to ``MegaDepth_undistort``); the pair generator strips ``Undistorted_SfM/`` and the
loader joins the rest to ``MegaDepth_undistort/``, which finds ``<scene>/images/<i>.jpg``.
``Undistorted_SfM/<scene>`` is a relative symbolic link to ``../<scene>`` (``--sfm-layout
copy`` writes a second copy of the JPEGs instead, ``none`` omits it).

Usage::

    python -m data_pairs.make_synthetic --out data [--scenes 2 --images-per-scene 12
        --width 640 --height 480 --val-scenes 1 --seed 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
from PIL import Image as PILImage

from utils.colmap.read_model import Camera, Image, Point3D, write_model

__all__ = [
    "Scene",
    "View",
    "build_scene",
    "sample_views",
    "cast_rays",
    "pixel_rays",
    "render",
    "sample_surface_points",
    "observe_points",
    "scene_rng",
    "make_megadepth_scene",
    "make_val_scene",
    "generate",
    "main",
]

DEPTH_SUBDIR = Path("phoenix/S6/zl548/MegaDepth_v1")
SFM_PREFIX = "Undistorted_SfM"
VAL_SUBDIR = Path("immatch_benchmark/val_dense")
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL")

# Random streams of one scene (see scene_rng).
STREAM_GEOMETRY, STREAM_VIEWS, STREAM_POINTS, STREAM_RENDER = 0, 1, 2, 3
KIND_TRAIN, KIND_VAL = 0, 1


# --------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------


@dataclass
class Scene:
    """A set of Q textured rectangles.

    origin, u, v: (Q, 3) float64; rectangle q is ``origin[q] + s·u[q] + r·v[q]``,
    s, r ∈ [0, 1], with u[q] ⟂ v[q]. tex_id: (Q,) int index into `textures`;
    tex_rep: (Q, 2) texture repetitions along u and v; shade: (Q,) brightness factor.
    textures: list of (Ht, Wt, 3) float32 images in [0, 1].
    """

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    tex_id: np.ndarray
    tex_rep: np.ndarray
    shade: np.ndarray
    textures: list[np.ndarray]

    @property
    def normal(self) -> np.ndarray:
        """(Q, 3) unit normals ``u × v / |u × v|``."""
        n = np.cross(self.u, self.v)
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    @property
    def area(self) -> np.ndarray:
        """(Q,) rectangle areas."""
        return np.linalg.norm(self.u, axis=1) * np.linalg.norm(self.v, axis=1)


@dataclass
class View:
    """One camera: K (3, 3), world-to-camera R (3, 3) and t (3,), image width and height."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        """(3,) camera centre ``c = −Rᵀ t``."""
        return -self.R.T @ self.t

    @property
    def pose(self) -> np.ndarray:
        """(4, 4) world-to-camera matrix [R | t]."""
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = self.R, self.t
        return T


def scene_rng(seed: int, kind: int, index: int, stream: int) -> np.random.Generator:
    """Independent random stream `stream` of scene `index` of `kind` (train 0 / val 1)."""
    return np.random.default_rng([int(seed), int(kind), int(index), int(stream)])


def _to_rgb01(im: np.ndarray) -> np.ndarray:
    im = np.asarray(im)
    if im.dtype == bool:
        im = im.astype(np.uint8) * 255
    if im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=2)
    im = im[..., :3].astype(np.float32)
    return im / 255.0 if im.max() > 1.0 else im


@lru_cache(maxsize=1)
def _photo_textures() -> tuple[tuple[np.ndarray, bool], ...]:
    """Photographs shipped with scikit-image: ((H, W, 3) float32 in [0, 1], is_grey)."""
    from skimage import data as skd

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                 "hubble_deep_field", "camera", "brick", "grass", "gravel", "coins", "clock",
                 "moon", "text", "page"):
        loader = getattr(skd, name, None)
        if loader is None:
            continue
        try:
            im = loader()
        except Exception:  # a data file missing from this scikit-image install: skip it
            continue
        out.append((_to_rgb01(im), np.asarray(im).ndim == 2))
    if not out:
        raise RuntimeError("no scikit-image sample photographs could be loaded")
    return tuple(out)


def _pattern_texture(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A drawn texture: coloured random discs and stripes over a noise background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    freq = rng.uniform(2, 8) * 2 * np.pi / size
    ang = rng.uniform(0, np.pi)
    stripes = 0.5 + 0.5 * np.sin(freq * (np.cos(ang) * xx + np.sin(ang) * yy))
    img += (stripes[..., None] - 0.5) * rng.uniform(0.1, 0.3, 3).astype(np.float32)
    for _ in range(int(rng.integers(15, 35))):
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(size / 40, size / 8)
        # periodic distance so that the pattern tiles seamlessly
        dx = np.minimum(np.abs(xx - cx), size - np.abs(xx - cx))
        dy = np.minimum(np.abs(yy - cy), size - np.abs(yy - cy))
        mask = (dx**2 + dy**2) < r**2
        img[mask] = rng.uniform(0, 1, 3).astype(np.float32)
    img += rng.normal(0, 0.04, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def _make_textures(rng: np.random.Generator, n_patterns: int = 3) -> list[np.ndarray]:
    """Photographs (grey ones tinted with a random colour) plus a few drawn patterns."""
    textures = []
    for im, grey in _photo_textures():
        if grey:
            tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
            im = im * tint
        textures.append(im)
    textures += [_pattern_texture(rng) for _ in range(n_patterns)]
    return textures


def build_scene(
    rng: np.random.Generator,
    half_size: float = 8.0,
    wall_height: float = 5.0,
    n_boxes: tuple[int, int] = (3, 6),
) -> Scene:
    """Courtyard (ground z = 0, four inward walls, open sky) with a few textured boxes.

    World frame: z up. Boxes stand on the ground within radius 2.5 of the origin (so
    they stay inside radius 4.1), random
    sizes (0.6–2.2 m) and yaw; each has four sides and a top. Returns the rectangles.
    """
    L, H = half_size, wall_height
    quads: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    # ground, seen from above: u × v = +z
    quads.append((np.array([-L, -L, 0.0]), np.array([2 * L, 0, 0.0]), np.array([0, 2 * L, 0.0])))
    # walls, normals pointing inwards
    corners = [np.array(c, float) for c in ([-L, -L], [L, -L], [L, L], [-L, L])]
    for k in range(4):
        a, b = corners[k], corners[(k + 1) % 4]
        o = np.array([a[0], a[1], 0.0])
        u = np.array([b[0] - a[0], b[1] - a[1], 0.0])
        quads.append((o, u, np.array([0, 0, H])))
    n_walls = len(quads)
    for _ in range(int(rng.integers(n_boxes[0], n_boxes[1] + 1))):
        sx, sy, sz = rng.uniform(0.6, 2.2, 3)
        rad, ang = rng.uniform(0, 2.5), rng.uniform(0, 2 * np.pi)
        cxy = rad * np.array([np.cos(ang), np.sin(ang)])
        yaw = rng.uniform(0, np.pi / 2)
        ex = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        ey = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        ez = np.array([0, 0, 1.0])
        c0 = np.array([cxy[0], cxy[1], 0.0]) - 0.5 * sx * ex - 0.5 * sy * ey
        X, Y, Z = sx * ex, sy * ey, sz * ez
        # four sides (outward normals) and the top
        quads.append((c0, X, Z))  # normal −ey... X × Z = −|.| ey: outward for the front
        quads.append((c0 + X, Y, Z))  # Y × Z → +ex
        quads.append((c0 + X + Y, -X, Z))  # −X × Z → +ey
        quads.append((c0 + Y, -Y, Z))  # −Y × Z → −ex
        quads.append((c0 + Z, X, Y))  # X × Y → +ez
    origin = np.stack([q[0] for q in quads])
    u = np.stack([q[1] for q in quads])
    v = np.stack([q[2] for q in quads])
    textures = _make_textures(rng)
    nq = len(quads)
    tex_id = rng.integers(0, len(textures), nq)
    # texture repetitions: about one texture tile per 2-4 m on the courtyard, whole-ish
    # photographs on boxes
    tex_rep = np.ones((nq, 2))
    for q in range(nq):
        lu, lv = np.linalg.norm(u[q]), np.linalg.norm(v[q])
        tile = rng.uniform(2.0, 4.0) if q < n_walls else max(lu, lv) * rng.uniform(0.6, 1.0)
        tex_rep[q] = np.maximum(1.0, np.round([lu / tile, lv / tile]))
    light = np.array([0.4, 0.3, 0.86])
    light /= np.linalg.norm(light)
    n = np.cross(u, v)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    shade = 0.55 + 0.45 * np.abs(n @ light)
    return Scene(origin, u, v, tex_id, tex_rep, shade, textures)


def _look_at(center: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """World-to-camera rotation of a camera at `center` looking at `target` (z up world)."""
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(z, np.array([0.0, 0.0, 1.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world coordinates
    c, s = np.cos(roll), np.sin(roll)
    Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return Rz @ R


def sample_views(
    rng: np.random.Generator,
    n: int,
    width: int,
    height: int,
    portrait_every: int = 0,
    arc_deg: float = 140.0,
) -> list[View]:
    """`n` cameras on an arc around the scene centre, looking at it.

    Azimuths spread over `arc_deg` (jittered), distance 5.5–7.5 m, height 1.0–2.6 m,
    target jittered around (0, 0, 0.8), roll ±4°, horizontal field of view 50–65°.
    Every `portrait_every`-th image (1-based; 0 = never) is portrait (height × width).
    Principal point at the image centre (cx = w/2, cy = h/2), fx = fy.
    """
    views = []
    az0 = rng.uniform(0, 2 * np.pi)
    for k in range(n):
        w, h = width, height
        if portrait_every > 0 and (k + 1) % portrait_every == 0:
            w, h = height, width
        az = az0 + np.deg2rad(arc_deg) * ((k + rng.uniform(-0.3, 0.3)) / max(n - 1, 1))
        dist = rng.uniform(5.5, 7.5)
        center = np.array([dist * np.cos(az), dist * np.sin(az), rng.uniform(1.0, 2.6)])
        target = np.array([0.0, 0.0, 0.8]) + rng.uniform(-0.7, 0.7, 3) * np.array([1, 1, 0.5])
        R = _look_at(center, target, np.deg2rad(rng.uniform(-4, 4)))
        hfov = np.deg2rad(rng.uniform(50, 65))
        f = 0.5 * max(w, h) / np.tan(0.5 * hfov)
        K = np.array([[f, 0, w / 2.0], [0, f, h / 2.0], [0, 0, 1.0]])
        views.append(View(K=K, R=R, t=-R @ center, width=w, height=h))
    return views


# --------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------


def _dot3(d: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N,) dot products of the rows of d (N, 3) with v (3,).

    Written out instead of ``d @ v``: multi-threaded BLAS on these thin products is slower
    than this, badly so on a busy machine.
    """
    return d[:, 0] * v[0] + d[:, 1] * v[1] + d[:, 2] * v[2]


def _transform(pts: np.ndarray, M: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
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


# --------------------------------------------------------------------------------------
# 3D points and their observations
# --------------------------------------------------------------------------------------


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
    cam = _transform(pts, view.R, view.t)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = _transform(cam, view.K)
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


def _observations(
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


# --------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------


def _save_jpeg(path: Path, img: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(img).save(path, quality=quality)


def _save_depth(path: Path, depth: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("depth", data=depth.astype(np.float32), compression="gzip",
                         compression_opts=4, shuffle=True)


def _object_array(items: list) -> np.ndarray:
    """1-D object array holding `items` as they are (arrays, dicts, strings or None)."""
    arr = np.empty(len(items), dtype=object)
    for k, it in enumerate(items):
        arr[k] = it
    return arr


def _render_views(
    scene: Scene, views: list[View], rng: np.random.Generator, supersample: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    imgs, depths = [], []
    for v in views:
        img, depth = render(scene, v, supersample=supersample, gain=rng.uniform(0.85, 1.15))
        imgs.append(img)
        depths.append(depth)
    return imgs, depths


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


def make_megadepth_scene(
    out: Path,
    scene_name: str,
    index: int,
    seed: int = 0,
    n_images: int = 12,
    width: int = 640,
    height: int = 480,
    n_points: int = 3000,
    supersample: int = 2,
    portrait_every: int = 6,
    none_entries: int = 1,
    sfm_layout: str = "link",
) -> Path:
    """Render one MegaDepth-like scene under ``out/MegaDepth_undistort``; returns the npz.

    Writes images, depth maps and ``scene_info/<scene>.0.npz`` with D2Net's keys; the npz
    lists get `none_entries` extra None slots at random positions (as real files have
    for unusable images). Points ids are 0..n_points3D−1.
    """
    mega = out / "MegaDepth_undistort"
    # a re-run replaces the scene's files instead of mixing old and new ones
    for old in (mega / scene_name / "images", mega / DEPTH_SUBDIR / scene_name):
        if old.is_dir():
            shutil.rmtree(old)
    scene = build_scene(scene_rng(seed, KIND_TRAIN, index, STREAM_GEOMETRY))
    views = sample_views(scene_rng(seed, KIND_TRAIN, index, STREAM_VIEWS), n_images, width,
                         height, portrait_every=portrait_every)
    imgs, depths = _render_views(scene, views, scene_rng(seed, KIND_TRAIN, index,
                                                         STREAM_RENDER), supersample)
    prng = scene_rng(seed, KIND_TRAIN, index, STREAM_POINTS)
    pts = sample_surface_points(scene, n_points, prng)
    _, per_idx, per_xy, per_z = _observations(scene, views, depths, pts)
    n_pts3d = int(max((int(i.max()) + 1 for i in per_idx if len(i)), default=0))

    # slot order of the npz lists, with None slots mixed in
    n_slots = n_images + none_entries
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
        _save_jpeg(mega / scene_name / "images" / f"{stem}.jpg", img)
        _save_depth(mega / DEPTH_SUBDIR / scene_name / "dense0" / "depths" / f"{stem}.h5", depth)
        image_paths[s] = f"{SFM_PREFIX}/{scene_name}/images/{stem}.jpg"
        depth_paths[s] = f"{DEPTH_SUBDIR.as_posix()}/{scene_name}/dense0/depths/{stem}.h5"
        intrinsics[s] = v.K.copy()
        poses[s] = v.pose
        mean_f = 0.5 * (v.K[0, 0] + v.K[1, 1])
        id_to_2d[s] = {int(p): per_xy[k][j].copy() for j, p in enumerate(per_idx[k])}
        id_to_nd[s] = {int(p): float(per_z[k][j] / mean_f) for j, p in enumerate(per_idx[k])}
    _link_or_copy_sfm(mega, scene_name, sfm_layout)

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

    info = out / "MegaDepth_undistort" / "scene_info"
    info.mkdir(parents=True, exist_ok=True)
    npz = info / f"{scene_name}.0.npz"
    np.savez(
        npz,
        image_paths=_object_array(image_paths),
        depth_paths=_object_array(depth_paths),
        intrinsics=_object_array(intrinsics),
        poses=_object_array(poses),
        overlap_matrix=overlap,
        scale_ratio_matrix=scale_ratio,
        angles=angles,
        n_points3D=np.array(n_pts3d),
        points3D_id_to_2D=_object_array(id_to_2d),
        points3D_id_to_ndepth=_object_array(id_to_nd),
    )
    return npz


def _rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """(4,) quaternion (w, x, y, z) of a rotation matrix (via the project's geometry module)."""
    from utils.eval.geometry import rotmat2qvec

    return np.asarray(rotmat2qvec(R), dtype=np.float64)


def make_val_scene(
    out: Path,
    scene_name: str,
    index: int,
    seed: int = 0,
    n_images: int = 12,
    width: int = 640,
    height: int = 480,
    n_points: int = 3000,
    supersample: int = 2,
    portrait_every: int = 6,
    n_untriangulated: int = 40,
) -> Path:
    """Render one PhotoTourism-like validation scene; returns its ``dense`` folder.

    One COLMAP camera per image, models cycling through SIMPLE_PINHOLE, PINHOLE,
    SIMPLE_RADIAL (k = 0) and RADIAL (k1 = k2 = 0); each image also gets
    `n_untriangulated` random 2D points without a 3D point (id −1). Points ids start at 1.
    """
    dense = out / VAL_SUBDIR / scene_name / "dense"
    for old in (dense / "images", dense / "sparse"):  # a re-run replaces the scene's files
        if old.is_dir():
            shutil.rmtree(old)
    scene = build_scene(scene_rng(seed, KIND_VAL, index, STREAM_GEOMETRY))
    views = sample_views(scene_rng(seed, KIND_VAL, index, STREAM_VIEWS), n_images, width,
                         height, portrait_every=portrait_every)
    rrng = scene_rng(seed, KIND_VAL, index, STREAM_RENDER)
    imgs, depths = _render_views(scene, views, rrng, supersample)
    prng = scene_rng(seed, KIND_VAL, index, STREAM_POINTS)
    pts = sample_surface_points(scene, n_points, prng)
    kept, per_idx, per_xy, _ = _observations(scene, views, depths, pts)

    cameras: dict[int, Camera] = {}
    images: dict[int, Image] = {}
    obs_images: dict[int, list[int]] = {int(i) + 1: [] for i in range(len(kept))}
    for k, (v, img) in enumerate(zip(views, imgs)):
        iid = k + 1
        name = f"{index:02d}{k:06d}_{int(rrng.integers(1e8, 1e9))}.jpg"
        _save_jpeg(dense / "images" / name, img)
        f, cx, cy = v.K[0, 0], v.K[0, 2], v.K[1, 2]
        model = CAMERA_MODELS[k % len(CAMERA_MODELS)]
        params = {
            "SIMPLE_PINHOLE": [f, cx, cy],
            "PINHOLE": [f, v.K[1, 1], cx, cy],
            "SIMPLE_RADIAL": [f, cx, cy, 0.0],
            "RADIAL": [f, cx, cy, 0.0, 0.0],
        }[model]
        cameras[iid] = Camera(model, v.width, v.height, np.array(params, dtype=np.float64))
        extra = np.stack([rrng.uniform(0, v.width, n_untriangulated),
                          rrng.uniform(0, v.height, n_untriangulated)], axis=1)
        xys = np.concatenate([per_xy[k], extra])
        p3d = np.concatenate([per_idx[k] + 1, -np.ones(n_untriangulated, np.int64)])
        order = rrng.permutation(len(xys))
        images[iid] = Image(name, iid, _rotmat_to_qvec(v.R), v.t.copy(), p3d[order], xys[order])
        for p in per_idx[k]:
            obs_images[int(p) + 1].append(iid)
    points3D = {
        pid: Point3D(pts[kept[pid - 1]].copy(), np.array(ims, dtype=np.int64))
        for pid, ims in obs_images.items()
    }
    write_model(dense / "sparse", cameras, images, points3D)
    return dense


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def val_scene_name(k: int) -> str:
    """Name of validation scene k: 'synthetic_val', then 'synthetic_val_1', ..."""
    return "synthetic_val" if k == 0 else f"synthetic_val_{k}"


def generate(args: argparse.Namespace, log=print) -> dict[str, list[str]]:
    """Generate all scenes of `args` (see :func:`parse_args`); returns the scene names."""
    out = Path(args.out)
    train_names, val_names = [], []
    for k in range(args.scenes):
        name = f"{args.first_scene_id + k:04d}"
        t0 = time.time()
        make_megadepth_scene(out, name, k, seed=args.seed, n_images=args.images_per_scene,
                             width=args.width, height=args.height, n_points=args.points,
                             supersample=args.supersample, portrait_every=args.portrait_every,
                             none_entries=args.none_entries, sfm_layout=args.sfm_layout)
        train_names.append(name)
        log(f"MegaDepth-like scene {name}: {args.images_per_scene} images "
            f"({time.time() - t0:.1f} s)")
    for k in range(args.val_scenes):
        name = val_scene_name(k)
        t0 = time.time()
        make_val_scene(out, name, k, seed=args.seed, n_images=args.val_images,
                       width=args.width, height=args.height, n_points=args.points,
                       supersample=args.supersample, portrait_every=args.portrait_every)
        val_names.append(name)
        log(f"validation scene {name}: {args.val_images} images ({time.time() - t0:.1f} s)")
    if val_names and not args.no_ov_pairs:
        from data_pairs.precompute_immatch_val_ovs import precompute_scene_overlaps

        for name in val_names:
            precompute_scene_overlaps(out / VAL_SUBDIR / name, overwrite=True, log=log)
    return {"train": train_names, "val": val_names}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m data_pairs.make_synthetic",
        description="Render synthetic MegaDepth-like training scenes and PhotoTourism-like "
        "validation scenes in the real data formats.",
    )
    p.add_argument("--out", default="data", help="data root to write into (default: data)")
    p.add_argument("--scenes", type=int, default=2, help="MegaDepth-like training scenes")
    p.add_argument("--images-per-scene", type=int, default=12)
    p.add_argument("--val-scenes", type=int, default=1, help="PhotoTourism-like val scenes")
    p.add_argument("--val-images", type=int, default=None,
                   help="images per validation scene (default: --images-per-scene)")
    p.add_argument("--width", type=int, default=640, help="landscape image width")
    p.add_argument("--height", type=int, default=480, help="landscape image height")
    p.add_argument("--points", type=int, default=3000, help="3D points sampled per scene")
    p.add_argument("--supersample", type=int, default=2,
                   help="rays per pixel along each axis (anti-aliasing)")
    p.add_argument("--portrait-every", type=int, default=6,
                   help="every N-th image is portrait (0: none)")
    p.add_argument("--none-entries", type=int, default=1,
                   help="None slots per scene_info file, as real files have")
    p.add_argument("--first-scene-id", type=int, default=9000,
                   help="numeric name of the first training scene (default 9000: above "
                   "every real MegaDepth scene id, so synthetic scenes never shadow real ones)")
    p.add_argument("--sfm-layout", choices=("link", "copy", "none"), default="link",
                   help="how Undistorted_SfM/<scene> reaches <scene>/images")
    p.add_argument("--no-ov-pairs", action="store_true",
                   help="do not write the validation scenes' sparse/ov_pairs.npy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.val_images is None:
        args.val_images = args.images_per_scene
    if args.images_per_scene < 2 or args.val_images < 2:
        p.error("at least 2 images per scene are needed")
    if args.width < 16 or args.height < 16:
        p.error("--width and --height must be at least 16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    names = generate(args)
    print(f"wrote {len(names['train'])} training and {len(names['val'])} validation scenes "
          f"under {args.out} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
