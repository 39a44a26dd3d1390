"""Set-up helpers: seeding, safe checkpoint loading and atomic file writing."""

from __future__ import annotations

import argparse
import os
import pickle
import random
import re
import secrets
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from utils.common.cli import UsageError
from utils.common.safe_pickle import (
    ALLOWED_GLOBALS,
    MAX_LOAD_BYTES,
    NpyFileError,
    Refused,
    RestrictedUnpickler,
    UnsafePickleError,
    run_unpickler,
)

# What torch.load(weights_only=True) resolves on top of torch's own tensor machinery. torch's
# default list is wider (set, Counter, torch.Size, ...): the dry run below (_CheckpointScan)
# is what enforces the exact list, before torch.load runs.
_NUMPY_SCALAR = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
CHECKPOINT_ALLOWED_GLOBALS: list[Any] = [
    argparse.Namespace,
    np.dtype,
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
    *(getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "BoolDType")),
]
_STORAGE_ITEMSIZE = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
}


class _StorageType:
    """What ``torch.<X>Storage`` resolves to in the dry run: its element size."""

    def __init__(self, name: str) -> None:
        self.name, self.itemsize = name, _STORAGE_ITEMSIZE[name]


class _StorageSpec:
    """A storage of the checkpoint (dry run): element type and count, checked against the
    bytes the file holds for it."""

    def __init__(self, kind: _StorageType, numel: int) -> None:
        self.kind, self.numel = kind, numel


class _TensorSpec:
    """A tensor of the checkpoint (dry run): its shape only."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


def _ints(x: Any, what: str) -> tuple[int, ...]:
    if not isinstance(x, tuple) or len(x) > 16 or not all(type(v) is int and v >= 0 for v in x):
        raise Refused(f"a tensor {what} {x!r}")
    return x


def _rebuild_tensor_check(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    metadata: Any = None,
) -> _TensorSpec:
    """``torch._utils._rebuild_tensor_v2`` in the dry run: the view must lie inside its
    storage (no tensor larger than the bytes behind it)."""
    if not isinstance(storage, _StorageSpec) or type(offset) is not int or offset < 0:
        raise Refused("a tensor without a storage of the file")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or not isinstance(requires_grad, bool):
        raise Refused("a tensor whose size and stride disagree")
    if hooks is not None and (not isinstance(hooks, OrderedDict) or hooks):
        raise Refused("a tensor with backward hooks")
    if metadata is not None and not isinstance(metadata, dict):
        raise Refused("a tensor with metadata")
    if all(size):
        extent = offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
        if extent > storage.numel:
            raise Refused(f"a tensor of size {size} beyond its storage of {storage.numel}")
    return _TensorSpec(size)


def _counter(mapping: Any = None) -> Counter:
    """``collections.Counter`` as MultiStepLR's ``milestones`` (int → int) only."""
    if not isinstance(mapping, dict) or not all(
        type(k) is int and type(v) is int for k, v in mapping.items()
    ):
        raise Refused("a Counter other than MultiStepLR's milestones (int → int)")
    return Counter(mapping)


