"""Patch2Pix: coarse NCNet matching refined to pixel level by two local regressors."""

from __future__ import annotations

import logging
from argparse import Namespace
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from utils.common.cli import UsageError

from .config import Patch2PixConfig
from .ncn.extract_ncmatches import corr_to_matches
from .ncn.model import (
    FeatureCorrelation,
    NeighConsensus,
    feature_l2norm,
    mutual_matching,
)
from .optim import build_optimizer
from .regr_chunks import checkpoint_chunk, chunk_sizes
from .regressor import FeatRegressNet
from .resnet import ResNet34, init_weights, load_imagenet_weights
from .utils import filter_coarse, sample_patch_pairs, shift_to_anchors

log = logging.getLogger(__name__)


def extract_pair(
    extractor: nn.Module, im1: Tensor, im2: Tensor, all_levels: bool = False
) -> tuple[list[Tensor], list[Tensor]]:
    """Backbone features of both image batches: the `forward_all` lists, or ``[layer3]``.

    One call per batch, as in the original (running a same-shape pair as one batch of two
    is not bit-identical on the CPU: oneDNN picks other kernels for another batch size).
    """
    run = extractor.forward_all if all_levels else extractor.forward
    f1, f2 = run(im1), run(im2)
    return (f1, f2) if all_levels else ([f1], [f2])


def channels_last_levels(feats: Sequence[Tensor], feat_idx: Sequence[int]) -> list[Tensor]:
    """The `forward_all` list with the levels in `feat_idx` in channels-last memory format
    (same values; the patch sampler reads rows of channels from them)."""
    return [
        f.contiguous(memory_format=torch.channels_last) if j in feat_idx else f
        for j, f in enumerate(feats)
    ]


class NoRegressorsError(UsageError, RuntimeError):
    """Refinement asked of a coarse-only model (NCNet weights, ``regressor_config=None``)."""


def load_weights(net: nn.Module, weights: dict[str, Tensor], lprint=log.info) -> None:
    """Load `weights` into `net`: strict when it has as many entries as the model.

    Shapes are checked first (a mismatch raises ValueError naming the keys). A partial dict
    is loaded non-strict and the missing / unexpected keys are reported through `lprint`.
    """
    own = net.state_dict()
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in weights.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        raise ValueError(
            "weights do not fit this architecture (shape mismatch): " + "; ".join(bad[:5])
        )
    if len(weights) == len(own):
        net.load_state_dict(weights, strict=True)
        return
    res = net.load_state_dict(weights, strict=False)
    if not set(weights) & set(own):
        raise ValueError("weights do not fit this architecture: no key matches the model")
    lprint(
        f"Loaded {len(weights) - len(res.unexpected_keys)}/{len(own)} weights non-strictly; "
        f"missing: {summarise_keys(res.missing_keys)}; "
        f"unexpected: {summarise_keys(res.unexpected_keys)}"
    )


def summarise_keys(keys: Sequence[str]) -> str:
    """Short description of a list of state_dict keys, grouped by their top-level module."""
    if not keys:
        return "none"
    groups: dict[str, int] = {}
    for k in keys:
        groups[k.split(".")[0]] = groups.get(k.split(".")[0], 0) + 1
    return ", ".join(f"{g}.* ({n})" for g, n in groups.items())


