"""Shared test helpers: thread count, the reference test vectors and their weight rule."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
TESTVECTORS = REPO.parent / "shared" / "testvectors" / "patch2pix_reference.pt"


def rule_tensor(key: str, shape, dtype=torch.float32) -> torch.Tensor:
    """Regenerate one weight with the rule of spec/testvectors.md."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    r = torch.rand(tuple(shape), generator=gen, dtype=torch.float32)
    if key.startswith("ncn.") or key.startswith("conv."):
        out = r * 0.1 if key.endswith("weight") else r * 0.01
    elif len(shape) >= 2:
        out = (r - 0.5) * 2 * math.sqrt(3 / math.prod(shape[1:]))
    elif key.endswith("running_var") or key.endswith(".weight"):
        out = 0.5 + r
    else:
        out = (r - 0.5) * 0.2
    return out.to(dtype)


def rule_state_dict(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A state_dict for `module` whose every entry follows the weight rule.

    `prefix` is prepended to each key before generating (e.g. 'ncn.' for a bare
    NeighConsensus whose keys are recorded as 'ncn.conv.0.weight' in a whole model).
    """
    return {
        k: rule_tensor(prefix + k, tuple(v.shape)) for k, v in module.state_dict().items()
    }


@pytest.fixture(scope="session")
def refvec() -> dict:
    if not TESTVECTORS.exists():
        pytest.skip(f"reference test vectors not found at {TESTVECTORS} (../shared is absent)")
    return torch.load(TESTVECTORS, weights_only=True)
