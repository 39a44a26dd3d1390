"""ResNet-34 feature extractor of Patch2Pix (docs/architecture.md §1).

The module keeps torchvision's parameter names (``conv1``, ``bn1``, ``layer1``..``layer4``) so
that released checkpoints load as ``extract.*``. ``layer4`` is built, because its weights are in
every checkpoint, but never run. ``fc`` and ``avgpool`` are dropped.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from utils.common.cli import UsageError

log = logging.getLogger(__name__)

# File names under which torchvision's ImageNet ResNet-34 weights can sit in the torch cache:
# the current IMAGENET1K_V1 file, and the name the original repository downloaded. Each name
# ends with the first 8 hex digits of the file's SHA-256 (torchvision's convention).
IMAGENET_FILES = ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth")
# torchvision's ResNet34_Weights.IMAGENET1K_V1 (what a missing file is fetched from).
IMAGENET_URL = "https://download.pytorch.org/models/resnet34-b627a593.pth"
IMAGENET_SHA256_PREFIX = "b627a593"


class ImageNetWeightsError(UsageError):
    """The ImageNet ResNet-34 weights were needed but can be neither found nor downloaded."""


# Channels of the five maps returned by `forward_all` (image, conv1, layer1, layer2, layer3).
FEAT_CHANNELS = (3, 64, 64, 128, 256)


class ResNet34(ResNet):
    """ResNet-34 trunk returning the stride-8 (``change_stride``) or stride-16 layer3 map.

    Args:
        change_stride: give the first block of ``layer3`` stride 1, so layer3 has stride 8.
    """

    def __init__(self, change_stride: bool = False) -> None:
        super().__init__(BasicBlock, [3, 4, 6, 3])
        del self.fc
        del self.avgpool
        self.change_stride = change_stride
        if change_stride:
            block = self.layer3[0]
            block.conv1.stride = (1, 1)
            block.conv2.stride = (1, 1)
            block.downsample[0].stride = (1, 1)

    @property
    def upsample(self) -> int:
        """Pixel stride of the layer3 map."""
        return 8 if self.change_stride else 16

    @property
    def feats_downsample(self) -> list[int]:
        """Downsample factor of each `forward_all` level relative to the previous one."""
        return [1, 2, 2, 2, 1 if self.change_stride else 2]

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) image → (B, 256, H/s, W/s) layer3 features, s = `upsample`."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """The five maps used by the regressors.

        Returns:
            [image (B,3,H,W), conv1 (B,64,H/2,W/2), layer1 (B,64,H/4,W/4),
            layer2 (B,128,H/8,W/8), layer3 (B,256,H/s,W/s)].
        """
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        return [x, f1, f2, f3, f4]


def init_weights(module: nn.Module) -> None:
    """The original's initialisation: Xavier-uniform conv/linear, BN weight ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def imagenet_cache_path() -> Path:
    """Where the ImageNet ResNet-34 weights belong: ``<torch hub dir>/checkpoints/`` +
    ``resnet34-b627a593.pth`` (``~/.cache/torch/hub/checkpoints`` unless ``TORCH_HOME`` or
    ``XDG_CACHE_HOME`` move it), the file torchvision itself uses."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILES[0]


def find_imagenet_weights() -> Path | None:
    """Path of the ImageNet ResNet-34 weights in the local torch cache, or None (no download)."""
    ckpt_dir = imagenet_cache_path().parent
    for name in IMAGENET_FILES:
        if (ckpt_dir / name).is_file():
            return ckpt_dir / name
    return None


def download_imagenet_weights(progress: bool = True) -> Path:
    """Fetch torchvision's ImageNet ResNet-34 weights into the torch cache.

    ``torch.hub.download_url_to_file`` writes to a temporary file beside the target, checks
    the SHA-256 prefix and only then moves it into place: a failed download leaves nothing.

    Returns:
        the cached file (:func:`imagenet_cache_path`).
    Raises:
        ImageNetWeightsError: naming the file, where to put it by hand, and
            ``--random_backbone``, when the download fails (offline, bad hash, no space).
    """
    dst = imagenet_cache_path()
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            IMAGENET_URL, os.fspath(dst), hash_prefix=IMAGENET_SHA256_PREFIX, progress=progress
        )
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        why = " ".join(str(e).split()) or type(e).__name__
        raise ImageNetWeightsError(
            f"the ImageNet ResNet-34 weights {dst.name} are not in the torch cache and could "
            f"not be downloaded from {IMAGENET_URL} ({why}). Put that file at {dst} (or set "
            "TORCH_HOME to a folder holding hub/checkpoints/" + dst.name + "; "
            "'bash pretrained/download.sh imagenet' fetches it), or pass --random_backbone "
            "to train from a random backbone"
        ) from None
    return dst


def _read_imagenet_state(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
    ) as e:
        raise ImageNetWeightsError(
            f"cannot read the ImageNet ResNet-34 weights {path} ({' '.join(str(e).split())}): "
            "delete the file to download it again"
        ) from None
    if not isinstance(state, dict):
        raise ImageNetWeightsError(f"{path} holds no ResNet-34 state_dict")
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_imagenet_weights(net: ResNet34, lprint=log.warning, download: bool = False) -> bool:
    """Load torchvision's ImageNet weights into `net`: from the torch cache, else (only with
    `download`) fetched into it first.

    Returns:
        True when loaded. Without `download` and without a cached file, says plainly through
        `lprint` that the backbone starts from random weights and returns False.
    Raises:
        ImageNetWeightsError: with `download`, when the file can be neither found nor
            fetched; or when the cached file is unreadable or not a ResNet-34.
    """
    path = find_imagenet_weights()
    if path is None and download:
        lprint(f"ImageNet ResNet-34 weights not in the torch cache: downloading {IMAGENET_URL}")
        path = download_imagenet_weights()
    if path is None:
        lprint(
            "ImageNet ResNet-34 weights not found in the torch cache "
            f"({imagenet_cache_path()}): the backbone starts from random weights."
        )
        return False
    state = _read_imagenet_state(path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ImageNetWeightsError(f"{path} is not a ResNet-34 state_dict: {first}") from None
    lprint(f"backbone initialised from the ImageNet ResNet-34 weights {path}")
    return True