class _CheckpointScan(RestrictedUnpickler):
    """Dry run of a checkpoint's pickle: exactly the globals of docs/file-formats.md §5 (dicts,
    lists, tuples, numbers, str, None, OrderedDict, argparse.Namespace, numpy scalars and
    dtypes, MultiStepLR's Counter, tensors of the storage types above), every dtype state
    as numpy writes it, every tensor inside the bytes of its storage."""

    allowed = {
        ("argparse", "Namespace"): argparse.Namespace,
        ("_codecs", "encode"): ALLOWED_GLOBALS[("_codecs", "encode")],
        ("numpy", "dtype"): ALLOWED_GLOBALS[("numpy", "dtype")],
        ("numpy.core.multiarray", "scalar"): ALLOWED_GLOBALS[("numpy._core.multiarray", "scalar")],
        ("numpy._core.multiarray", "scalar"): ALLOWED_GLOBALS[("numpy._core.multiarray", "scalar")],
        ("collections", "OrderedDict"): OrderedDict,
        ("collections", "Counter"): _counter,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_check,
        **{("torch", n): _StorageType(n) for n in _STORAGE_ITEMSIZE},
    }
    dispatch = dict(RestrictedUnpickler.dispatch)

    def __init__(
        self, data: bytes, source: str, sizes: Callable[[str], int | None], offset: int = 0
    ) -> None:
        super().__init__(data, source, offset)
        self.sizes = sizes  # storage key → bytes the file holds for it (None: absent)
        self.storages: dict[str, _StorageSpec] = {}

    def build(self, inst: Any, state: Any) -> None:
        if type(inst) is OrderedDict:  # Module.state_dict()'s _metadata attribute
            if not isinstance(state, dict) or not all(type(k) is str for k in state):
                raise Refused("an OrderedDict state that is not a dict of str keys")
            vars(inst).update(state)
        else:
            super().build(inst, state)

    def persistent_load(self, pid: Any) -> _StorageSpec:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise Refused(f"a persistent id {pid!r:.80}")
        kind, key, _location, numel = pid[1:5]
        if not isinstance(kind, _StorageType) or not isinstance(key, str):
            raise Refused(f"a storage of type {kind!r:.60}")
        if type(numel) is not int or numel < 0:
            raise Refused(f"a storage of {numel!r:.40} elements")
        if key in self.storages:
            return self.storages[key]
        have = self.sizes(key)
        if have is None or have != numel * kind.itemsize:
            raise Refused(
                f"a storage {key} of {numel} × {kind.itemsize} bytes that the file does not "
                f"hold ({have} bytes)"
            )
        self.storages[key] = _StorageSpec(kind, numel)
        return self.storages[key]


def _scan_zip_checkpoint(path: Path) -> None:
    """Dry-run the ``data.pkl`` of a zip checkpoint (sizes from the archive's records)."""
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkl = next(n for n in infos if n == "data.pkl" or n.endswith("/data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        info = infos[pkl]
        if info.file_size > MAX_LOAD_BYTES:
            raise CheckpointError(f"refusing to load {path}: its data.pkl is {info.file_size} B")
        with zf.open(info) as fh:
            data = fh.read(info.file_size + 1)

        def sizes(key: str) -> int | None:
            rec = infos.get(f"{prefix}data/{key}")
            return None if rec is None else rec.file_size

        total = sum(i.file_size for i in infos.values())
        if total > MAX_LOAD_BYTES:
            raise CheckpointError(f"refusing to load {path}: its records hold {total} bytes")
        run_unpickler(_CheckpointScan(data, str(path), sizes))


def _scan_legacy_checkpoint(path: Path) -> None:
    """Dry-run the pickles of a legacy (non-zip) checkpoint: magic, protocol, system info,
    the object, the storage keys; the raw storages after them must hold exactly what the
    object's storages claim."""
    data = path.read_bytes()
    declared: dict[str, int] = {}

    def sizes(key: str) -> int:
        return declared.setdefault(key, -1)  # the sizes are checked after the keys are read

    pos = 0
    for _ in range(3):
        scan = RestrictedUnpickler(data, str(path), pos)
        run_unpickler(scan)
        pos = scan.stream.tell()
    obj_scan = _LegacyScan(data, str(path), sizes, pos)
    run_unpickler(obj_scan)
    pos = obj_scan.stream.tell()
    keys_scan = RestrictedUnpickler(data, str(path), pos)
    keys = run_unpickler(keys_scan)
    pos = keys_scan.stream.tell()
    need = sum(8 + s.numel * s.kind.itemsize for s in obj_scan.storages.values())
    if not isinstance(keys, list) or set(keys) != set(obj_scan.storages) or need != len(data) - pos:
        raise CheckpointError(
            f"cannot read checkpoint {path} (damaged or truncated?): its storages do not "
            "match the bytes that follow"
        )


class _LegacyScan(_CheckpointScan):
    """The legacy format's object pickle: storage sizes are checked after the whole file is
    read (the raw storages follow the pickles), so any declared size is accepted here."""

    def persistent_load(self, pid: Any) -> _StorageSpec:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise Refused(f"a persistent id {pid!r:.80}")
        kind, key, _location, numel = pid[1:5]
        if not isinstance(kind, _StorageType) or not isinstance(key, str):
            raise Refused(f"a storage of type {kind!r:.60}")
        if type(numel) is not int or numel < 0 or numel * kind.itemsize > self.max_memo:
            raise Refused(f"a storage of {numel!r:.40} elements")
        return self.storages.setdefault(key, _StorageSpec(kind, numel))


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
        if path.stat().st_size > MAX_LOAD_BYTES:
            raise CheckpointError(f"refusing to load {path}: larger than {MAX_LOAD_BYTES} bytes")
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if is_zip:
            _scan_zip_checkpoint(path)
        else:
            _scan_legacy_checkpoint(path)
    except UnsafePickleError as e:
        why = str(e).replace(f"refusing to load {path}: ", "")
        raise CheckpointError(
            f"refusing to load {path}: it is outside the checkpoint format ({why}). Only load "
            "checkpoints from trusted sources."
        ) from None
    except (NpyFileError, zipfile.BadZipFile, OSError, StopIteration) as e:
        why = str(e).replace(f"cannot read {path}: ", "") or type(e).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} (damaged or truncated?): {why}"
        ) from None
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


