"""Headless plotting of matches and epipolar lines.

Every function builds a :class:`matplotlib.figure.Figure` with an Agg canvas directly (no
``pyplot`` global state), so it runs without a display, leaks no figures when called in a
loop, and the returned figure can be displayed in a notebook (``display(fig)``) or saved.

The two images are drawn side by side on one canvas (image 1 left, image 2 right, top
aligned, ``gap`` white pixels between them). The axes cover the whole figure and its data
units are canvas pixels, so with the default ``figsize=None`` a saved PNG has exactly the
canvas size in pixels: ``(w1 + gap + w2) x max(h1, h2)`` (``figsize`` inches × ``dpi``
otherwise).

A match is a row ``(x1, y1, x2, y2)`` in pixels of the respective image (x = column).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import EllipseCollection, LineCollection
from matplotlib.colors import Normalize, to_rgba, to_rgba_array
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from utils.common.imagenet import IMAGENET_MEAN, IMAGENET_STD

INLIER_COLOR = (0.0, 1.0, 0.0, 1.0)
OUTLIER_COLOR = (1.0, 0.0, 0.0, 1.0)
DEFAULT_COLOR = (0.0, 1.0, 0.0, 1.0)

__all__ = [
    "colors_from_values",
    "plot_epilines",
    "plot_matches",
    "save_figure",
    "to_numpy_image",
]


def to_numpy_image(im: Any, unnormalize: bool = True) -> np.ndarray:
    """Convert an image to a float RGB array in [0, 1].

    Args:
        im: one of
            - a numpy array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8 (0..255) or
              float (taken as 0..1, or as 0..255 when its maximum exceeds 1);
            - a PIL image (any mode, converted to RGB);
            - a torch tensor (1, 3, H, W), (3, H, W), (1, 1, H, W), (1, H, W) or (H, W),
              on any device; ImageNet-normalised when ``unnormalize`` is True, else in [0, 1];
            - a path (str / os.PathLike) to an image file.
        unnormalize: undo the ImageNet normalisation of torch tensors
            (``x * std + mean``). Ignored for numpy arrays and PIL images.

    Returns:
        (H, W, 3) float32 array with values clipped to [0, 1].
    """
    if isinstance(im, (str, os.PathLike)):
        from PIL import Image

        with Image.open(im) as pil:
            return np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0
    if hasattr(im, "detach") and hasattr(im, "cpu"):  # torch.Tensor, without importing torch
        arr = im.detach().cpu().float().numpy()
        while arr.ndim > 3:
            if arr.shape[0] != 1:
                raise ValueError(f"expected a single image tensor, got shape {tuple(im.shape)}")
            arr = arr[0]
        if arr.ndim == 3:
            arr = np.transpose(arr, (1, 2, 0))  # (C, H, W) -> (H, W, C)
        else:
            arr = arr[..., None]
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        if unnormalize:
            arr = arr * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN, np.float32)
        return np.clip(arr, 0.0, 1.0).astype(np.float32)
    if not isinstance(im, np.ndarray):
        try:  # PIL image
            im = np.asarray(im.convert("RGB"))
        except AttributeError as err:
            raise TypeError(f"unsupported image type {type(im).__name__}") from err
    arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W[, C]) image, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr[..., :3]
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        out = arr.astype(np.float32) / (1.0 if arr.dtype == bool else 255.0)
    else:
        out = arr.astype(np.float32)
        if out.size and np.nanmax(out) > 1.0:
            out = out / 255.0
    return np.clip(out, 0.0, 1.0)


def colors_from_values(
    values: Sequence[float] | np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "jet",
    reverse: bool = False,
) -> np.ndarray:
    """Map scalar values (scores, errors) to RGBA colours through a colormap.

    Args:
        values: (N,) values; NaN maps to the colormap's "bad" colour.
        vmin, vmax: the range mapped onto the colormap (values outside are clipped);
            default the finite minimum / maximum of ``values``.
        cmap: a matplotlib colormap name (e.g. 'jet', 'viridis', 'RdYlGn').
        reverse: flip the colormap (e.g. 'RdYlGn' with reverse=True: small errors green).

    Returns:
        (N, 4) float array of RGBA colours in [0, 1].
    """
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = vals[np.isfinite(vals)]
    if vmin is None:
        vmin = float(finite.min()) if finite.size else 0.0
    if vmax is None:
        vmax = float(finite.max()) if finite.size else 1.0
    lo, hi = float(vmin), float(vmax)
    if hi <= lo:
        hi = lo + 1e-12
    cm = colormaps[cmap]
    if reverse:
        cm = cm.reversed()
    norm = Normalize(vmin=lo, vmax=hi, clip=True)
    return np.asarray(cm(norm(vals)), dtype=np.float64).reshape(-1, 4)


def _side_by_side(im1: np.ndarray, im2: np.ndarray, gap: int) -> tuple[np.ndarray, float]:
    """Place two (H, W, 3) images on one white canvas; return it and image 2's x offset."""
    h1, w1 = im1.shape[:2]
    h2, w2 = im2.shape[:2]
    canvas = np.ones((max(h1, h2), w1 + gap + w2, 3), dtype=np.float32)
    canvas[:h1, :w1] = im1
    canvas[:h2, w1 + gap :] = im2
    return canvas, float(w1 + gap)


