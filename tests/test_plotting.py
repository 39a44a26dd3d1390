"""Headless match / epipolar-line plots: file, pixel size, content, colours, tensor input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from utils.common.imagenet import IMAGENET_MEAN, IMAGENET_STD
from utils.common.plotting import (
    colors_from_values,
    epipolar_segments,
    plot_epilines,
    plot_matches,
    to_numpy_image,
)


def _grey(h: int, w: int, v: int = 128) -> np.ndarray:
    return np.full((h, w, 3), v, dtype=np.uint8)


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def _matches(n: int, w1: int, h1: int, w2: int, h2: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.c_[
        rng.uniform(5, w1 - 5, n),
        rng.uniform(5, h1 - 5, n),
        rng.uniform(5, w2 - 5, n),
        rng.uniform(5, h2 - 5, n),
    ]


def _red(px: np.ndarray) -> int:
    return int(np.sum((px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] < 60)))


def _green(px: np.ndarray) -> int:
    return int(np.sum((px[..., 1] > 200) & (px[..., 0] < 60) & (px[..., 2] < 60)))


def test_saved_png_size_and_content(tmp_path: Path) -> None:
    a, b = _textured(60, 80), _textured(50, 70, seed=3)
    out = tmp_path / "sub" / "m.png"
    fig = plot_matches(a, b, _matches(20, 80, 60, 70, 50), lines=True, dpi=100, sav_fig=out)
    assert isinstance(fig, Figure)
    assert out.exists()
    px = _read(out)
    # default figsize: canvas pixels 1:1, i.e. (w1 + gap + w2) x max(h1, h2)
    assert px.shape == (60, 80 + 10 + 70, 3)
    assert px.std() > 20

    out2 = tmp_path / "m2.png"
    plot_matches(a, b, _matches(5, 80, 60, 70, 50), figsize=(4, 3), dpi=50, sav_fig=out2)
    assert _read(out2).shape == (150, 200, 3)  # figsize x dpi


def test_drawing_changes_pixels_and_colours(tmp_path: Path) -> None:
    a, b = _grey(60, 80), _grey(60, 80)
    m = _matches(10, 80, 60, 80, 60)
    plot_matches(a, b, m[:0], sav_fig=tmp_path / "empty.png", dpi=100)
    blank = _read(tmp_path / "empty.png")
    # the images themselves are reproduced exactly where nothing is drawn
    assert np.all(blank[:, :80] == 128) and np.all(blank[:, 90:] == 128)
    assert np.all(blank[:, 80:90] == 255)  # white gap

    plot_matches(a, b, m, inliers=np.zeros(10, bool), lines=True, sav_fig=tmp_path / "o.png")
    plot_matches(a, b, m, inliers=np.ones(10, bool), lines=True, sav_fig=tmp_path / "i.png")
    out_px, in_px = _read(tmp_path / "o.png"), _read(tmp_path / "i.png")
    assert np.sum(np.any(out_px != blank, axis=-1)) > 200  # lines change many pixels
    assert _red(out_px) > 100 and _green(out_px) == 0
    assert _green(in_px) > 100 and _red(in_px) == 0

    # points only (no lines): every circle is drawn in both images
    plot_matches(a, b, m[:1], colors="red", radius=5, sav_fig=tmp_path / "p.png")
    p = _read(tmp_path / "p.png")
    x1, y1, x2, y2 = m[0]
    assert _red(p[int(y1) - 2 : int(y1) + 3, int(x1) - 2 : int(x1) + 3]) > 10
    assert _red(p[int(y2) - 2 : int(y2) + 3, 90 + int(x2) - 2 : 90 + int(x2) + 3]) > 10
    assert _red(p) < 2 * 3.3 * 5.5**2  # two filled disks of radius ~5, nothing else


def test_npts_and_per_match_colours(tmp_path: Path) -> None:
    a, b = _grey(60, 80), _grey(60, 80)
    m = _matches(30, 80, 60, 80, 60)
    cols = np.tile([[1.0, 0.0, 0.0]], (30, 1))
    cols[::2] = [0.0, 1.0, 0.0]
    plot_matches(a, b, m, colors=cols, lines=True, sav_fig=tmp_path / "c.png")
    px = _read(tmp_path / "c.png")
    assert _red(px) > 50 and _green(px) > 50
    plot_matches(a, b, m, Npts=0, lines=True, sav_fig=tmp_path / "n0.png")
    plot_matches(a, b, m[:0], sav_fig=tmp_path / "e.png")
    assert np.array_equal(_read(tmp_path / "n0.png"), _read(tmp_path / "e.png"))
    with pytest.raises(ValueError):
        plot_matches(a, b, m, inliers=np.ones(3, bool))


def test_tensor_input_is_unnormalised(tmp_path: Path) -> None:
    a = _textured(40, 48, seed=5)
    b = _textured(40, 48, seed=6)

    def norm(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        return (t - mean) / std

    ta, tb = norm(a)[None], norm(b)  # (1, 3, H, W) and (3, H, W)
    assert np.abs(to_numpy_image(ta) - a / 255.0).max() < 1e-5
    assert np.abs(to_numpy_image(tb) - b / 255.0).max() < 1e-5
    # without unnormalising, the raw normalised values are clipped to [0, 1]
    raw = to_numpy_image(ta, unnormalize=False)
    assert np.allclose(raw, np.clip(ta[0].permute(1, 2, 0).numpy(), 0, 1))

    m = _matches(8, 48, 40, 48, 40)
    plot_matches(ta, tb, m, lines=True, sav_fig=tmp_path / "t.png")
    plot_matches(a, b, m, lines=True, sav_fig=tmp_path / "n.png")
    diff = np.abs(_read(tmp_path / "t.png") - _read(tmp_path / "n.png"))
    assert diff.max() <= 1  # same picture up to 8-bit rounding


def test_other_image_types() -> None:
    a = _textured(20, 30)
    assert np.allclose(to_numpy_image(Image.fromarray(a)), a / 255.0)
    grey = a[..., 0]
    assert to_numpy_image(grey).shape == (20, 30, 3)
    f = a.astype(np.float32) / 255.0
    assert np.allclose(to_numpy_image(f), f)
    assert np.allclose(to_numpy_image(a.astype(np.float64)), a / 255.0)  # 0..255 floats


def test_colors_from_values() -> None:
    c = colors_from_values([0.0, 5.0, 10.0, 20.0, -3.0], vmin=0, vmax=10, cmap="viridis")
    assert c.shape == (5, 4)
    assert np.allclose(c[3], c[2]) and np.allclose(c[4], c[0])  # clipped to the range
    assert not np.allclose(c[0], c[1])
    r = colors_from_values([0.0, 10.0], cmap="viridis", reverse=True)  # default range: data
    assert np.allclose(r[0], c[2]) and np.allclose(r[1], c[0])


def test_epipolar_segments_exact() -> None:
    lines = np.array([[0.0, 1.0, -10.0], [1.0, 0.0, -20.0], [0.0, 1.0, 500.0], [1.0, -1.0, 0.0]])
    segs, ok = epipolar_segments(lines, width=100, height=50)
    assert ok.tolist() == [True, True, False, True]
    assert np.allclose(np.sort(segs[0][:, 0]), [0, 99]) and np.allclose(segs[0][:, 1], 10)
    assert np.allclose(segs[1][:, 0], 20) and np.allclose(np.sort(segs[1][:, 1]), [0, 49])
    assert np.allclose(np.sort(segs[3][:, 0]), [0, 49])  # the diagonal y = x


def test_plot_epilines(tmp_path: Path) -> None:
    a, b = _grey(60, 80), _grey(60, 80)
    # pure horizontal motion: F = [t]x with t = (1, 0, 0), epipolar lines y2 = y1
    F = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    m = np.array([[10.0, 20.0, 40.0, 20.0], [50.0, 45.0, 30.0, 45.0]])
    fig = plot_epilines(a, b, m, F, colors="red", radius=0, sav_fig=tmp_path / "e.png")
    assert isinstance(fig, Figure)
    px = _read(tmp_path / "e.png")
    assert px.shape == (60, 170, 3)
    for y in (20, 45):  # lines across both images at those rows
        assert _red(px[y - 1 : y + 2, :80]) >= 70
        assert _red(px[y - 1 : y + 2, 90:]) >= 70
    assert _red(px[:15]) == 0 and _red(px[:, 80:90]) == 0  # nothing elsewhere / in the gap


def test_no_pyplot_figures_leak() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_matches(_grey(10, 10), _grey(10, 10), np.zeros((1, 4)))
    assert plt.get_fignums() == before
