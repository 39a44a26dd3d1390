"""Image preprocessing: rescale sizes, loaders, tuple transforms and the bottom-right crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from utils.common.imagenet import IMAGENET_MEAN, IMAGENET_STD
from utils.datasets.preprocess import (
    cal_rescale_size,
    crop_from_bottom_right,
    get_tuple_transform_ops,
    image_size,
    load_im_flexible,
    load_im_tensor,
)


def write_image(path, w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def expected_tensor(arr: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
    """Independent reference: PIL bicubic resize to size=(w, h), [0, 1], ImageNet (3, H, W)."""
    im = Image.fromarray(arr)
    if size is not None:
        im = im.resize(size, Image.Resampling.BICUBIC)
    x = np.asarray(im, dtype=np.float64) / 255.0
    x = (x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))


# ---------------------------------------------------------------- crop_from_bottom_right
@pytest.mark.parametrize(
    "w, h, expect",
    [
        (1500, 1000, (0, 0)),  # exactly 1.5
        (300, 200, (0, 0)),
        (1600, 1000, (100, 0)),  # wider 1.6: dh = 1000 % 2 = 0, dw = 1600 − 1000·1.5
        (1601, 1001, (101, 1)),  # wider, odd height: dh = 1, dw = 1601 − 1000·1.5
        (1400, 1000, (2, 68)),  # taller 1.4: dw = 1400 % 3 = 2, dh = 1000 − 1398/1.5
        (1330, 1000, (1, 114)),  # taller 1.33: dw = 1330 % 3 = 1, dh = 1000 − 1329/1.5 = 114
        (1700, 1000, (200, 0)),  # 1.7 is still accepted
        (1300, 1000, (1, 134)),  # 1.3 is still accepted: dw = 1, dh = 1000 − 1299/1.5
    ],
)
def test_crop_from_bottom_right_cases(w, h, expect):
    dw, dh = crop_from_bottom_right(w, h)
    assert (dw, dh) == expect
    assert isinstance(dw, int) and isinstance(dh, int)
    assert (w - dw) / (h - dh) == pytest.approx(1.5, abs=1e-12)


@pytest.mark.parametrize("w, h", [(1800, 1000), (1000, 1000), (1000, 1500), (1710, 1000)])
def test_crop_from_bottom_right_rejects(w, h):
    assert crop_from_bottom_right(w, h) is None


def test_crop_from_bottom_right_other_ratio():
    # 4:3 target: wider → dh = h % 3, taller → dw = w % 4
    assert crop_from_bottom_right(1400, 1000, target_ratio=4 / 3) == (68, 1)
    assert crop_from_bottom_right(1202, 1000, target_ratio=4 / 3) == (2, 100)


# ---------------------------------------------------------------- cal_rescale_size
@pytest.mark.parametrize(
    "w, h, imsize, k, up, expect",
    [
        (1024, 768, 512, 2, 8, (512, 384)),  # ratio 2: 512 and 384 are multiples of 16
        (769, 899, 512, 2, 16, (416, 512)),  # 769·512/899 = 437.9 → 13·32 = 416
        (1000, 700, None, 2, 16, (992, 672)),  # no resize target: 31·32, 21·32
        (1000, 700, 0, 2, 16, (992, 672)),
        (1000, 700, 4000, 2, 16, (992, 672)),  # never upsampled
        (100, 60, None, 2, 8, (96, 48)),
        (100, 60, 50, 1, 8, (48, 24)),  # 50/8 = 6 → 48; 30/8 = 3 → 24
        # float64 evaluation order: 481 / (481/480) = 479.99999999999994 → 14·32 = 448
        (481, 300, 480, 2, 16, (448, 288)),
    ],
)
def test_cal_rescale_size(w, h, imsize, k, up, expect):
    assert cal_rescale_size(imsize, w, h, k_size=k, upsample=up) == expect
    # the original's scale_factor spelling gives the same sizes
    assert cal_rescale_size(imsize, w, h, k_size=k, scale_factor=1 / up) == expect


# ---------------------------------------------------------------- load_im_flexible
def test_load_im_flexible_sizes_and_values(tmp_path):
    arr = write_image(tmp_path / "a.png", 100, 60)
    x, scale = load_im_flexible(tmp_path / "a.png", k_size=2, upsample=8)
    assert x.shape == (3, 48, 96) and x.dtype == torch.float32  # unbatched, as the original
    assert scale == (100 / 96, 60 / 48)
    torch.testing.assert_close(x, expected_tensor(arr, (96, 48)), atol=1e-6, rtol=0)
    x, scale = load_im_flexible(str(tmp_path / "a.png"), k_size=1, upsample=8, imsize=50)
    assert x.shape == (3, 24, 48) and scale == (100 / 48, 60 / 24)


def test_load_im_flexible_exact_multiple_is_not_resized(tmp_path):
    arr = write_image(tmp_path / "b.png", 64, 32, seed=1)
    x, scale = load_im_flexible(tmp_path / "b.png", k_size=2, upsample=16)
    assert scale == (1.0, 1.0)
    torch.testing.assert_close(x, expected_tensor(arr, None), atol=1e-6, rtol=0)


def test_load_im_flexible_crop_square(tmp_path):
    """docs/architecture.md §6: crop after resizing, keep the first W rows; the resize's scale."""
    arr = write_image(tmp_path / "c.png", 60, 100, seed=2)  # portrait: 60 wide, 100 high
    x, scale = load_im_flexible(tmp_path / "c.png", k_size=2, upsample=8, crop_square=True)
    assert x.shape == (3, 48, 48) and scale == (60 / 48, 100 / 96)
    full = expected_tensor(arr, (48, 96))  # resized to 48x96 first, then the first 48 rows
    torch.testing.assert_close(x, full[:, :48, :], atol=1e-6, rtol=0)
    # a landscape image is unchanged by crop_square
    write_image(tmp_path / "d.png", 100, 60, seed=3)
    y, sy = load_im_flexible(tmp_path / "d.png", k_size=2, upsample=8, crop_square=True)
    z, sz = load_im_flexible(tmp_path / "d.png", k_size=2, upsample=8)
    assert y.shape == z.shape == (3, 48, 96) and sy == sz
    torch.testing.assert_close(y, z, atol=0, rtol=0)