def _new_figure(
    canvas: np.ndarray, dpi: float, figsize: tuple[float, float] | None
) -> tuple[Figure, Any]:
    """A figure whose single axes fill it and show `canvas` with pixel data coordinates."""
    h, w = canvas.shape[:2]
    if figsize is None:
        figsize = (w / dpi, h / dpi)
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    return fig, ax


def _select(
    matches: np.ndarray,
    inliers: np.ndarray | None,
    colors: Any,
    npts: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the inputs, resolve colours per match, subsample to `npts` rows.

    Returns:
        matches (M, 4) float64 and colours (M, 4) RGBA.
    """
    m = np.asarray(matches, dtype=np.float64).reshape(-1, 4)
    n = len(m)
    if colors is not None:
        arr = to_rgba_array(colors) if not isinstance(colors, np.ndarray) else colors
        cols = np.asarray(arr, dtype=np.float64)
        if cols.ndim == 1 or len(cols) == 1:  # one colour for all
            cols = np.tile(np.asarray(to_rgba(tuple(cols.reshape(-1)))), (n, 1))
        elif cols.shape[1] == 3:
            cols = np.concatenate([cols, np.ones((len(cols), 1))], axis=1)
        if len(cols) != n:
            raise ValueError(f"{len(cols)} colours for {n} matches")
    elif inliers is not None:
        inl = np.asarray(inliers).reshape(-1).astype(bool)
        if len(inl) != n:
            raise ValueError(f"inlier mask of length {len(inl)} for {n} matches")
        cols = np.where(inl[:, None], np.asarray(INLIER_COLOR), np.asarray(OUTLIER_COLOR))
    else:
        cols = np.tile(np.asarray(DEFAULT_COLOR), (n, 1))
    if npts is not None and 0 <= npts < n:
        ids = np.sort(np.random.default_rng(seed).choice(n, size=int(npts), replace=False))
        m, cols = m[ids], cols[ids]
    return m, cols.reshape(-1, 4)


def _draw_points(ax: Any, xy: np.ndarray, colors: np.ndarray, radius: float) -> None:
    """Circles of `radius` canvas pixels (filled, thin dark edge) at xy (M, 2)."""
    if len(xy) == 0 or radius <= 0:
        return
    d = np.full(len(xy), 2.0 * radius)
    coll = EllipseCollection(
        d,
        d,
        np.zeros(len(xy)),
        units="xy",
        offsets=xy,
        offset_transform=ax.transData,
        facecolors=colors,
        edgecolors="black",
        linewidths=0.3,
    )
    ax.add_collection(coll)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: float | None = None) -> None:
    """Save `fig` (a PNG for a '.png' path), creating the parent folder; keeps the pixel size."""
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=dpi if dpi is not None else fig.dpi)


def plot_matches(
    im1: Any,
    im2: Any,
    matches: np.ndarray,
    inliers: np.ndarray | None = None,
    Npts: int | None = None,  # name kept from the original API
    lines: bool = False,
    unnormalize: bool = True,
    radius: float = 5,
    dpi: float = 150,
    sav_fig: str | os.PathLike | bool = False,
    colors: Any = None,
    *,
    linewidth: float = 1.0,
    gap: int = 10,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
    seed: int = 0,
) -> Figure:
    """Draw matches between two images placed side by side.

    Args:
        im1, im2: images (see :func:`to_numpy_image`): numpy (H, W, 3) uint8/float,
            PIL images, paths, or ImageNet-normalised tensors (1, 3, H, W) / (3, H, W).
        matches: (N, 4) rows (x1, y1, x2, y2) in pixels of im1 / im2.
        inliers: optional (N,) boolean mask; inliers are drawn green, outliers red.
        Npts: draw a random subset of this many matches (reproducible with `seed`).
        lines: connect each pair with a line (endpoints drawn as small dots); otherwise
            draw a circle of the same colour at each of the two points.
        unnormalize: undo ImageNet normalisation of tensor inputs.
        radius: circle radius in canvas pixels (endpoint dots use a third of it with lines).
        dpi: figure resolution.
        sav_fig: a file path to save the figure to (PNG by extension); False: do not save.
        colors: a single colour or (N, 3)/(N, 4) per-match colours (overrides `inliers`),
            e.g. from :func:`colors_from_values`.
        linewidth: line width in points.
        gap: white pixels between the two images.
        figsize: figure size in inches; default the canvas size divided by dpi (1:1 pixels).
        title: optional text drawn in the top-left corner.
        seed: seed of the `Npts` subsampling.

    Returns:
        The matplotlib Figure (Agg canvas).
    """
    a = to_numpy_image(im1, unnormalize)
    b = to_numpy_image(im2, unnormalize)
    canvas, ox = _side_by_side(a, b, gap)
    fig, ax = _new_figure(canvas, dpi, figsize)
    m, cols = _select(matches, inliers, colors, Npts, seed)
    p1 = m[:, :2]
    p2 = m[:, 2:] + np.array([ox, 0.0])
    if lines:
        segs = np.stack([p1, p2], axis=1)
        ax.add_collection(LineCollection(segs, colors=cols, linewidths=linewidth))
        r = radius / 3.0
    else:
        r = radius
    _draw_points(ax, np.concatenate([p1, p2]), np.concatenate([cols, cols]), r)
    if title:
        ax.text(
            5,
            5,
            title,
            color="white",
            fontsize=8,
            va="top",
            ha="left",
            bbox={"facecolor": "black", "alpha": 0.6, "pad": 2, "linewidth": 0},
        )
    if sav_fig:
        save_figure(fig, sav_fig, dpi)
    return fig


def epipolar_segments(lines: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip image lines ``a x + b y + c = 0`` to the box [0, width-1] x [0, height-1].

    Args:
        lines: (N, 3) line coefficients (a, b, c).
        width, height: image size in pixels.

    Returns:
        segments (N, 2, 2) endpoints (x, y) and valid (N,) bool (False: the line misses
        the box or is degenerate; its segment is then NaN).
    """
    ln = np.asarray(lines, dtype=np.float64).reshape(-1, 3)
    a, b, c = ln[:, 0:1], ln[:, 1:2], ln[:, 2:3]
    xmax, ymax = float(width - 1), float(height - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = np.array([0.0, xmax])[None, :]
        ys_at_x = -(a * xs + c) / b  # intersections with the vertical borders
        ys = np.array([0.0, ymax])[None, :]
        xs_at_y = -(b * ys + c) / a  # intersections with the horizontal borders
    cand = np.stack(
        [
            np.stack([np.broadcast_to(xs, ys_at_x.shape), ys_at_x], -1),
            np.stack([xs_at_y, np.broadcast_to(ys, xs_at_y.shape)], -1),
        ],
        axis=1,
    ).reshape(len(ln), 4, 2)
    eps = 1e-6
    inside = (
        np.isfinite(cand).all(-1)
        & (cand[..., 0] >= -eps)
        & (cand[..., 0] <= xmax + eps)
        & (cand[..., 1] >= -eps)
        & (cand[..., 1] <= ymax + eps)
    )
    segs = np.full((len(ln), 2, 2), np.nan)
    valid = np.zeros(len(ln), dtype=bool)
    for i in range(len(ln)):
        pts = cand[i][inside[i]]
        if len(pts) < 2:
            continue
        first = pts[0]
        far = pts[np.argmax(np.linalg.norm(pts - first, axis=1))]
        segs[i] = (first, far)
        valid[i] = True
    return segs, valid


def plot_epilines(
    im1: Any,
    im2: Any,
    matches: np.ndarray,
    F: np.ndarray,
    inliers: np.ndarray | None = None,
    Npts: int | None = 50,
    unnormalize: bool = True,
    radius: float = 4,
    dpi: float = 150,
    sav_fig: str | os.PathLike | bool = False,
    colors: Any = None,
    *,
    linewidth: float = 1.0,
    gap: int = 10,
    figsize: tuple[float, float] | None = None,
    seed: int = 0,
) -> Figure:
    """Draw the matched points and their epipolar lines in both images.

    F follows ``x2ᵀ F x1 = 0`` (homogeneous pixel coordinates): the line of point x1 in
    image 2 is ``F x1`` and the line of x2 in image 1 is ``Fᵀ x2``. A correct match lies on
    the line drawn through its partner's epipolar geometry.

    Args:
        im1, im2: images (see :func:`to_numpy_image`).
        matches: (N, 4) rows (x1, y1, x2, y2).
        F: (3, 3) fundamental matrix from image 1 to image 2.
        inliers: optional (N,) boolean mask (green / red colouring).
        Npts: draw a random subset of this many matches (default 50; None: all).
        unnormalize: undo ImageNet normalisation of tensor inputs.
        radius: point radius in canvas pixels.
        dpi: figure resolution.
        sav_fig: a path to save the figure to; False: do not save.
        colors: a single colour or per-match colours; default a distinct colour per match
            (or green / red when `inliers` is given).
        linewidth, gap, figsize, seed: as in :func:`plot_matches`.

    Returns:
        The matplotlib Figure (Agg canvas).
    """
    a = to_numpy_image(im1, unnormalize)
    b = to_numpy_image(im2, unnormalize)
    canvas, ox = _side_by_side(a, b, gap)
    fig, ax = _new_figure(canvas, dpi, figsize)
    m_all = np.asarray(matches, dtype=np.float64).reshape(-1, 4)
    if colors is None and inliers is None:
        colors = colormaps["hsv"](np.linspace(0.0, 1.0, len(m_all), endpoint=False))
    m, cols = _select(m_all, inliers, colors, Npts, seed)
    fm = np.asarray(F, dtype=np.float64).reshape(3, 3)
    ones = np.ones((len(m), 1))
    x1h = np.concatenate([m[:, :2], ones], axis=1)
    x2h = np.concatenate([m[:, 2:], ones], axis=1)
    lines2 = x1h @ fm.T  # F x1, lines in image 2
    lines1 = x2h @ fm  # Fᵀ x2, lines in image 1
    h1, w1 = a.shape[:2]
    h2, w2 = b.shape[:2]
    seg1, ok1 = epipolar_segments(lines1, w1, h1)
    seg2, ok2 = epipolar_segments(lines2, w2, h2)
    seg2 = seg2 + np.array([ox, 0.0])
    clip1 = Rectangle((-0.5, -0.5), w1, h1, transform=ax.transData)
    clip2 = Rectangle((ox - 0.5, -0.5), w2, h2, transform=ax.transData)
    for segs, ok, clip in ((seg1, ok1, clip1), (seg2, ok2, clip2)):
        coll = LineCollection(segs[ok], colors=cols[ok], linewidths=linewidth)
        ax.add_collection(coll)
        coll.set_clip_path(clip)
    pts = np.concatenate([m[:, :2], m[:, 2:] + np.array([ox, 0.0])])
    _draw_points(ax, pts, np.concatenate([cols, cols]), radius)
    if sav_fig:
        save_figure(fig, sav_fig, dpi)
    return fig
