"""Cameras of the synthetic scenes: pinhole views on an arc around the scene centre."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["View", "look_at", "sample_views"]


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


def look_at(center: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
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
        R = look_at(center, target, np.deg2rad(rng.uniform(-4, 4)))
        hfov = np.deg2rad(rng.uniform(50, 65))
        f = 0.5 * max(w, h) / np.tan(0.5 * hfov)
        K = np.array([[f, 0, w / 2.0], [0, f, h / 2.0], [0, 0, 1.0]])
        views.append(View(K=K, R=R, t=-R @ center, width=w, height=h))
    return views
