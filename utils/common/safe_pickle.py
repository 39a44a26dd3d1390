"""Pickled numpy files are data, never code (docs/file-formats.md §6).

The training-pair file (a download), D2Net's ``scene_info/*.npz`` and ``ov_pairs.npy`` are
numpy files whose object arrays hold pickles. ``np.load(..., allow_pickle=True)`` would run
whatever such a pickle calls. The loaders here parse the ``.npy`` header with
``numpy.lib.format`` and unpickle object arrays with an unpickler that resolves only the
globals these formats need:

- numpy's array / scalar / dtype reconstruction (``_reconstruct``, ``ndarray``, ``dtype``,
  ``scalar``, ``_frombuffer``; numpy 1.x spells the modules ``numpy.core.*``, 2.x
  ``numpy._core.*``) and numpy's dtype classes;
- ``argparse.Namespace`` (the pair file's records);
- ``_codecs.encode``, only as ``(str, 'latin1')`` (how pickle protocol 2 spells bytes).

Dicts, lists, tuples, str, bytes, numbers, booleans and None need no global. Any other
global (``os.system``, ``builtins.eval``, ...) raises :class:`UnsafePickleError` when the
unpickler meets it, i.e. before the payload could be called; the error names the file.
Arrays without objects are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.lib.format as npformat

from utils.common.cli import UsageError

__all__ = [
    "ALLOWED_GLOBALS",
    "NpyFileError",
    "UnsafePickleError",
    "safe_load_npy",
    "safe_load_npz",
    "safe_unpickle",
]


class NpyFileError(UsageError, ValueError):
    """A numpy file that cannot be loaded (missing, not a numpy file, truncated)."""


class UnsafePickleError(NpyFileError):
    """A pickle inside a numpy file refers to something outside the allow-list."""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's reconstruction helpers under both their numpy 1.x and 2.x module names."""
    core = np._core if hasattr(np, "_core") else np.core  # type: ignore[attr-defined]
    multiarray = core.multiarray
    out: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = multiarray._reconstruct
        out[(mod, "scalar")] = multiarray.scalar
    # pickle protocol 5 rebuilds contiguous arrays from their bytes (never object arrays:
    # numpy refuses an object dtype there).
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        out[(mod, "_frombuffer")] = core.numeric._frombuffer
    # numpy >= 1.25 names the dtype classes (numpy.dtypes.Float64DType, ...); pickles of
    # dtypes use `numpy.dtype`, but accept the classes too: they only build dtypes.
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            cls = getattr(dtypes, name)
            if isinstance(cls, type) and issubclass(cls, np.dtype):
                out[("numpy.dtypes", name)] = cls
    return out


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: protocol-2 pickles spell bytes as
    ``_codecs.encode(text, 'latin1')``; nothing but that conversion is accepted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is accepted only as (str, 'latin1')")
    return text.encode("latin1")


