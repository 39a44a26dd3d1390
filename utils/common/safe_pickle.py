"""Pickled numpy files are data, never code (docs/file-formats.md §6).

The training-pair file (a download), D2Net's ``scene_info/*.npz``, ``ov_pairs.npy`` and
LoFTR's MegaDepth-1500 scene-info files (plain pickles named ``.npz``, docs/file-formats.md §7)
hold pickles. ``np.load(..., allow_pickle=True)`` would run whatever such a pickle calls.
The loaders here parse the ``.npy`` header with ``numpy.lib.format`` and unpickle with
:class:`RestrictedUnpickler`, a subclass of Python's own (pure-Python) unpickler in which

- globals resolve only through an allow-list, to *checking* stand-ins, never to numpy's
  raw constructors: ``numpy.dtype`` accepts only plain dtype codes (bool, ints, floats,
  complex, ``O8``, ``U<n>``, ``S<n>``; no structured, subarray or datetime dtype) and is
  always a fresh copy; ``_reconstruct`` only the empty placeholder numpy itself writes;
  ``_frombuffer`` and ``scalar`` only a canonical non-object dtype with exactly the bytes
  its shape asks for; ``argparse.Namespace``; ``_codecs.encode`` only as
  ``(str, 'latin1')`` (how protocol 2 spells bytes);
- BUILD (``__setstate__``) is accepted only on a dtype (the state must equal the one numpy
  writes for that dtype, flags included), on an array (canonical dtype; an object array
  from a list of exactly ``prod(shape)`` items, any other array from exactly
  ``prod(shape) × itemsize`` bytes; never object data from raw bytes) and on a Namespace
  instance (a dict of str keys; the class itself cannot be modified);
- ``bytes`` only as ``bytes()`` (protocol 2's empty bytes);
- NEWOBJ / INST / OBJ make only ``argparse.Namespace()``; persistent ids and out-of-band
  buffers are refused;
- every dtype reaching an array or a scalar is checked again to be canonical, so no
  constructor reachable from a pickle makes an array whose dtype says less than it holds.

Memory budget: a file may make the process allocate at most about its own size (a memo
index beyond the stream's length is refused; an array's bytes or items must be present in
the stream; a ``.npy`` header's shape × itemsize must fit in the bytes that follow it) and
never more than :data:`MAX_LOAD_BYTES` (also the bound on the declared, decompressed size of
the members of an ``.npz`` archive). Every check runs before the allocation it guards.
Refusals are one line that names the file (:class:`UnsafePickleError`,
:class:`NpyFileError`, both ``UsageError``).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.lib.format as npformat

from utils.common.cli import UsageError

__all__ = [
    "ALLOWED_GLOBALS",
    "MAX_LOAD_BYTES",
    "NpyFileError",
    "Refused",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "canonical_dtype",
    "safe_load_npy",
    "safe_load_npz",
    "safe_load_pickle_or_npz",
    "run_unpickler",
    "safe_unpickle",
]

#: The most bytes one file may make a loader allocate (decompressed npz members, a pickle).
MAX_LOAD_BYTES = 2 * 1024**3
# dtype codes a pickle may name (numpy's own spelling in dtype pickles); U / S take a size
_PLAIN_CODES = frozenset(
    ["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16", "O8"]
)
_MAX_NDIM = 32


class NpyFileError(UsageError, ValueError):
    """A numpy file that cannot be loaded (missing, not a numpy file, truncated, too big)."""


class UnsafePickleError(NpyFileError):
    """A pickle inside a numpy file refers to, or builds, something outside the allow-list."""


class Refused(Exception):
    """Raised inside the unpickler (what the pickle builds); :func:`run_unpickler` turns it
    into an UnsafePickleError naming the file."""


def _dtype_from_code(code: Any) -> np.dtype:
    """A fresh dtype from a code numpy writes in dtype pickles ('f8', 'O8', 'U12', ...)."""
    if not isinstance(code, str):
        raise Refused(f"a dtype from {type(code).__name__} (only dtype codes are allowed)")
    ok = code in _PLAIN_CODES
    if not ok and code[:1] in ("U", "S") and code[1:].isdigit():
        ok = 1 <= int(code[1:]) <= 1 << 24
    if not ok:
        raise Refused(
            f"the dtype {code!r} (only bool, integer, float, complex, object, str and bytes "
            "dtypes are part of these formats)"
        )
    return np.dtype(code)


def _code_of(dt: np.dtype) -> str:
    """The code numpy writes for `dt` in its pickle (``dtype.__reduce__``)."""
    return dt.__reduce__()[1][0]


def canonical_dtype(dt: Any) -> np.dtype:
    """`dt` itself when it is a dtype numpy could have built from an allowed code and byte
    order (flags, sizes and fields exactly as numpy sets them); refuses anything else.

    Raises:
        Refused: a non-dtype, a structured / subarray / datetime dtype, or a dtype whose
            state was rewritten (e.g. an object dtype whose flags no longer say so).
    """
    if type(dt) is not np.dtype and not isinstance(dt, np.dtype):
        raise Refused(f"a {type(dt).__name__} where a dtype belongs")
    red = dt.__reduce__()
    ref = _dtype_from_code(red[1][0])
    if dt.byteorder in ("<", ">") and ref.byteorder != "|":
        ref = ref.newbyteorder(dt.byteorder)
    if red[2] != ref.__reduce__()[2] or dt != ref or dt.flags != ref.flags:
        raise Refused(f"a dtype whose state is not numpy's own ({red[2]!r})")
    return dt


def _check_shape(shape: Any) -> int:
    """Number of elements of a pickled shape (tuple of non-negative ints)."""
    if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM:
        raise Refused(f"an array shape {shape!r}")
    if not all(type(s) is int and s >= 0 for s in shape):
        raise Refused(f"an array shape {shape!r}")
    return math.prod(shape)


class _NdarrayToken:
    """What the global ``numpy.ndarray`` resolves to: usable only as ``_reconstruct``'s
    first argument (never callable, so no array of an arbitrary shape can be made)."""

    def __repr__(self) -> str:
        return "<numpy.ndarray (placeholder)>"


_NDARRAY = _NdarrayToken()


def _multiarray() -> Any:
    core = np._core if hasattr(np, "_core") else np.core  # type: ignore[attr-defined]
    return core.multiarray


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """``_reconstruct(ndarray, (0,), b'b')`` only: the empty array a BUILD then fills."""
    if subtype is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise Refused(f"_reconstruct{(subtype, shape, typecode)!r} (numpy writes (0,), b'b')")
    return _multiarray()._reconstruct(np.ndarray, (0,), b"b")


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Protocol 5's in-band array: exactly prod(shape) × itemsize bytes, never objects."""
    dt = canonical_dtype(dtype)
    if dt.hasobject or dt.kind == "O":
        raise Refused("an object array from raw bytes")
    n = _check_shape(shape)
    if not isinstance(buf, (bytes, bytearray)) or len(buf) != n * dt.itemsize:
        raise Refused(f"array data that does not match its shape {shape!r} and dtype {dt}")
    if order not in ("C", "F"):
        raise Refused(f"array order {order!r}")
    return np.frombuffer(buf, dtype=dt).reshape(shape, order=order)


