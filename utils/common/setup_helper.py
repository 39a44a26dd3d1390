"""Set-up helpers: seeding, safe checkpoint loading and atomic file writing."""

from __future__ import annotations

import argparse
import os
import pickle
import random
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from utils.common.cli import UsageError

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


class CheckpointError(UsageError, RuntimeError):
    """A checkpoint file that cannot be used (missing, unreadable, unsafe, wrong content).

    A UsageError: every command reports it as one ``<prog>: error: ...`` line, exit code 2.
    """


# torch.save's legacy (non-zip) format starts with this number, pickled.
_TORCH_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_KNOWN_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"\x93NUMPY", "a numpy .npy file"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
)


def describe_non_checkpoint(path: str | os.PathLike) -> str | None:
    """None when `path` has the layout of a ``torch.save`` file (a zip archive with a
    ``data.pkl`` record, or the legacy pickle starting with torch's magic number); otherwise
    what the file looks like instead (e.g. 'a JPEG image', 'a text file')."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None  # a truncated torch file: torch.load reports it as damaged
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return None
        if names and all(n.endswith(".npy") for n in names):
            return "a numpy .npz archive"
        return "a zip archive without torch's data.pkl"
    if (
        len(head) >= 14
        and head[0] == 0x80
        and head[2:4] == b"\x8a\x0a"
        and head[4:14] == _TORCH_LEGACY_MAGIC
    ):
        return None
    for sig, what in _KNOWN_SIGNATURES:
        if head.startswith(sig):
            return what
    if head[:1] == b"\x80":
        return "a Python pickle that torch.save did not write"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "binary data of an unknown kind"


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
        CheckpointError: naming the file, when it is missing, not a PyTorch checkpoint (the
            message says what it looks like instead, e.g. a JPEG image or a text file),
            damaged, or holds a type outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        what = describe_non_checkpoint(path)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if what is not None:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it is {what})")
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
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} (damaged or truncated?): {why}"
        ) from None


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write a file so that readers and crashes see either the old or the complete new one.

    `write` fills a new temporary file beside `path` (same directory, so same file system;
    created with the usual permissions, 0666 minus the umask), which is then flushed and
    fsynced, renamed over `path` (``os.replace``) and the directory entry fsynced. On any
    failure the temporary file is removed and `path` is left as it was. The project's one
    atomic writer: checkpoints, .npy files and JSON / text files all go through it.

    Returns:
        `path` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def save_checkpoint_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` `obj` to `path` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def save_npy_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``np.save`` a (pickled) object to `path` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda f: np.save(f, obj, allow_pickle=True))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))
