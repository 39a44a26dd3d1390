"""Optimiser and learning-rate schedule of Patch2Pix training (docs/training.md §2).

``optim_config.lr_decay`` holds the ``--lr_decay`` tokens, as in the original; they are
parsed here by :func:`parse_lr_decay`, beside the scheduler they configure (the training
command's flag check calls it too).
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Sequence

import torch
from torch import nn

from .config import Patch2PixConfig

N_BACKBONE_PARAMS_TO_LAYER3 = 87


def parse_lr_decay(
    tokens: Sequence[str | float | int] | None,
) -> tuple[str, float, list[int]] | None:
    """Parse ``--lr_decay``: ``step FACTOR STEP`` or ``multistep FACTOR M1 [M2 ...]``.

    Returns:
        (kind, factor, steps) or None; raises ValueError naming --lr_decay on a bad form.
    """
    if not tokens:
        return None
    tokens = [str(t) for t in tokens]
    kind = tokens[0].lower()
    usage = "--lr_decay expects 'step FACTOR STEP' or 'multistep FACTOR M1 [M2 ...]'"
    try:
        factor = float(tokens[1])
        steps = [int(t) for t in tokens[2:]]
    except (IndexError, ValueError):
        raise ValueError(f"{usage}, got {' '.join(tokens)!r}") from None
    if kind not in ("step", "multistep") or not steps or (kind == "step" and len(steps) != 1):
        raise ValueError(f"{usage}, got {' '.join(tokens)!r}")
    if not 0 < factor <= 1 or any(s <= 0 for s in steps):
        raise ValueError(f"{usage} with 0 < FACTOR <= 1 and positive steps, got {tokens!r}")
    return kind, factor, steps


def freeze_backbone(extract: nn.Module, freeze_feat: int) -> list[nn.Parameter]:
    """Freeze the first `freeze_feat` backbone parameters and everything from 87 on (layer4).

    Returns:
        the backbone parameters left trainable ([freeze_feat:87]).
    """
    params = list(extract.parameters())
    trainable = []
    for i, p in enumerate(params):
        p.requires_grad_(freeze_feat <= i < N_BACKBONE_PARAMS_TO_LAYER3)
        if p.requires_grad:
            trainable.append(p)
    return trainable


def build_optimizer(net: nn.Module, config: Patch2PixConfig | Namespace):
    """Adam (or SGD) over the regressors, NCN and unfrozen backbone; optional LR scheduler.

    Args:
        net: a Patch2Pix model with regressors (its backbone parameters get frozen here).
        config: a :class:`Patch2PixConfig` (or the original's Namespace): ``freeze_feat``,
            ``start_epoch`` and ``optim_config`` (opt, lr_init, weight_decay, lr_decay,
            optimizer_dict, lr_scheduler_dict).
    Returns:
        (optimizer, lr_scheduler or None).
    Raises:
        ValueError: no ``optim_config``, an unknown optimiser, a bad ``lr_decay``, or an
            optimiser state that does not fit.
    """
    config = Patch2PixConfig.from_namespace(config)
    oc = config.optim_config
    if oc is None:
        raise ValueError("an optimiser needs optim_config (opt, lr_init, ...)")
    backbone = freeze_backbone(net.extract, config.freeze_feat)
    modules = [net.regress_mid]
    if net.regress_fine is not net.regress_mid:
        modules.append(net.regress_fine)
    params = [p for m in modules for p in m.parameters()] + list(net.ncn.parameters()) + backbone
    if oc.opt == "adam":
        optimizer = torch.optim.Adam(params, lr=oc.lr_init, weight_decay=oc.weight_decay)
    elif oc.opt == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=oc.lr_init, momentum=0.9, weight_decay=oc.weight_decay
        )
    else:
        raise ValueError(f"unknown optimiser {oc.opt!r} (adam or sgd)")
    if oc.optimizer_dict:
        optimizer.load_state_dict(oc.optimizer_dict)
    decay = parse_lr_decay(oc.lr_decay)
    scheduler = None
    if decay is not None:
        kind, factor, steps = decay
        if kind == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, steps[0], gamma=factor)
        else:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, gamma=factor)
        if oc.lr_scheduler_dict:
            scheduler.load_state_dict(oc.lr_scheduler_dict)
        else:
            fast_forward(scheduler, optimizer, kind, factor, steps, config.start_epoch)
    return optimizer, scheduler


def fast_forward(
    scheduler, optimizer, kind: str, factor: float, steps: list[int], start_epoch: int
) -> None:
    """Put a fresh Step/MultiStep scheduler at `start_epoch` (no saved scheduler state).

    The learning rate becomes its closed form at that epoch,
    ``lr_init · factor ** (start_epoch // step)`` or
    ``lr_init · factor ** #(milestones ≤ start_epoch)``, as if the scheduler had been stepped
    once per epoch.
    """
    if start_epoch <= 0:
        return
    n = start_epoch // steps[0] if kind == "step" else sum(m <= start_epoch for m in steps)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * factor**n
    scheduler.last_epoch = start_epoch
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