def _scalar(dtype: Any, data: Any = None) -> Any:
    """A numpy scalar: a canonical non-object dtype and exactly itemsize bytes."""
    dt = canonical_dtype(dtype)
    if dt.hasobject or dt.kind == "O":
        raise Refused("an object scalar")
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise Refused(f"a {dt} scalar from {len(data) if isinstance(data, bytes) else '?'} bytes")
    return _multiarray().scalar(dt, data)


def _dtype(obj: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype(code, align, copy)`` as numpy writes it: always a fresh copy."""
    if align not in (False, 0):
        raise Refused("an aligned (structured) dtype")
    _dtype_from_code(obj)  # refuses anything but an allowed code
    return np.dtype(obj, False, True)  # copy=True: BUILD never touches numpy's singletons


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: protocol-2 pickles spell bytes as
    ``_codecs.encode(text, 'latin1')``; nothing but that conversion is accepted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused("_codecs.encode other than (str, 'latin1')")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's reconstruction helpers (numpy 1.x and 2.x module names) → checking stand-ins."""
    out: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _dtype,
    }
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        out[(f"{core}.multiarray", "scalar")] = _scalar
        out[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return out


def _empty_bytes(*args: Any) -> bytes:
    """Stand-in for ``bytes``: protocols 0-2 spell ``b''`` as ``bytes()``; nothing else."""
    if args:
        raise Refused("bytes() with arguments")
    return b""


#: (module, name) → stand-in: every global a pickle in these formats may refer to.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("argparse", "Namespace"): argparse.Namespace,
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


def _build_array(inst: np.ndarray, state: Any) -> None:
    """ndarray.__setstate__ after checking the state as numpy writes it:
    (1, shape, dtype, is_fortran, list of items | bytes)."""
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
        raise Refused("an array state numpy does not write")
    _, shape, dtype, fortran, data = state
    n = _check_shape(shape)
    dt = canonical_dtype(dtype)
    if not isinstance(fortran, bool):
        raise Refused("an array state numpy does not write")
    if dt.hasobject:
        if not isinstance(data, list) or len(data) != n:
            raise Refused(f"an object array of shape {shape!r} from {type(data).__name__}")
    elif not isinstance(data, (bytes, bytearray)) or len(data) != n * dt.itemsize:
        raise Refused(f"array data that does not match its shape {shape!r} and dtype {dt}")
    inst.__setstate__(state)


def _build_dtype(inst: np.dtype, state: Any) -> None:
    """dtype.__setstate__ only with the state numpy writes for that dtype (flags included)."""
    code = _code_of(inst)
    if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
        raise Refused("a dtype state numpy does not write")
    ref = _dtype_from_code(code)
    if ref.byteorder != "|" and state[1] in ("<", ">"):
        ref = ref.newbyteorder(state[1])
    if state != ref.__reduce__()[2]:
        raise Refused(f"a dtype state numpy does not write ({state!r} for {code})")
    inst.__setstate__(state)


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Python's unpickler with an allow-list of globals, checked BUILD / NEWOBJ and a memo
    bound (module docstring). Subclasses widen it through :attr:`allowed` and
    :meth:`build`; `data` is the whole stream (its length bounds memo indices)."""

    allowed: dict[tuple[str, str], Any] = ALLOWED_GLOBALS
    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, data: bytes, source: str, offset: int = 0) -> None:
        self.stream = io.BytesIO(data)
        self.stream.seek(offset)
        super().__init__(self.stream, encoding="ASCII", fix_imports=False)
        self.source = source
        self.max_memo = len(data)

    def find_class(self, module: str, name: str) -> Any:
        obj = self.allowed.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to load {self.source}: its pickle refers to {module}.{name}, "
                "which is not part of this file format (only dicts, lists, tuples, str, "
                "numbers, None, numpy arrays/scalars/dtypes and argparse.Namespace are "
                "allowed); the file may be crafted to run code"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("persistent ids")

    # --- opcodes that call or mutate objects -------------------------------------------
    def build(self, inst: Any, state: Any) -> None:
        """Apply BUILD's `state` to `inst` (only the types of the module docstring)."""
        if type(inst) is np.ndarray:
            _build_array(inst, state)
        elif isinstance(inst, np.dtype):
            _build_dtype(inst, state)
        elif type(inst) is argparse.Namespace:
            if not isinstance(state, dict) or not all(type(k) is str for k in state):
                raise Refused("a Namespace state that is not a dict of str keys")
            vars(inst).update(state)
        else:
            raise Refused(f"a state set on {type(inst).__name__} (BUILD)")

    def load_build(self) -> None:
        state = self.stack.pop()
        self.build(self.stack[-1], state)

    dispatch[pickle.BUILD[0]] = load_build

    def new_object(self, cls: Any, args: Any, kwargs: Any) -> Any:
        """NEWOBJ / NEWOBJ_EX / INST / OBJ: only an empty ``argparse.Namespace()``."""
        if cls is argparse.Namespace and not args and not kwargs:
            return argparse.Namespace()
        raise Refused(f"a new {getattr(cls, '__name__', type(cls).__name__)} object")

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self.new_object(cls, args, None))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self.new_object(cls, args, kwargs))

    def load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        cls = self.find_class(module, name)
        self.append(self.new_object(cls, self.pop_mark(), None))

    def load_obj(self) -> None:
        args = self.pop_mark()
        cls = args.pop(0)
        self.append(self.new_object(cls, args, None))

    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.INST[0]] = load_inst
    dispatch[pickle.OBJ[0]] = load_obj

    # --- the memo: indices bounded by the stream's length --------------------------------
    def _memo_put(self, i: int) -> None:
        if not 0 <= i < self.max_memo:
            raise Refused(f"a memo index {i} beyond the pickle's {self.max_memo} bytes")
        self.memo[i] = self.stack[-1]

    def load_put(self) -> None:
        self._memo_put(int(self.readline()[:-1]))

    def load_binput(self) -> None:
        self._memo_put(self.read(1)[0])

    def load_long_binput(self) -> None:
        self._memo_put(int.from_bytes(self.read(4), "little"))

    def load_memoize(self) -> None:
        self._memo_put(len(self.memo))

    dispatch[pickle.PUT[0]] = load_put
    dispatch[pickle.BINPUT[0]] = load_binput
    dispatch[pickle.LONG_BINPUT[0]] = load_long_binput
    dispatch[pickle.MEMOIZE[0]] = load_memoize


