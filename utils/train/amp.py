"""Mixed precision of training (``--amp off|bf16|fp16``).

What runs in low precision (decided from measurements, see README "Training on the machines
you have"): only the two regressors (their convolutions and linear layers, which are almost
all of a training step's arithmetic) run under ``torch.autocast``. Kept in float32:

- the backbone and the coarse stage (correlation, its L2 normalisation, mutual matching,
  neighbourhood consensus, the softmax of the match extraction): argmax decisions change
  with bf16 rounding, and the stage is a few percent of a step (``Patch2Pix.forward``);
- the sampled patch features and their L2 normalisation (``Patch2Pix._regress_chunk``);
- the parsing of the regressor output (offsets in pixels, sigmoid probabilities): a bf16
  offset near ±8 px has a resolution of 1/16 px;
- the whole loss: Sampson distances of pixel coordinates up to ~480 (bf16 keeps 8 bits of
  mantissa) and the BCE inputs (``torch.nn.functional.binary_cross_entropy`` refuses
  autocast on CUDA). :func:`utils.train.trainer.train_step` computes it outside autocast.

Parameters, gradients, optimiser states and checkpoints stay float32 whatever ``--amp`` is.
fp16 needs CUDA: it uses a :class:`torch.amp.GradScaler` against gradient underflow; on CPU
fp16 autocast has no fast kernels on most processors, so ``--amp fp16`` on CPU is a usage
error (use bf16 there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from utils.common.cli import UsageError

AMP_MODES = ("off", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(mode: str, device: torch.device) -> None:
    """Refuse an ``--amp`` mode the device cannot run.

    Raises:
        UsageError: one line naming ``--amp``.
    """
    if mode not in AMP_MODES:
        raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    if mode == "fp16" and device.type != "cuda":
        raise UsageError(
            f"--amp fp16 needs a CUDA device (gradient scaler, fp16 kernels); "
            f"on {device.type} use --amp bf16"
        )
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("--amp bf16: this CUDA device has no bfloat16 support (use --amp fp16)")


@dataclass
class MixedPrecision:
    """The autocast context and the gradient scaler of one ``--amp`` mode on one device.

    Attributes:
        mode: 'off', 'bf16' or 'fp16'.
        device: the training device.
        scaler: a GradScaler for fp16, else None.
    """

    mode: str
    device: torch.device
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def create(cls, mode: str, device: torch.device) -> MixedPrecision:
        """Check `mode` for `device` and build the scaler (fp16 only)."""
        check_amp(mode, device)
        scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None
        return cls(mode, torch.device(device), scaler)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to the mode's dtype (a no-op context for 'off')."""
        if not self.enabled:
            yield
            return
        with torch.autocast(self.device.type, dtype=AMP_DTYPES[self.mode]):
            yield

    def backward_and_step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward()`` and ``optimizer.step()``, through the scaler for fp16 (a step
        with inf / NaN gradients is skipped and the scale lowered, as GradScaler does)."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
