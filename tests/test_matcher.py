"""utils/eval/matcher.py: the ``matcher(image0, image1)`` API.

Same tiny checkpoint as tests/test_examples.py: an identity neighbourhood consensus and
regressors with zero offset, so on a pair whose second image is the first one enlarged 1.5x
every match satisfies keypoints1 = 1.5 · keypoints0 in the input images' pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_scaled_pair
from PIL import Image

from utils.eval.matcher import Patch2PixMatcher, to_pil_rgb
from utils.eval.model_helper import estimate_matches

SCALE = 1.5


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt: Path) -> Path:
    return tiny_ckpt  # tests/conftest.py


@pytest.fixture(scope="module")
def net(tiny_net: torch.nn.Module) -> torch.nn.Module:
    return tiny_net  # tests/conftest.py


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 200x150 picture and the same picture enlarged 1.5x (300x225), as PNG files."""
    return write_scaled_pair(tmp_path_factory.mktemp("pair"), (200, 150), SCALE)


def test_same_numbers_as_estimate_matches(net, pair) -> None:
    p1, p2 = pair
    matcher = Patch2PixMatcher(net, imsize=192, io_thres=0.25, ksize=2, eval_type="fine")
    out = matcher(p1, p2)
    m, s, c = estimate_matches(
        net, str(p1), str(p2), ksize=2, io_thres=0.25, eval_type="fine", imsize=192
    )
    assert len(m) > 20
    np.testing.assert_array_equal(out["keypoints0"], m[:, :2])
    np.testing.assert_array_equal(out["keypoints1"], m[:, 2:])
    np.testing.assert_array_equal(out["scores"], s)
    np.testing.assert_array_equal(out["coarse"], c)
    # keypoints are in each input's own pixels: image 1 is image 0 enlarged 1.5x
    np.testing.assert_allclose(out["keypoints1"], SCALE * out["keypoints0"], atol=1e-3)
    assert out["keypoints0"].shape == (len(m), 2) and out["scores"].shape == (len(m),)


def test_every_input_type_gives_the_file_result(net, pair) -> None:
    p1, p2 = pair
    matcher = Patch2PixMatcher(net, imsize=None, io_thres=0.0, eval_type="mid")
    ref = matcher(str(p1), str(p2))
    a1, a2 = (np.array(Image.open(p).convert("RGB")) for p in (p1, p2))
    inputs = {
        "numpy": (a1, a2),
        "pil": (Image.open(p1), Image.open(p2)),
        "tensor": tuple(torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in (a1, a2)),
        "batched tensor": tuple(
            torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255 for a in (a1, a2)
        ),
        "float numpy": (a1 / 255.0, a2 / 255.0),
    }
    for kind, (x0, x1) in inputs.items():
        out = matcher(x0, x1)
        for key in ("keypoints0", "keypoints1", "scores", "coarse"):
            np.testing.assert_array_equal(out[key], ref[key], err_msg=f"{kind} {key}")


def test_grey_inputs_become_rgb() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    im = to_pil_rgb(grey)
    assert im.mode == "RGB" and im.size == (4, 3)
    np.testing.assert_array_equal(np.asarray(im)[:, :, 2], grey)


def test_built_from_checkpoint_path(ckpt, pair) -> None:
    p1, p2 = pair
    matcher = Patch2PixMatcher(ckpt, imsize=128, device="cpu", lprint=lambda *a: None)
    assert matcher.config()["imsize"] == 128
    out = matcher(p1, p2)
    np.testing.assert_allclose(out["keypoints1"], SCALE * out["keypoints0"], atol=1e-3)


def test_bad_inputs_are_named(net, pair) -> None:
    matcher = Patch2PixMatcher(net, imsize=128)
    with pytest.raises(ValueError, match="image1: expected a \\(3, H, W\\) tensor"):
        matcher(pair[0], torch.zeros(2, 3, 32, 32))
    with pytest.raises(TypeError, match="image0: unsupported image type"):
        matcher(3, pair[1])
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        matcher("nowhere.png", pair[1])
    with pytest.raises(ValueError, match="eval_type"):
        Patch2PixMatcher(net, eval_type="pixel")
    with pytest.raises(ValueError, match=r"image1: float values must be in \[0, 1\], got \[0, 255"):
        matcher(pair[0], torch.linspace(0, 255, 3 * 32 * 32).reshape(3, 32, 32))
    with pytest.raises(ValueError, match="image0: float values must be in"):
        matcher(np.full((32, 32, 3), np.nan, np.float32), pair[1])