_READ_ERRORS = (
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
    RecursionError,
    struct.error,
    Refused,
)


def run_unpickler(unpickler: RestrictedUnpickler) -> Any:
    """``unpickler.load()``; every failure is one line naming ``unpickler.source``.

    Raises:
        UnsafePickleError: a global or a construction outside the allow-list (nothing of it
            runs).
        NpyFileError: a corrupt or truncated pickle.
    """
    source = unpickler.source
    try:
        return unpickler.load()
    except UsageError:
        raise
    except Refused as e:
        raise UnsafePickleError(
            f"refusing to load {source}: its pickle builds {e}; the file may be crafted"
        ) from None
    except _READ_ERRORS as e:
        why = " ".join(str(e).split()) or type(e).__name__
        raise NpyFileError(f"cannot read {source}: corrupt pickle ({why})") from None


def safe_unpickle(fh: IO[bytes] | bytes, source: str) -> Any:
    """Unpickle one object from `fh` (a stream, read to its end, or bytes) through the
    allow-list; `source` names the file in errors (see :func:`run_unpickler`)."""
    data = fh if isinstance(fh, (bytes, bytearray)) else fh.read(MAX_LOAD_BYTES + 1)
    if len(data) > MAX_LOAD_BYTES:
        raise NpyFileError(f"cannot read {source}: larger than {MAX_LOAD_BYTES} bytes")
    return run_unpickler(RestrictedUnpickler(bytes(data), source))


