"""Synthetic MegaDepth / PhotoTourism look-alike data with exact geometry.

Real MegaDepth and PhotoTourism cannot be downloaded everywhere, so this package renders
small textured 3D scenes and writes them in the real on-disk formats (docs/file-formats.md §1 and
§4), with exact poses, intrinsics, depth maps and 3D point observations. The command is
``python -m data_pairs.make_synthetic``.

Modules, one responsibility each:

- ``textures``: scikit-image's bundled photographs and drawn patterns;
- ``scene``: the scene (textured rectangles) and its random streams;
- ``camera``: camera sampling;
- ``render``: exact ray casting (images, depth maps);
- ``observe``: 3D points and their SfM-style observations;
- ``synthesize``: one scene end to end (the above, in a fixed random order);
- ``megadepth_writer``: MegaDepth-like training scenes (D2Net's scene_info npz, depths);
- ``colmap_writer``: PhotoTourism-like validation scenes (COLMAP binary models);
- ``files``: the JPEG writer both writers use.

Pixel convention (COLMAP's, as in the real data): the top-left image corner is (0, 0) and
the centre of pixel (row i, column j) is (j + 0.5, i + 0.5); the principal point is the
image centre, so ``w = 2·cx`` and ``h = 2·cy`` exactly.
"""

from data_pairs.synthetic.camera import View, sample_views
from data_pairs.synthetic.colmap_writer import (
    CAMERA_MODELS,
    make_val_scene,
    val_scene_name,
)
from data_pairs.synthetic.megadepth_writer import DEPTH_SUBDIR, make_megadepth_scene
from data_pairs.synthetic.observe import observations, observe_points, sample_surface_points
from data_pairs.synthetic.render import cast_rays, pixel_rays, render, render_views
from data_pairs.synthetic.scene import (
    KIND_TRAIN,
    KIND_VAL,
    STREAM_GEOMETRY,
    STREAM_POINTS,
    STREAM_RENDER,
    STREAM_VIEWS,
    Scene,
    build_scene,
    scene_rng,
)
from data_pairs.synthetic.synthesize import (
    SceneSpec,
    SyntheticScene,
    scene_spec,
    synthesize_scene,
)

__all__ = [
    "Scene",
    "View",
    "build_scene",
    "scene_rng",
    "sample_views",
    "cast_rays",
    "pixel_rays",
    "render",
    "render_views",
    "sample_surface_points",
    "observe_points",
    "observations",
    "SceneSpec",
    "scene_spec",
    "SyntheticScene",
    "synthesize_scene",
    "make_megadepth_scene",
    "make_val_scene",
    "val_scene_name",
    "DEPTH_SUBDIR",
    "CAMERA_MODELS",
    "KIND_TRAIN",
    "KIND_VAL",
    "STREAM_GEOMETRY",
    "STREAM_VIEWS",
    "STREAM_POINTS",
    "STREAM_RENDER",
]