#: (module, name) → object: every global a pickle in these formats may refer to.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("argparse", "Namespace"): argparse.Namespace,
    ("_codecs", "encode"): _latin1_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS`; no persistent ids."""

    def __init__(self, fh: IO[bytes], source: str) -> None:
        super().__init__(fh, encoding="ASCII", fix_imports=False)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to load {self.source}: its pickle refers to {module}.{name}, "
                "which is not part of this file format (only dicts, lists, tuples, str, "
                "numbers, None, numpy arrays/scalars/dtypes and argparse.Namespace are "
                "allowed); the file may be crafted to run code"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing to load {self.source}: persistent ids in its pickle")


def safe_unpickle(fh: IO[bytes], source: str) -> Any:
    """Unpickle one object from `fh` through the allow-list; `source` names the file in errors.

    Raises:
        UnsafePickleError: a global outside :data:`ALLOWED_GLOBALS` (nothing of it runs).
        NpyFileError: a corrupt or truncated pickle.
    """
    # BUILD with slot state on the Namespace class itself would set class attributes: the
    # one mutable class of the allow-list is checked and restored after every load.
    before = dict(vars(argparse.Namespace))
    try:
        return _RestrictedUnpickler(fh, source).load()
    except UnsafePickleError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
    ) as e:
        raise NpyFileError(f"cannot read {source}: corrupt pickle ({e})") from None
    finally:
        _restore_class(argparse.Namespace, before, source)


def _restore_class(cls: type, before: dict[str, Any], source: str) -> None:
    """Undo attribute changes a pickle made to `cls`, then refuse the file."""
    now = dict(vars(cls))
    if now.keys() == before.keys() and all(now[k] is before[k] for k in before):
        return
    for k in now.keys() - before.keys():
        delattr(cls, k)
    for k, v in before.items():
        if now.get(k) is not v:
            setattr(cls, k, v)
    raise UnsafePickleError(
        f"refusing to load {source}: its pickle modifies the class {cls.__qualname__}"
    )


def _read_npy_stream(fh: IO[bytes], source: str) -> np.ndarray:
    """Read one ``.npy`` stream positioned at its magic string."""
    start = fh.tell()
    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            _shape, _fortran, dtype = npformat.read_array_header_1_0(fh)
        elif version == (2, 0):
            _shape, _fortran, dtype = npformat.read_array_header_2_0(fh)
        else:  # (3, 0): utf-8 header; numpy has no public reader for it
            _shape, _fortran, dtype = npformat._read_array_header(fh, version)  # type: ignore
    except (ValueError, EOFError, SyntaxError) as e:
        raise NpyFileError(f"cannot read {source}: not a valid .npy file ({e})") from None
    if not dtype.hasobject:
        fh.seek(start)
        try:
            return npformat.read_array(fh, allow_pickle=False)
        except (ValueError, EOFError, OSError) as e:
            raise NpyFileError(f"cannot read {source}: {e}") from None
    arr = safe_unpickle(fh, source)
    if not isinstance(arr, np.ndarray):
        raise NpyFileError(f"cannot read {source}: its pickle does not hold a numpy array")
    return arr


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise NpyFileError(f"file not found: {p}")
    return p


def safe_load_npy(path: str | os.PathLike) -> Any:
    """Load a ``.npy`` file without running code from it.

    Returns:
        For a pickled object saved with ``np.save(path, obj)`` (a 0-d object array), the
        object itself (e.g. the pair file's dict); otherwise the array, as ``np.load``
        returns it (object arrays included).
    Raises:
        UnsafePickleError: naming the file, when its pickle refers to anything outside the
            allow-list (nothing of the payload runs).
        NpyFileError: naming the file, when it is missing or not a readable ``.npy``.
    """
    p = _check_file(path)
    with open(p, "rb") as fh:
        head = fh.read(6)
        fh.seek(0)
        if head == npformat.MAGIC_PREFIX:
            arr = _read_npy_stream(fh, str(p))
        elif head.startswith(b"PK\x03\x04"):
            raise NpyFileError(f"cannot read {p}: it is an .npz archive, expected a .npy file")
        elif head[:1] == b"\x80":  # a bare pickle (np.load accepts those too)
            arr = safe_unpickle(fh, str(p))
            return arr
        else:
            raise NpyFileError(f"cannot read {p}: not a numpy .npy file")
    if arr.dtype == object and arr.shape == ():
        return arr.item()
    return arr


def safe_load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` archive without running code from it.

    Returns:
        {name: array} (object arrays, e.g. D2Net's ``image_paths`` with None entries,
        are returned as arrays, unchanged).
    Raises:
        UnsafePickleError / NpyFileError naming the file (and the member).
    """
    p = _check_file(path)
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise NpyFileError(f"cannot read {p}: not an .npz archive ({e})") from None
    out: dict[str, np.ndarray] = {}
    with zf:
        for member in zf.namelist():
            key = member[:-4] if member.endswith(".npy") else member
            source = f"{p} (member {member})"
            try:
                data = zf.read(member)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise NpyFileError(f"cannot read {source}: {e}") from None
            out[key] = _read_npy_stream(io.BytesIO(data), source)
    return out