def _read_npy_stream(fh: IO[bytes], source: str, size: int) -> np.ndarray:
    """Read one ``.npy`` stream of `size` bytes positioned at its magic string."""
    start = fh.tell()
    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fh)
        else:  # (3, 0): utf-8 header; numpy has no public reader for it
            shape, fortran, dtype = npformat._read_array_header(fh, version)  # type: ignore
    except (ValueError, EOFError, SyntaxError, TypeError, OverflowError, MemoryError) as e:
        why = " ".join(str(e).split())
        raise NpyFileError(f"cannot read {source}: not a valid .npy file ({why})") from None
    left = size - (fh.tell() - start)
    if not dtype.hasobject:
        need = math.prod(shape) * dtype.itemsize
        if need != left:
            raise NpyFileError(
                f"cannot read {source}: its header claims {need} bytes of data "
                f"({shape} × {dtype}) but {left} follow"
            )
        fh.seek(start)
        try:
            return npformat.read_array(fh, allow_pickle=False)
        except (ValueError, EOFError, OSError, MemoryError) as e:
            raise NpyFileError(f"cannot read {source}: {e}") from None
    arr = safe_unpickle(fh, source)
    if not isinstance(arr, np.ndarray):
        raise NpyFileError(f"cannot read {source}: its pickle does not hold a numpy array")
    return arr


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise NpyFileError(f"file not found: {p}")
    size = p.stat().st_size
    if size > MAX_LOAD_BYTES:
        raise NpyFileError(f"cannot read {p}: {size} bytes, more than {MAX_LOAD_BYTES}")
    return p


