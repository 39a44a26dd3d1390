"""The configuration of a Patch2Pix model: one typed home for its fields and their defaults.

The original configures :class:`networks.patch2pix.Patch2Pix` with an ``argparse.Namespace``
(docs/architecture.md §5) and stores the regressor part, with ``backbone``, ``feat_idx`` and
``change_stride``, in its checkpoints (docs/file-formats.md §5). Those Namespaces stay the
format at the boundaries; they are converted here:

- :meth:`Patch2PixConfig.from_namespace` / :meth:`Patch2PixConfig.to_namespace`: the
  constructor's Namespace (missing attributes take the defaults below; attributes this
  module does not know are kept, in ``extras``, and given back);
- :meth:`Patch2PixConfig.from_checkpoint` / :meth:`Patch2PixConfig.checkpoint_fields`: the
  four configuration entries of a training checkpoint (``regressor_config`` as the
  Namespace the original writes, attributes in its order). ``from_checkpoint`` first checks
  the file's values against what the architecture allows (the file is untrusted input).

Sequences are tuples inside (the dataclasses are frozen) and lists in the Namespaces, as
the original writes them.
"""

from __future__ import annotations

import operator
from argparse import Namespace
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .resnet import FEAT_CHANNELS

BACKBONES = ("ResNet34",)
FEAT_COMBS = ("pre", "post")

# Entries a checkpoint's regressor_config must have (the others have defaults).
CHECKPOINT_REGRESSOR_KEYS = (
    "conv_dims",
    "conv_kers",
    "conv_strs",
    "fc_dims",
    "psize",
    "pshift",
    "panc",
)
# What the architecture allows (docs/architecture.md §4), checked on checkpoint values:
# widths, kernels, strides and patch sides.
MAX_WIDTH = 4096
MAX_KERNEL = 15
MAX_PSIZE = 64


def _ints(value: Any) -> tuple[int, ...]:
    """A sequence of integers (numpy integers included; no floats) as a tuple."""
    return tuple(operator.index(x) for x in value)


def _list(value: Sequence[Any] | None) -> list[Any] | None:
    return None if value is None else list(value)


def _extras(ns: Any, known: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    """The instance attributes of `ns` that are not in `known`, in their order."""
    return tuple((k, v) for k, v in getattr(ns, "__dict__", {}).items() if k not in known)


def _getter(ns: Any) -> Callable[..., Any]:
    """``get(name, default=None)`` on the attributes of `ns` (a Namespace or any object)."""

    def get(name: str, default: Any = None) -> Any:
        return getattr(ns, name, default)

    return get


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name != "extras")