class WriteError(UsageError, OSError):
    """An output file that could not be written (full disk, no permission, ...): an OSError
    whose message names the file; every command reports it as one line, exit code 2."""


# write_atomic's temporary files: ``.<name>.<pid>.<8 hex digits>.tmp`` beside the target
_TMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def _os_error(e: BaseException) -> OSError | None:
    """`e` itself or the OSError it was raised from / while handling (torch.save turns a
    failed write into RuntimeError('... unexpected pos ...') whose context is the OSError)."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _write_error(path: Path, e: BaseException) -> WriteError | None:
    err = _os_error(e)
    if err is None or isinstance(err, WriteError):
        return None
    why = err.strerror or " ".join(str(err).split()) or type(err).__name__
    out = WriteError(f"cannot write {path}: {why}")
    out.errno = err.errno
    return out


def _write_tmp(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """`write` into a new fsynced temporary file beside `path`; removed on failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise _write_error(path, e) from e  # type: ignore[misc]
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        err = _write_error(path, e)
        if err is not None:
            raise err from e
        raise
    return tmp


def _fsync_dirs(paths: list[Path]) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # POSIX only: make the renames themselves durable
        return
    for folder in dict.fromkeys(p.parent for p in paths):
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write a file so that readers and crashes see either the old or the complete new one.

    `write` fills a new temporary file beside `path` (same directory, so same file system;
    created with the usual permissions, 0666 minus the umask; named
    ``.<name>.<pid>.<random>.tmp``), which is then flushed and fsynced, renamed over `path`
    (``os.replace``) and the directory entry fsynced. On any failure the temporary file is
    removed and `path` is left as it was; a failure to write (full disk, permissions; also
    when torch.save reports it as a RuntimeError) raises :class:`WriteError` naming `path`.
    The project's one atomic writer: checkpoints, .npy files and JSON / text files all go
    through it (a process killed mid-write leaves the temporary file:
    :func:`clean_stale_temporaries` removes it).

    Returns:
        `path` as a Path.
    """
    return write_atomic_set({path: write})[0]


def write_atomic_set(
    writers: Mapping[str | os.PathLike, Callable[[BinaryIO], object]],
) -> list[Path]:
    """Write several files as one set: all of them or none.

    Every file is first written to its temporary (as :func:`write_atomic`); only when all
    are complete are they renamed into place. A failure before the renames removes every
    temporary and leaves the targets as they were; a failure during the renames (rare:
    the data is already on disk) removes the temporaries left and the files of the set
    already renamed, so no partial set stays behind.

    Returns:
        the paths, in the order given.
    Raises:
        WriteError naming the file that could not be written.
    """
    items = [(Path(p), w) for p, w in writers.items()]
    tmps: list[Path] = []
    done: list[Path] = []
    try:
        for path, write in items:
            tmps.append(_write_tmp(path, write))
        for (path, _), tmp in zip(items, tmps, strict=True):
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise _write_error(path, e) from e  # type: ignore[misc]
            done.append(path)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        if len(items) > 1:
            for path in done:
                path.unlink(missing_ok=True)
        raise
    _fsync_dirs([p for p, _ in items])
    return [p for p, _ in items]


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that :func:`write_atomic` left in `folder` (not recursive)
    when its process was killed mid-write (SIGKILL, power loss); those of a process that
    is still running are kept.

    Returns:
        the removed paths.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TMP_RE.match(p.name)
        if m is None or not p.is_file():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def save_checkpoint_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` `obj` to `path` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def save_npy_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``np.save`` a (pickled) object to `path` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda f: np.save(f, obj, allow_pickle=True))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))
