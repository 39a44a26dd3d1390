"""Scene description of the synthetic data: textured rectangles, and their random streams.

A scene is a courtyard (textured ground and four walls, open sky) holding a few textured
boxes, all described as rectangles (:class:`Scene`). Every scene draws from independent
random streams (:func:`scene_rng`), so its geometry, cameras, points and rendering do not
depend on each other's number of draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_pairs.synthetic.textures import make_textures

__all__ = [
    "Scene",
    "build_scene",
    "scene_rng",
    "STREAM_GEOMETRY",
    "STREAM_VIEWS",
    "STREAM_POINTS",
    "STREAM_RENDER",
    "KIND_TRAIN",
    "KIND_VAL",
]

# Random streams of one scene (see scene_rng) and the two kinds of scenes.
STREAM_GEOMETRY, STREAM_VIEWS, STREAM_POINTS, STREAM_RENDER = 0, 1, 2, 3
KIND_TRAIN, KIND_VAL = 0, 1


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


def scene_rng(seed: int, kind: int, index: int, stream: int) -> np.random.Generator:
    """Independent random stream `stream` of scene `index` of `kind` (train 0 / val 1)."""
    return np.random.default_rng([int(seed), int(kind), int(index), int(stream)])


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
    textures = make_textures(rng)
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