@dataclass(frozen=True)
class RegressorConfig:
    """The two local regressors (docs/architecture.md §4); defaults: the released models.

    The checkpoint's ``regressor_config`` Namespace has exactly these attributes, in this
    order.
    """

    conv_dims: tuple[int, ...] = (512, 512)
    """Output channels of the regressor's convolutions (one per convolution)."""
    conv_kers: tuple[int, ...] = (3, 3)
    """Kernel side of each convolution."""
    conv_strs: tuple[int, ...] = (2, 1)
    """Stride of each convolution."""
    fc_dims: tuple[int, ...] = (512, 256)
    """Hidden fully-connected widths (a final Linear to 5 outputs follows)."""
    feat_comb: str = "pre"
    """'pre': the two patches concatenated over channels before the convolutions; 'post':
    each patch through the shared convolutions, the pooled vectors concatenated."""
    psize: tuple[int, int] = (16, 16)
    """Patch side of the mid and the fine regressor, in pixels."""
    pshift: int = 8
    """Anchor shift in pixels (training with ``panc`` 8)."""
    panc: int = 1
    """Anchors per coarse match: 8 in training (``--panc``), 1 for matching (the loader
    forces 1; the released checkpoints carry 8)."""
    shared: bool = False
    """One regressor for both levels."""
    feat_dim: int | None = None
    """Channels of one patch: the sum of the sampled levels' channels. None: computed from
    ``feat_idx`` by :meth:`Patch2PixConfig.resolved` (the model stores the number)."""
    extras: tuple[tuple[str, Any], ...] = ()
    """Attributes of the Namespace this config came from that are none of the above, kept
    so that :meth:`to_namespace` gives them back."""

    def __post_init__(self) -> None:
        if self.feat_comb not in FEAT_COMBS:
            raise ValueError(f"feat_comb must be 'pre' or 'post', got {self.feat_comb!r}")

    @classmethod
    def from_namespace(cls, ns: Namespace | RegressorConfig) -> RegressorConfig:
        """From the original's ``regressor_config`` Namespace; missing attributes → defaults."""
        if isinstance(ns, RegressorConfig):
            return ns
        d = cls()
        get = _getter(ns)
        feat_dim = get("feat_dim")
        return cls(
            conv_dims=_ints(get("conv_dims", d.conv_dims)),
            conv_kers=_ints(get("conv_kers", d.conv_kers)),
            conv_strs=_ints(get("conv_strs", d.conv_strs)),
            fc_dims=_ints(get("fc_dims", d.fc_dims)),
            feat_comb=get("feat_comb", d.feat_comb),
            psize=_ints(get("psize", d.psize)),  # type: ignore[arg-type]
            pshift=int(get("pshift", d.pshift)),
            panc=int(get("panc", d.panc)),
            shared=bool(get("shared", d.shared)),
            feat_dim=None if feat_dim is None else operator.index(feat_dim),
            extras=_extras(ns, _names(cls)),
        )

    def to_namespace(self) -> Namespace:
        """The original's ``regressor_config`` Namespace (what checkpoints hold)."""
        ns = Namespace(
            conv_dims=list(self.conv_dims),
            conv_kers=list(self.conv_kers),
            conv_strs=list(self.conv_strs),
            fc_dims=list(self.fc_dims),
            feat_comb=self.feat_comb,
            psize=list(self.psize),
            pshift=self.pshift,
            panc=self.panc,
            shared=self.shared,
            feat_dim=self.feat_dim,
        )
        for k, v in self.extras:
            setattr(ns, k, v)
        return ns


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser and learning-rate schedule of training (docs/training.md §2)."""

    opt: str = "adam"
    """'adam' or 'sgd' (momentum 0.9)."""
    lr_init: float = 5e-4
    """Initial learning rate (``--lr_init``)."""
    weight_decay: float = 0.0
    """``--weight_decay``."""
    lr_decay: tuple[str | float | int, ...] | None = None
    """The ``--lr_decay`` tokens (``step FACTOR STEP`` or ``multistep FACTOR M1 ...``, read
    by :func:`networks.optim.parse_lr_decay`); None: constant rate."""
    optimizer_dict: dict | None = field(default=None, repr=False, compare=False)
    """Optimiser state to restore (``--resume``)."""
    lr_scheduler_dict: dict | None = field(default=None, repr=False, compare=False)
    """Scheduler state to restore (``--resume``)."""
    extras: tuple[tuple[str, Any], ...] = ()
    """Unknown attributes of the source Namespace, given back by :meth:`to_namespace`."""

    @classmethod
    def from_namespace(cls, ns: Namespace | OptimConfig) -> OptimConfig:
        """From the original's ``optim_config`` Namespace; missing attributes → defaults."""
        if isinstance(ns, OptimConfig):
            return ns
        d = cls()
        get = _getter(ns)
        decay = get("lr_decay")
        return cls(
            opt=get("opt", d.opt),
            lr_init=float(get("lr_init", d.lr_init)),
            weight_decay=float(get("weight_decay", d.weight_decay) or 0),
            lr_decay=None if decay is None else tuple(decay),
            optimizer_dict=get("optimizer_dict"),
            lr_scheduler_dict=get("lr_scheduler_dict"),
            extras=_extras(ns, _names(cls)),
        )

    def to_namespace(self, states: bool = True) -> Namespace:
        """The ``optim_config`` Namespace; without `states`, no optimiser / scheduler state
        attributes (what the model keeps)."""
        ns = Namespace(
            opt=self.opt,
            lr_init=self.lr_init,
            weight_decay=self.weight_decay,
            lr_decay=_list(self.lr_decay),
        )
        if states:
            ns.optimizer_dict = self.optimizer_dict
            ns.lr_scheduler_dict = self.lr_scheduler_dict
        for k, v in self.extras:
            setattr(ns, k, v)
        return ns

    def without_states(self) -> OptimConfig:
        """This configuration without the optimiser / scheduler states."""
        return replace(self, optimizer_dict=None, lr_scheduler_dict=None)


