"""One synthetic scene, end to end: geometry, cameras, renderings and SfM observations.

Both file-format writers start from :func:`synthesize_scene`; it draws every random number
from the scene's own streams (:func:`data_pairs.synthetic.scene.scene_rng`) in a fixed
order, so a scene depends only on (seed, kind, index) and its size parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from data_pairs.synthetic import scene as sc
from data_pairs.synthetic.camera import View, sample_views
from data_pairs.synthetic.observe import observations, sample_surface_points
from data_pairs.synthetic.render import render_views

__all__ = ["SceneSpec", "scene_spec", "SyntheticScene", "synthesize_scene"]


@dataclass(frozen=True)
class SceneSpec:
    """Size and sampling parameters of one synthetic scene (the one place of their defaults).

    seed: random seed; n_images: cameras; width, height: landscape image size (every
    `portrait_every`-th image is portrait, 0: none); n_points: surface points sampled;
    supersample: rays per pixel along each axis.
    """

    seed: int = 0
    n_images: int = 12
    width: int = 640
    height: int = 480
    n_points: int = 3000
    supersample: int = 2
    portrait_every: int = 6


def scene_spec(spec: SceneSpec | None = None, **fields: int) -> SceneSpec:
    """`spec` (default :class:`SceneSpec()`) with `fields` replaced; unknown names: TypeError."""
    return replace(spec or SceneSpec(), **fields)


@dataclass
class SyntheticScene:
    """A rendered scene with its SfM-style observations.

    scene, views (V cameras); images: V × (H, W, 3) uint8; depths: V × (H, W) float32;
    points: (P, 3) sampled surface points; kept: (M,) indices into points of those seen by
    ≥ 2 views; per view v: obs_idx[v] (K_v,) indices into kept, obs_xy[v] (K_v, 2) pixels,
    obs_z[v] (K_v,) camera depths. render_rng and points_rng are the scene's render / points
    streams after their use here (writers continue drawing from them).
    """

    scene: sc.Scene
    views: list[View]
    images: list[np.ndarray]
    depths: list[np.ndarray]
    points: np.ndarray
    kept: np.ndarray
    obs_idx: list[np.ndarray]
    obs_xy: list[np.ndarray]
    obs_z: list[np.ndarray]
    render_rng: np.random.Generator
    points_rng: np.random.Generator


def synthesize_scene(spec: SceneSpec, kind: int, index: int) -> SyntheticScene:
    """Build, render and observe scene `index` of `kind` (KIND_TRAIN / KIND_VAL)."""

    def rng(stream: int) -> np.random.Generator:
        return sc.scene_rng(spec.seed, kind, index, stream)

    scene = sc.build_scene(rng(sc.STREAM_GEOMETRY))
    views = sample_views(
        rng(sc.STREAM_VIEWS),
        spec.n_images,
        spec.width,
        spec.height,
        portrait_every=spec.portrait_every,
    )
    render_rng = rng(sc.STREAM_RENDER)
    images, depths = render_views(scene, views, render_rng, spec.supersample)
    points_rng = rng(sc.STREAM_POINTS)
    points = sample_surface_points(scene, spec.n_points, points_rng)
    kept, obs_idx, obs_xy, obs_z = observations(scene, views, depths, points)
    return SyntheticScene(
        scene, views, images, depths, points, kept, obs_idx, obs_xy, obs_z, render_rng, points_rng
    )