def test_load_im_flexible_grey_input_becomes_rgb(tmp_path):
    Image.fromarray(np.full((32, 64), 128, np.uint8)).save(tmp_path / "g.png")
    x, _ = load_im_flexible(tmp_path / "g.png", k_size=2, upsample=16)
    assert x.shape == (3, 32, 64)
    expect = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, 5, 7], expect.float())


def test_loaders_name_missing_and_broken_files(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_im_flexible(missing)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_im_tensor(missing, "cpu")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_im_flexible(broken)
    write_image(tmp_path / "tiny.png", 10, 6)
    with pytest.raises(ValueError, match="tiny.png"):
        load_im_flexible(tmp_path / "tiny.png", upsample=16)


# ---------------------------------------------------------------- load_im_tensor
def test_load_im_tensor(tmp_path):
    arr = write_image(tmp_path / "d.png", 101, 61, seed=3)
    im, gray, scale = load_im_tensor(tmp_path / "d.png", "cpu", imsize=50)
    # round(101·50/101) = 50, round(61·50/101) = round(30.2) = 30
    assert im.shape == (1, 3, 30, 50) and gray.shape == (1, 1, 30, 50)
    assert scale == (101 / 50, 61 / 30)
    torch.testing.assert_close(im[0], expected_tensor(arr, (50, 30)), atol=1e-6, rtol=0)
    resized = Image.fromarray(arr).resize((50, 30), Image.Resampling.BICUBIC).convert("L")
    expect_gray = torch.from_numpy(np.asarray(resized, np.float32) / 255.0)
    torch.testing.assert_close(gray[0, 0], expect_gray)
    # no upsampling; without grey only two values
    im, scale = load_im_tensor(tmp_path / "d.png", torch.device("cpu"), 500, with_gray=False)
    assert im.shape == (1, 3, 61, 101) and scale == (1.0, 1.0)


# ---------------------------------------------------------------- tuple transform
def test_tuple_transform_ops():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (33, 50, 3), dtype=np.uint8)
    out = get_tuple_transform_ops(resize=(20, 30))([Image.fromarray(a), Image.fromarray(b)])
    assert [tuple(t.shape) for t in out] == [(3, 20, 30), (3, 20, 30)]
    torch.testing.assert_close(out[0], expected_tensor(a, (30, 20)), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], expected_tensor(b, (30, 20)), atol=1e-6, rtol=0)
    raw = get_tuple_transform_ops(normalize=False)([Image.fromarray(a)])[0]
    torch.testing.assert_close(raw, torch.from_numpy(a.transpose(2, 0, 1) / 255.0).float())


def test_image_size_reads_the_header_and_names_bad_files(tmp_path):
    write_image(tmp_path / "a.png", 37, 21)
    assert image_size(tmp_path / "a.png") == (37, 21)
    assert image_size(str(tmp_path / "a.png")) == (37, 21)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        image_size(tmp_path / "missing.png")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.jpg"):
        image_size(tmp_path / "junk.jpg")


def test_16bit_greyscale_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG (PIL mode I;16 / I) is scaled by 255/65535 (PIL's own convert clips it:
    91 % of a photo's pixels became 255)."""
    from utils.datasets.preprocess import open_image

    rng = np.random.default_rng(0)
    a16 = rng.integers(0, 65536, (24, 32), dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(a16).save(path)
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")
    rgb = np.asarray(open_image(path))
    want = np.rint(a16 / 257.0).astype(np.uint8)
    assert rgb.shape == (24, 32, 3) and np.array_equal(rgb[..., 0], want)
    assert (rgb == 255).mean() < 0.01
    grey = np.asarray(open_image(path, "L"))
    assert np.array_equal(grey, want)
    # 8-bit images are untouched
    a8 = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    Image.fromarray(a8).save(tmp_path / "g8.png")
    assert np.array_equal(np.asarray(open_image(tmp_path / "g8.png", "L")), a8)


def test_too_small_image_is_a_usage_error(tmp_path):
    from utils.common.cli import UsageError
    from utils.datasets.preprocess import ImageTooSmallError

    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "t.png")
    with pytest.raises(ImageTooSmallError, match=r"t.png \(3x2\) is too small") as ei:
        load_im_flexible(tmp_path / "t.png", imsize=64)
    assert isinstance(ei.value, UsageError) and isinstance(ei.value, ValueError)


def test_decompression_bomb_header_is_refused(tmp_path):
    import struct
    import zlib

    from utils.datasets.preprocess import ImageDecodeError, image_size, open_image

    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "one.png")
    png = (tmp_path / "one.png").read_bytes()
    body = b"IHDR" + struct.pack(">II", 100_000, 100_000) + png[24:29]
    (tmp_path / "bomb.png").write_bytes(
        png[:12] + body + struct.pack(">I", zlib.crc32(body)) + png[33:]
    )
    for fn in (open_image, image_size):
        with pytest.raises(ImageDecodeError, match="bomb.png.*decompression bomb"):
            fn(tmp_path / "bomb.png")