@dataclass(frozen=True)
class Patch2PixConfig:
    """Everything ``Patch2Pix(config)`` reads, with its defaults (docs/architecture.md §5).

    The fields have the names of the original's Namespace attributes, in the order the
    training command sets them (:meth:`to_namespace` keeps it). ``backbone``,
    ``change_stride``, ``feat_idx`` and ``regressor_config`` are the architecture that
    checkpoints record; ``device``, ``weights_dict``, ``imagenet_init`` and ``lprint`` are
    construction inputs; ``regr_batch`` and ``grad_ckpt`` run-time settings; ``training``,
    ``freeze_feat``, ``start_epoch`` and ``optim_config`` the training set-up.
    """

    device: Any = None
    """Where the model is moved after construction (a torch.device or its name); None:
    left on the default device."""
    training: bool = False
    """The original's training flag: the model then builds its own optimiser and scheduler
    (``net.optimizer``, ``net.lr_scheduler``) from the fields of the training group. The
    training command leaves it False and owns them (utils/train/trainer.py)."""

    backbone: str = "ResNet34"
    """Feature extractor: only 'ResNet34'."""
    change_stride: bool = False
    """Stride-8 ``layer3`` (every released model): feature stride 8 instead of 16."""
    feat_idx: tuple[int, ...] = (0, 1, 2, 3)
    """Backbone levels the regressors sample (0 = the image, 1..4 = conv1 .. layer3)."""
    regressor_config: RegressorConfig | None = None
    """The regressors; None: a coarse-only (NCNet) model."""

    regr_batch: int = 1200
    """Rows of matches per regressor chunk (a false value in a Namespace means 1200)."""

    weights_dict: dict | None = field(default=None, repr=False, compare=False)
    """A state_dict loaded after initialisation (strict when complete); None: none."""

    freeze_feat: int = 87
    """Backbone parameters frozen from the start (those from 87 on, layer4, always are)."""

    grad_ckpt: bool = False
    """In training with autograd on, recompute each regressor chunk in backward."""

    imagenet_init: bool | str = True
    """Used only without ``weights_dict``: True takes the ImageNet backbone weights from the
    torch cache when there (never downloads); 'download' fetches them when missing and
    raises ImageNetWeightsError when that fails; False keeps the random backbone."""
    lprint: Callable[[str], Any] | None = field(default=None, repr=False, compare=False)
    """Receives what the weight loading did; None: print."""

    start_epoch: int = 0
    """Epoch training starts at (a fresh scheduler is fast-forwarded to it)."""
    optim_config: OptimConfig | None = None
    """Optimiser and schedule; needed when an optimiser is built."""

    extras: tuple[tuple[str, Any], ...] = ()
    """Unknown attributes of the source Namespace, given back by :meth:`to_namespace`."""

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unsupported backbone {self.backbone!r} (only 'ResNet34')")

    # ------------------------------------------------------------------ Namespace
    @classmethod
    def from_namespace(cls, ns: Namespace | Patch2PixConfig) -> Patch2PixConfig:
        """From the constructor's Namespace (docs/architecture.md §5); missing attributes →
        the defaults."""
        if isinstance(ns, Patch2PixConfig):
            return ns
        d = cls()
        get = _getter(ns)
        rc, oc = get("regressor_config"), get("optim_config")
        return cls(
            device=get("device"),
            training=bool(get("training", d.training)),
            backbone=get("backbone", d.backbone),
            change_stride=bool(get("change_stride", d.change_stride)),
            feat_idx=_ints(get("feat_idx", d.feat_idx)),
            regressor_config=None if rc is None else RegressorConfig.from_namespace(rc),
            regr_batch=int(get("regr_batch", d.regr_batch) or d.regr_batch),
            weights_dict=get("weights_dict"),
            freeze_feat=int(get("freeze_feat", d.freeze_feat)),
            grad_ckpt=bool(get("grad_ckpt", d.grad_ckpt)),
            imagenet_init=get("imagenet_init", d.imagenet_init),
            lprint=get("lprint"),
            start_epoch=int(get("start_epoch", d.start_epoch) or 0),
            optim_config=None if oc is None else OptimConfig.from_namespace(oc),
            extras=_extras(ns, _names(cls)),
        )

    def to_namespace(self, inputs: bool = True) -> Namespace:
        """The constructor's Namespace. Without `inputs`: no ``weights_dict`` and no
        optimiser / scheduler states (the model's ``config`` attribute)."""
        rc, oc = self.regressor_config, self.optim_config
        ns = Namespace(
            device=self.device,
            training=self.training,
            backbone=self.backbone,
            change_stride=self.change_stride,
            feat_idx=list(self.feat_idx),
            regressor_config=None if rc is None else rc.to_namespace(),
            regr_batch=self.regr_batch,
            weights_dict=self.weights_dict,
            freeze_feat=self.freeze_feat,
            grad_ckpt=self.grad_ckpt,
            imagenet_init=self.imagenet_init,
            lprint=self.lprint,
            start_epoch=self.start_epoch,
            optim_config=None if oc is None else oc.to_namespace(states=inputs),
        )
        if not inputs:
            del ns.weights_dict
        for k, v in self.extras:
            setattr(ns, k, v)
        return ns

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_checkpoint(
        cls, ckpt: Mapping[str, Any], panc: int | None = None, **inputs: Any
    ) -> Patch2PixConfig:
        """The architecture a training checkpoint records (docs/file-formats.md §5), with
        `inputs` (e.g. ``device``, ``weights_dict``, ``lprint``) for the other fields.

        Args:
            panc: replaces the file's ``regressor_config.panc`` (which is then not read:
                loading for matching sets 1, anchors being a training device only).
        Raises:
            ValueError: naming the field, for a missing / incomplete ``regressor_config`` or a
                value outside what the architecture allows (checked before any conversion).
        """
        rc = ckpt.get("regressor_config")
        if not isinstance(rc, Namespace) or any(
            not hasattr(rc, k) for k in CHECKPOINT_REGRESSOR_KEYS
        ):
            raise ValueError("missing or incomplete 'regressor_config'")
        feat_idx = ckpt.get("feat_idx", [0, 1, 2, 3])
        check_checkpoint_values(rc, feat_idx)
        if panc is not None:
            rc = Namespace(**{**vars(rc), "panc": panc})
        return cls(
            backbone=ckpt["backbone"],
            change_stride=bool(ckpt.get("change_stride", True)),
            feat_idx=_ints(feat_idx),
            regressor_config=RegressorConfig.from_namespace(rc),
            **inputs,
        )

    def checkpoint_fields(self) -> dict[str, Any]:
        """``backbone``, ``feat_idx``, ``change_stride`` and ``regressor_config`` as a
        training checkpoint stores them (lists, a Namespace; ``feat_dim`` filled in)."""
        rc = self.resolved().regressor_config
        return {
            "backbone": self.backbone,
            "feat_idx": list(self.feat_idx),
            "change_stride": bool(self.change_stride),
            "regressor_config": None if rc is None else rc.to_namespace(),
        }

    # ------------------------------------------------------------------ derived
    def resolved(self) -> Patch2PixConfig:
        """This configuration with the regressor's ``feat_dim`` computed when None."""
        rc = self.regressor_config
        if rc is None or rc.feat_dim is not None:
            return self
        feat_dim = sum(FEAT_CHANNELS[i] for i in self.feat_idx)
        return replace(self, regressor_config=replace(rc, feat_dim=feat_dim))

    def without_inputs(self) -> Patch2PixConfig:
        """This configuration without the weights dict and the optimiser / scheduler states
        (what a model keeps: holding them would keep every tensor twice)."""
        oc = self.optim_config
        return replace(
            self,
            weights_dict=None,
            optim_config=None if oc is None else oc.without_states(),
        )


