"""Set-up helpers: seeding, safe checkpoint loading and atomic checkpoint writing."""

from __future__ import annotations

import argparse
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Exactly the non-tensor types that the original's checkpoints contain: the regressor
# configuration (argparse.Namespace) and numpy scalars in `best_vals` (numpy 1.x and 2.x
# spell the scalar constructor differently).
_NUMPY_SCALAR = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
CHECKPOINT_ALLOWED_GLOBALS: list[Any] = [
    argparse.Namespace,
    np.dtype,
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
    *(getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "BoolDType")),
]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (missing, unreadable, unsafe, wrong content)."""


def seed_all(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); make cuDNN deterministic if asked."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def load_checkpoint_safe(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint without executing code from it.

    Uses ``torch.load(weights_only=True)`` with an allow-list of exactly the types the
    original's checkpoints contain. Anything else is refused.

    Raises:
        CheckpointError: naming the file, when it is missing, not a torch checkpoint, or
            holds a type outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(CHECKPOINT_ALLOWED_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).strip().splitlines()
        why = next((line for line in msg if "GLOBAL" in line or "Unsupported" in line), msg[0])
        raise CheckpointError(
            f"refusing to load {path}: it contains a type outside the checkpoint allow-list "
            f"({why.strip()}). Only load checkpoints from trusted sources."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None


def save_checkpoint_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write `obj` with torch.save to a temporary file beside `path`, fsync, then rename.

    A crash at any point leaves either the previous file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_npy_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``np.save`` a (pickled) object to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, obj, allow_pickle=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