class Patch2Pix(nn.Module):
    """The Patch2Pix matcher (docs/architecture.md).

    Args:
        config: the original's argparse.Namespace (docs/architecture.md §5: ``device``,
            ``training``, ``backbone``, ``change_stride``, ``feat_idx``,
            ``regressor_config``, ``regr_batch``, ``weights_dict`` and for training
            ``freeze_feat``, ``start_epoch``, ``optim_config``; also ``imagenet_init``,
            ``lprint``, ``grad_ckpt``) or a :class:`networks.config.Patch2PixConfig`, whose fields
            document each entry and its default (a Namespace is converted to it; missing
            attributes take the defaults).

    With ``training`` the model builds its optimiser and scheduler (``optimizer``,
    ``lr_scheduler``, :meth:`set_optimizer`), as the original did; the training command
    builds and holds its own instead (utils/train/trainer.py).

    ``config`` (the attribute) is the original's: the construction Namespace without the
    weights dict and the optimiser / scheduler states; ``model_config`` is the same as a
    :class:`Patch2PixConfig`.
    """

    def __init__(self, config: Namespace | Patch2PixConfig) -> None:
        super().__init__()
        cfg = Patch2PixConfig.from_namespace(config).resolved()
        # Kept without the weights / optimiser states (they would hold every tensor twice).
        self.model_config = cfg.without_inputs()
        self.config = self.model_config.to_namespace(inputs=False)
        self.backbone = cfg.backbone
        self.change_stride = cfg.change_stride
        self.feat_idx = list(cfg.feat_idx)
        self.regr_batch = cfg.regr_batch
        # --grad_ckpt: recompute each regressor chunk's activations during backward.
        self.grad_ckpt = cfg.grad_ckpt
        # Matching with amp='bf16' (utils.eval.model_helper.match_prepared) sets this: the
        # backbone then follows the enclosing autocast (see forward).
        self.coarse_amp = False
        self.extract = ResNet34(change_stride=self.change_stride)
        self.upsample = self.extract.upsample
        self.feats_downsample = self.extract.feats_downsample
        self.combine = FeatureCorrelation(shape="4D", normalization=False)
        self.ncn = NeighConsensus(kernel_sizes=[3, 3], channels=[16, 1], symmetric_mode=True)

        # The original's Namespace (with feat_dim filled in), as checkpoints store it.
        self.regressor_config: Namespace | None = self.config.regressor_config
        rc = cfg.regressor_config
        if rc is not None:
            self.psize = list(rc.psize)
            self.ptype = ["center", "center"]
            self.pshift = rc.pshift
            self.panc = rc.panc
            self.shared = rc.shared
            self.regress_mid = FeatRegressNet(rc, psize=self.psize[0])
            self.regress_fine = (
                self.regress_mid if self.shared else FeatRegressNet(rc, psize=self.psize[1])
            )

        init_weights(self)
        lprint = cfg.lprint or print
        if cfg.weights_dict is None and cfg.imagenet_init:
            load_imagenet_weights(
                self.extract, lprint=lprint, download=cfg.imagenet_init == "download"
            )
        if cfg.weights_dict is not None:
            load_weights(self, cfg.weights_dict, lprint=lprint)
        if cfg.device is not None:
            self.to(cfg.device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler = None
        if cfg.training:
            self.set_optimizer(cfg)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.parameters()).device

    def has_regressors(self) -> bool:
        """False for a coarse-only model (NCNet weights, ``regressor_config=None``)."""
        return self.regressor_config is not None

    def require_regressors(self, what: str) -> None:
        """Raise :class:`NoRegressorsError` for `what` on a coarse-only model."""
        if self.regressor_config is None:
            raise NoRegressorsError(
                f"{what}: this model has no regressors (coarse-only NCNet weights, "
                "regressor_config=None), so it gives coarse matches only: use "
                "eval_type='coarse' (predict_coarse), or load a Patch2Pix checkpoint"
            )

    # ------------------------------------------------------------------ training set-up
    def set_optimizer(self, config: Namespace | Patch2PixConfig) -> None:
        """Freeze backbone parameters, build the optimiser and scheduler (docs/training.md §2)
        from ``freeze_feat``, ``start_epoch`` and ``optim_config``: the original's training
        set-up, kept for its callers (the training command uses
        :func:`networks.optim.build_optimizer` and holds the result itself)."""
        self.optimizer, self.lr_scheduler = build_optimizer(self, config)

    # ------------------------------------------------------------------ coarse matching
    def forward(
        self, im1: Tensor, im2: Tensor, ksize: int = 1, return_feats: bool = False
    ) -> tuple:
        """Filtered 4D correlation of two image batches.

        Args:
            im1: (B, 3, H1, W1), im2: (B, 3, H2, W2), normalised; sides multiples of
                ``upsample * ksize``.
        Returns:
            corr4d (B, 1, h1, w1, h2, w2) at the pooled resolution (h = H / upsample / ksize),
            delta4d (tuple of 4 int64 offset volumes, or None when ksize == 1)
            [, feats1, feats2: the `forward_all` lists].
        """
        # The coarse stage stays float32 under autocast (--amp): its argmax decisions and the
        # correlation normalisation are fragile, and it is a small part of a training step.
        # With `coarse_amp` (matching with amp='bf16') the backbone runs under the enclosing
        # autocast; normalisation, correlation, pool, NCN, mutual filtering and match
        # extraction stay float32 (a bf16 NCN output quantises the volume into ties: 14 %
        # of the float32 matches kept on the benchmark pair, against 83 % for this split).
        dev = im1.device.type
        amp = self.coarse_amp and torch.is_autocast_enabled(dev)
        amp_dtype = torch.get_autocast_dtype(dev) if amp else None
        with torch.autocast(dev, enabled=False):
            with torch.autocast(dev, dtype=amp_dtype, enabled=amp):
                feats1, feats2 = extract_pair(self.extract, im1, im2, return_feats)
            if amp:
                feats1 = [f.float() for f in feats1]
                feats2 = [f.float() for f in feats2]
            corr4d, delta4d = self.corr_from_feats(feats1[-1], feats2[-1], ksize)
            if return_feats:
                return corr4d, delta4d, feats1, feats2
            return corr4d, delta4d

    def corr_from_feats(
        self, f1: Tensor, f2: Tensor, ksize: int = 1
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """The coarse stage after the backbone: docs/architecture.md §2 steps 1–6.

        Args:
            f1: (B, C, h1, w1), f2: (B, C, h2, w2) layer3 features (not normalised).
        Returns:
            corr4d (B, 1, h1/k, w1/k, h2/k, w2/k) after mutual matching, NCN and mutual
            matching again; delta4d (4 int64 offset volumes) or None when ksize == 1.
        """
        f1, f2 = feature_l2norm(f1), feature_l2norm(f2)
        delta4d = None
        if ksize > 1:
            corr4d, *delta = self.combine.pooled(f1, f2, ksize)
            delta4d = tuple(delta)
        else:
            corr4d = self.combine(f1, f2)
        corr4d = mutual_matching(corr4d)
        corr4d = self.ncn(corr4d)
        return mutual_matching(corr4d), delta4d

    @staticmethod
    def cal_coarse_matches(
        corr4d: Tensor,
        delta4d: Sequence[Tensor] | None,
        ksize: int = 1,
        upsample: int = 16,
        center: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Both-direction proposals in pixels.

        Returns:
            matches (B, N, 4) int64 ``upsample * (x1, y1, x2, y2) [+ upsample // 2]`` and
            scores (B, N), N = H2·W2 + H1·W1 (A←B proposals first).
        """
        a = corr_to_matches(corr4d, delta4d, ksize, do_softmax=True)
        b = corr_to_matches(corr4d, delta4d, ksize, do_softmax=True, invert_matching_direction=True)
        idx = torch.stack([torch.cat([u, v], 1) for u, v in zip(a[:4], b[:4])], dim=-1)
        matches = idx * upsample + (upsample // 2 if center else 0)
        scores = torch.cat([a[4], b[4]], dim=1)
        return matches, scores

    def predict_coarse(
        self,
        im1: Tensor,
        im2: Tensor,
        ksize: int = 2,
        ncn_thres: float = 0.0,
        mutual: bool = False,
        center: bool = True,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Coarse (patch-level) matches per image: lists of (N, 4) int64 and (N,) scores."""
        corr4d, delta4d = self.forward(im1, im2, ksize)
        matches, scores = self.cal_coarse_matches(corr4d, delta4d, ksize, self.upsample, center)
        return filter_coarse(matches, scores, ncn_thres, mutual)

    # ------------------------------------------------------------------ refinement
    def shift_to_anchors(self, matches: Sequence[Tensor]) -> list[Tensor]:
        """Anchor expansion with this model's ``pshift`` / ``panc`` (×8 rows when panc is 8)."""
        return shift_to_anchors(matches, self.pshift, self.panc)

    def forward_fine_match(
        self,
        feats1: Sequence[Tensor],
        feats2: Sequence[Tensor],
        matches: Sequence[Tensor],
        psize: int,
        ptype: str,
        regressor: nn.Module,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Refine matches in local windows (docs/architecture.md §4), ``regr_batch`` rows a chunk.

        Args:
            feats1, feats2: `forward_all` lists of the two image batches.
            matches: per image (N, 4) matches in pixels.
        Returns:
            per image: refined matches (N, 4) float and probabilities (N,).
        """
        h1, w1 = feats1[0].shape[-2:]
        h2, w2 = feats2[0].shape[-2:]
        dtype = feats1[0].dtype
        lo = torch.zeros(4, dtype=dtype, device=feats1[0].device)
        hi = torch.tensor([w1, h1, w2, h2], dtype=dtype, device=feats1[0].device)
        recompute = self.grad_ckpt and self.training and torch.is_grad_enabled()
        # Patches are gathered as rows of channels: channels-last maps, converted once here
        # (a no-op for maps that already are, e.g. from regress_levels).
        feats1, feats2 = (
            channels_last_levels(feats1, self.feat_idx),
            channels_last_levels(feats2, self.feat_idx),
        )
        out_m, out_p = [], []
        for ib, imatches in enumerate(matches):
            imatches = imatches.to(dtype)
            if imatches.shape[0] == 0:  # the original crashes here
                out_m.append(imatches.new_zeros((0, 4)))
                out_p.append(imatches.new_zeros((0,)))
                continue

            def regress(chunk: Tensor, ib: int = ib) -> tuple[Tensor, Tensor]:
                return self._regress_chunk(
                    feats1, feats2, ib, chunk, psize, ptype, regressor, lo, hi
                )

            refined, probs = [], []
            for chunk in torch.split(imatches, chunk_sizes(imatches.shape[0], self.regr_batch)):
                if recompute:
                    m, p = checkpoint_chunk(regress, chunk, modules=(regressor,))
                else:
                    m, p = regress(chunk)
                refined.append(m)
                probs.append(p)
            out_m.append(torch.cat(refined))
            out_p.append(torch.cat(probs))
        return out_m, out_p

    def _regress_chunk(
        self,
        feats1: Sequence[Tensor],
        feats2: Sequence[Tensor],
        ib: int,
        chunk: Tensor,
        psize: int,
        ptype: str,
        regressor: nn.Module,
        lo: Tensor,
        hi: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Patch sampling and regression of one chunk of matches of image `ib`.

        Args:
            chunk: (n, 4) float matches; lo, hi: (4,) clamp bounds (0 and W1, H1, W2, H2).
        Returns:
            refined (n, 4) and probabilities (n,), float32 whatever the autocast state: the
            sampled patches are L2-normalised in float32, only the regressor runs under an
            enclosing autocast, and its raw output is parsed in float32.
        """
        with torch.autocast(chunk.device.type, enabled=False):
            # = cat([l2norm(f1s), l2norm(f2s)]) of select_local_patch_feats, laid out
            # channels-last (n, 2D, p, p) directly (tests/test_train_step_layout.py).
            patches = sample_patch_pairs(
                feats1, feats2, ib, chunk, self.feat_idx, self.feats_downsample, psize, ptype
            )
        out = regressor(patches).float()
        offset = psize * torch.tanh(torch.relu(out[:, :4])) - psize // 2
        return torch.clamp(chunk + offset, lo, hi), torch.sigmoid(out[:, 4])

    def _chunk_sizes(self, n: int) -> list[int]:
        """Row counts of the regressor chunks for `n` rows (:func:`chunk_sizes`)."""
        return chunk_sizes(n, self.regr_batch)

    def regress_levels(
        self, feats1: Sequence[Tensor], feats2: Sequence[Tensor], matches: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Mid level on `matches`, then fine level on the mid matches.

        Returns:
            mid matches, mid probabilities, fine matches, fine probabilities (lists per image).
        """
        self.require_regressors("refinement")
        feats1 = channels_last_levels(feats1, self.feat_idx)  # once for both levels
        feats2 = channels_last_levels(feats2, self.feat_idx)
        mid, mid_p = self.forward_fine_match(
            feats1, feats2, matches, self.psize[0], self.ptype[0], self.regress_mid
        )
        fine, fine_p = self.forward_fine_match(
            feats1, feats2, mid, self.psize[1], self.ptype[1], self.regress_fine
        )
        return mid, mid_p, fine, fine_p

    def predict_fine(
        self,
        im1: Tensor,
        im2: Tensor,
        ksize: int = 2,
        ncn_thres: float = 0.0,
        mutual: bool = True,
        return_all: bool = False,
    ) -> tuple:
        """Coarse matches refined by both levels.

        Returns:
            fine_matches, fine_scores, coarse_matches (lists per image); with `return_all`:
            fine, fine_scores, mid, mid_scores, coarse.
        Raises:
            NoRegressorsError: on a coarse-only model (use `predict_coarse`).
        """
        self.require_regressors("predict_fine")
        corr4d, delta4d, feats1, feats2 = self.forward(im1, im2, ksize, return_feats=True)
        coarse, scores = self.cal_coarse_matches(corr4d, delta4d, ksize, self.upsample, True)
        coarse, _ = filter_coarse(coarse, scores, ncn_thres, mutual)
        coarse = self.shift_to_anchors(coarse)
        mid, mid_p, fine, fine_p = self.regress_levels(feats1, feats2, coarse)
        if return_all:
            return fine, fine_p, mid, mid_p, coarse
        return fine, fine_p, coarse

    def forward_train(
        self, im_src: Tensor, im_pos: Tensor, ksize: int = 2, ptmax: int = 400
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Steps 1–3 of a training step (docs/training.md §3).

        Returns:
            coarse (anchor) matches, mid matches, mid probabilities, fine matches, fine
            probabilities: lists with one entry per image pair.
        """
        corr4d, delta4d, feats1, feats2 = self.forward(im_src, im_pos, ksize, return_feats=True)
        coarse, scores = self.cal_coarse_matches(corr4d, delta4d, ksize, self.upsample, True)
        if self.panc > 1 and ptmax > 0:
            coarse, _ = filter_coarse(coarse, scores, 0.0, mutual=True, ptmax=ptmax)
        coarse = self.shift_to_anchors(coarse)
        mid, mid_p, fine, fine_p = self.regress_levels(feats1, feats2, coarse)
        return coarse, mid, mid_p, fine, fine_p

    def refine_matches(
        self,
        im1: Tensor,
        im2: Tensor,
        coarse_matches: np.ndarray | Tensor,
        io_thres: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Refine matches from any other matcher on one image pair.

        Args:
            im1: (1, 3, H1, W1), im2: (1, 3, H2, W2) normalised images.
            coarse_matches: (N, 4) matches (x1, y1, x2, y2) in these images' pixels.
        Returns:
            numpy refined (M, 4), scores (M,), coarse (M, 4): the rows with score >
            `io_thres` when any pass, else all rows.
        Raises:
            NoRegressorsError: on a coarse-only model.
        """
        self.require_regressors("refine_matches")
        coarse = torch.as_tensor(coarse_matches, device=self.device).reshape(-1, 4)
        if coarse.shape[0] == 0:
            empty = np.zeros((0, 4), dtype=np.float32)
            return empty, np.zeros((0,), dtype=np.float32), empty.copy()
        feats1 = self.extract.forward_all(im1)
        feats2 = self.extract.forward_all(im2)
        _, _, fine, fine_p = self.regress_levels(feats1, feats2, [coarse.to(im1.dtype)])
        refined, scores = fine[0], fine_p[0]
        keep = scores > io_thres
        if keep.any():
            refined, scores, coarse = refined[keep], scores[keep], coarse[keep]
        return (
            refined.detach().cpu().numpy(),
            scores.detach().cpu().numpy(),
            coarse.detach().cpu().numpy(),
        )