def safe_load_npy(path: str | os.PathLike) -> Any:
    """Load a ``.npy`` file (or a bare pickle, as ``np.load`` accepts) without running code.

    Returns:
        For a pickled object saved with ``np.save(path, obj)`` (a 0-d object array) or a bare
        pickle, the object itself (e.g. the pair file's dict); otherwise the array, as
        ``np.load`` returns it (object arrays included).
    Raises:
        UnsafePickleError: naming the file, when its pickle refers to or builds anything
            outside the allow-list (nothing of the payload runs).
        NpyFileError: naming the file, when it is missing, not a readable ``.npy`` or asks
            for more memory than it holds.
    """
    p = _check_file(path)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(6)
        fh.seek(0)
        if head == npformat.MAGIC_PREFIX:
            arr = _read_npy_stream(fh, str(p), size)
        elif head.startswith(b"PK\x03\x04"):
            raise NpyFileError(f"cannot read {p}: it is an .npz archive, expected a .npy file")
        elif head[:1] == b"\x80":  # a bare pickle (np.load accepts those too)
            return safe_unpickle(fh, str(p))
        else:
            raise NpyFileError(f"cannot read {p}: not a numpy .npy file")
    if arr.dtype == object and arr.shape == ():
        return arr.item()
    return arr


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> bytes:
    """A member's bytes, never more than its declared size (a lying header ends in an
    error, not in an allocation)."""
    with zf.open(info) as fh:
        data = fh.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise NpyFileError(f"cannot read {source}: its size is not the declared one")
    return data


def safe_load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` archive without running code from it.

    The members' declared sizes together may not exceed :data:`MAX_LOAD_BYTES` (checked
    before anything is decompressed: a zip bomb is one line, not gigabytes).

    Returns:
        {name: array} (object arrays, e.g. D2Net's ``image_paths`` with None entries,
        are returned as arrays, unchanged).
    Raises:
        UnsafePickleError / NpyFileError naming the file (and the member).
    """
    p = _check_file(path)
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise NpyFileError(f"cannot read {p}: not an .npz archive ({e})") from None
    out: dict[str, np.ndarray] = {}
    with zf:
        infos = zf.infolist()
        total = sum(i.file_size for i in infos)
        if total > MAX_LOAD_BYTES:
            raise NpyFileError(
                f"cannot read {p}: its members inflate to {total} bytes, more than "
                f"{MAX_LOAD_BYTES} (a zip bomb?)"
            )
        for info in infos:
            member = info.filename
            key = member[:-4] if member.endswith(".npy") else member
            source = f"{p} (member {member})"
            try:
                data = _read_member(zf, info, source)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
                raise NpyFileError(f"cannot read {source}: {e}") from None
            out[key] = _read_npy_stream(io.BytesIO(data), source, len(data))
    return out


def safe_load_pickle_or_npz(path: str | os.PathLike) -> Any:
    """An ``.npz`` zip archive ({name: array}) or, for a file that is a plain pickle (as
    LoFTR's MegaDepth-1500 scene-info files are, docs/file-formats.md §7), the unpickled object
    (a ``.npy`` file: as :func:`safe_load_npy`); all through the restricted unpickler.

    Raises:
        UnsafePickleError / NpyFileError naming the file.
    """
    p = _check_file(path)
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK\x03\x04"):
        return safe_load_npz(p)
    return safe_load_npy(p)  # a bare pickle (or a .npy file)