def _int_list(rc: Namespace, key: str, lo: int, hi: int, n: int | None = None) -> list[int]:
    v = getattr(rc, key)
    ok = isinstance(v, (list, tuple)) and (n is None or len(v) == n) and len(v) <= 32
    if not ok or not all(type(x) is int and lo <= x <= hi for x in v):
        raise ValueError(f"regressor_config.{key} = {v!r:.80} (ints in [{lo}, {hi}] expected)")
    return list(v)


def check_checkpoint_values(rc: Namespace | None, feat_idx: Any) -> None:
    """Refuse a checkpoint's ``feat_idx`` / ``regressor_config`` outside what the
    architecture allows, before anything is built (the values are those of the file).

    Raises:
        ValueError: naming the field.
    """
    if (
        not isinstance(feat_idx, (list, tuple))
        or not feat_idx
        or len(set(feat_idx)) != len(feat_idx)
    ):
        raise ValueError(f"feat_idx = {feat_idx!r:.80} (distinct ints in [0, 4] expected)")
    if not all(type(i) is int and 0 <= i <= 4 for i in feat_idx):
        raise ValueError(f"feat_idx = {feat_idx!r:.80} (distinct ints in [0, 4] expected)")
    if rc is None:
        return
    dims = _int_list(rc, "conv_dims", 1, MAX_WIDTH)
    _int_list(rc, "conv_kers", 1, MAX_KERNEL, len(dims))
    _int_list(rc, "conv_strs", 1, MAX_PSIZE, len(dims))
    _int_list(rc, "fc_dims", 1, MAX_WIDTH)
    _int_list(rc, "psize", 1, MAX_PSIZE, 2)
    if type(rc.pshift) is not int or not 0 <= rc.pshift <= MAX_PSIZE:
        raise ValueError(f"regressor_config.pshift = {rc.pshift!r:.40}")
    if getattr(rc, "feat_comb", "pre") not in FEAT_COMBS:
        raise ValueError(f"regressor_config.feat_comb = {rc.feat_comb!r:.40}")
    feat_dim = getattr(rc, "feat_dim", None)
    if feat_dim is not None and (type(feat_dim) is not int or not 1 <= feat_dim <= MAX_WIDTH):
        raise ValueError(f"regressor_config.feat_dim = {feat_dim!r:.40}")
