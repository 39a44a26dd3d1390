"""FeatRegressNet: the local refinement regressor of Patch2Pix (docs/architecture.md §4)."""

from __future__ import annotations

from argparse import Namespace

import torch
from torch import Tensor, nn

from .config import RegressorConfig


class FeatRegressNet(nn.Module):
    """Regress a pixel offset and a match probability from a pair of local patches.

    Layout (default config): conv 3×3/2 (no bias), BN, conv 3×3/1 (no bias), BN, ReLU,
    global max-pool, then [Linear, BN1d, ReLU] per hidden FC width and a final Linear → 5.
    With ``feat_comb == 'pre'`` the two patches are concatenated over channels before the
    convolutions; with ``'post'`` each patch goes through the (shared) convolutions and the
    pooled vectors are concatenated before the FC layers.

    Args:
        config: a :class:`RegressorConfig` (or the original's Namespace) with ``feat_dim``
            set.
        psize: side of the square input patch.
    """

    def __init__(self, config: RegressorConfig | Namespace, psize: int = 16) -> None:
        super().__init__()
        config = RegressorConfig.from_namespace(config)
        if config.feat_dim is None:
            raise ValueError("FeatRegressNet needs regressor_config.feat_dim")
        self.feat_comb = config.feat_comb
        feat_dim = config.feat_dim
        ch_in = 2 * feat_dim if self.feat_comb == "pre" else feat_dim
        conv: list[nn.Module] = []
        size = psize
        layers = zip(config.conv_dims, config.conv_kers, config.conv_strs, strict=True)
        for dim, ker, stride in layers:
            conv += [
                nn.Conv2d(ch_in, dim, ker, stride=stride, padding=ker // 2, bias=False),
                nn.BatchNorm2d(dim),
            ]
            ch_in = dim
            size = (size + 2 * (ker // 2) - ker) // stride + 1
        conv.append(nn.ReLU(inplace=True))
        self.conv = nn.Sequential(*conv)
        self.pool = nn.MaxPool2d(size)
        fc: list[nn.Module] = []
        fc_in = ch_in if self.feat_comb == "pre" else 2 * ch_in
        for dim in config.fc_dims:
            fc += [nn.Linear(fc_in, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
            fc_in = dim
        fc.append(nn.Linear(fc_in, 5))
        self.fc = nn.Sequential(*fc)

    def _pooled(self, x: Tensor) -> Tensor:
        """(N, C, p, p) → (N, conv_dims[-1]): convolutions, then the global max-pool.

        ``self.pool`` spans the whole conv output map, so it is a max over the flattened
        map: same values and the same gradient routing (the first maximum), but on a
        channels-last map (from the patch sampler; the convolutions are faster on it) its
        backward is ≈ 4× cheaper in a training step than ``MaxPool2d``'s, and unlike
        pooling an NCHW copy it keeps no extra tensor for backward (benchmarks/RESULTS.md,
        issue 17).
        """
        return self.conv(x).flatten(2).max(dim=2).values

    def forward(self, x: Tensor) -> Tensor:
        """(N, 2·D, p, p) patch pairs → (N, 5) float32: four raw offsets and a raw probability."""
        if self.feat_comb == "pre":
            feat = self._pooled(x)
        else:
            d = x.shape[1] // 2
            feat = torch.cat([self._pooled(x[:, :d]), self._pooled(x[:, d:])], dim=1)
        hidden = self.fc[:-1](feat)
        # The output layer runs in float32 under autocast (--amp): its five numbers become
        # pixel offsets (16·tanh) and probabilities, where bf16's 8-bit mantissa would
        # quantise an offset to 1/16 px. It is 0.1% of the regressor's arithmetic.
        with torch.autocast(hidden.device.type, enabled=False):
            return self.fc[-1](hidden.float())
