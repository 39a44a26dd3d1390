"""ResNet-34 feature extractor of Patch2Pix (model.md §1).

The module keeps torchvision's parameter names (``conv1``, ``bn1``, ``layer1``..``layer4``) so
that released checkpoints load as ``extract.*``. ``layer4`` is built, because its weights are in
every checkpoint, but never run. ``fc`` and ``avgpool`` are dropped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

log = logging.getLogger(__name__)

# File names under which torchvision's ImageNet ResNet-34 weights can sit in the torch cache:
# the current IMAGENET1K_V1 file, and the name the original repository downloaded.
IMAGENET_FILES = ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth")

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


def find_imagenet_weights() -> Path | None:
    """Path of the ImageNet ResNet-34 weights in the local torch cache, or None (no download)."""
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    for name in IMAGENET_FILES:
        if (ckpt_dir / name).is_file():
            return ckpt_dir / name
    return None


def load_imagenet_weights(net: ResNet34, lprint=log.warning) -> bool:
    """Load torchvision's ImageNet weights from the local cache when present.

    Returns True when loaded; otherwise says plainly that the backbone starts from random
    weights (nothing is downloaded).
    """
    path = find_imagenet_weights()
    if path is None:
        lprint(
            "ImageNet ResNet-34 weights not found in the torch cache "
            f"({Path(torch.hub.get_dir()) / 'checkpoints'}/{IMAGENET_FILES[0]}): "
            "the backbone starts from random weights."
        )
        return False
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    net.load_state_dict(state, strict=True)
    return True
