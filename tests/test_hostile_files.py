"""Crafted files (issue 16.1): no crash, no memory bomb, one line, exit code 2.

Every attack is a file built here from pickle opcodes (or a patched zip / .npy header). Each
is loaded in a child process, through the loaders' one-line error path (``run_command``);
the child must exit with 2, print exactly one ``<prog>: error:`` line naming the file, and
stay under a stated memory ceiling (its peak RSS, read with ``os.wait4``). Before the fix
these files crashed the process (SIGSEGV, exit 139) or made it allocate gigabytes.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from argparse import Namespace
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.common.safe_pickle import NpyFileError, safe_load_npy
from utils.common.setup_helper import CheckpointError, load_checkpoint_safe

ROOT = Path(__file__).resolve().parents[1]
# Peak RSS a refusal may reach: numpy-only loaders, and the checkpoint loaders (torch).
NUMPY_CEILING_MB = 200
TORCH_CEILING_MB = 1200
MC = "numpy._core.multiarray"

# --------------------------------------------------------------------- pickle opcodes


def g(module: str, name: str) -> bytes:
    """GLOBAL module.name"""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def u(text: str) -> bytes:
    """BINUNICODE"""
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def i(n: int) -> bytes:
    """BININT, or LONG1 beyond 32 bits"""
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def by(data: bytes) -> bytes:
    """BINBYTES"""
    return b"B" + struct.pack("<I", len(data)) + data


def tup(*items: bytes) -> bytes:
    """MARK items TUPLE"""
    return b"(" + b"".join(items) + b"t"


N, FALSE, TRUE = b"N", b"\x89", b"\x88"


def dtype(code: str, state: bytes) -> bytes:
    """numpy.dtype(code, False, True) with BUILD(state)"""
    return g("numpy", "dtype") + tup(u(code), FALSE, TRUE) + b"R" + state + b"b"


def dstate(order: str, flags: int, sub: bytes = N, elsize: int = -1, align: int = -1) -> bytes:
    return tup(i(3), u(order), sub, N, N, i(elsize), i(align), i(flags))


OBJ_AS_PLAIN = dtype("O8", dstate("|", 0))  # an object dtype whose flags say "no objects"
OBJ_DTYPE = dtype("O8", dstate("|", 63))
F8 = dtype("f8", dstate("<", 0))
HUGE_SUBARRAY = dtype("V8", dstate("|", 0, tup(F8, tup(i(10**9))), 8 * 10**9, 8))
EMPTY = g(MC, "_reconstruct") + tup(g("numpy", "ndarray"), tup(i(0)), by(b"b")) + b"R"


def pkl(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


ATTACKS: dict[str, bytes] = {
    # _frombuffer turns 8 chosen bytes into an object pointer (SIGSEGV on use)
    "fake_object_frombuffer": pkl(
        g("numpy._core.numeric", "_frombuffer")
        + tup(by(b"A" * 8), OBJ_AS_PLAIN, tup(i(1)), u("C"))
        + b"R"
    ),
    # the same through ndarray.__setstate__ with raw bytes
    "fake_object_setstate": pkl(
        EMPTY + tup(i(1), tup(i(1)), OBJ_AS_PLAIN, FALSE, by(b"A" * 8)) + b"b"
    ),
    # an object scalar from raw bytes
    "fake_object_scalar": pkl(g(MC, "scalar") + tup(OBJ_AS_PLAIN, by(b"A" * 8)) + b"R"),
    # LONG_BINPUT at index 1.34e8 (C unpickler: a 2 GB memo table)
    "memo_index": pkl(N + b"r" + struct.pack("<I", 134_000_000)),
    # _reconstruct(ndarray, (2.5e8,), dtype('O')): 2 GB of None pointers
    "reconstruct_huge": pkl(
        g(MC, "_reconstruct") + tup(g("numpy", "ndarray"), tup(i(250_000_000)), OBJ_DTYPE) + b"R"
    ),
    "setstate_huge_objects": pkl(
        EMPTY + tup(i(1), tup(i(250_000_000)), OBJ_DTYPE, FALSE, b"]") + b"b"
    ),
    # a dtype of 1e9 float64 subarrays, as a scalar
    "subarray_scalar": pkl(g(MC, "scalar") + tup(HUGE_SUBARRAY, by(b"")) + b"R"),
}
# rewriting numpy's float64 singleton (copy=False) to big-endian: a fresh copy is built
SINGLETON = pkl(g("numpy", "dtype") + tup(u("f8"), FALSE, FALSE) + b"R" + dstate(">", 0) + b"b")


# The child's peak RSS is its own VmHWM (ru_maxrss would include the forked parent's image);
# an address-space limit keeps a regression from taking the machine down.
CHILD = (
    "import resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
    "def _peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            print('PEAK_KB', int(line.split()[1]))\n"
    ""
)


def _run_child(code: str, path: Path, limit: int) -> tuple[int, str, float]:
    """Run `code` (argv[1] = path) in a child; (exit code, stderr, peak RSS in MB)."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(limit=limit) + code, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    peak = [int(ln.split()[1]) for ln in proc.stdout.splitlines() if ln.startswith("PEAK_KB")]
    return proc.returncode, proc.stderr, (peak[0] / 1024 if peak else float("inf"))


NPY_PROBE = (
    "import sys\n"
    "from utils.common.cli import run_command\n"
    "from utils.common.safe_pickle import safe_load_pickle_or_npz\n"
    "def main(argv):\n"
    "    print(repr(safe_load_pickle_or_npz(argv[0])))\n"
    "rc = run_command('probe', main, sys.argv[1:])\n_peak()\nsys.exit(rc)\n"
)
CKPT_PROBE = (
    "import sys\n"
    "from utils.common.cli import run_command\n"
    "from utils.eval.model_helper import load_model\n"
    "def main(argv):\n"
    "    print(load_model(argv[0], lprint=print, device='cpu'))\n"
    "rc = run_command('probe', main, sys.argv[1:])\n_peak()\nsys.exit(rc)\n"
)


def _assert_refused(code: str, path: Path, ceiling_mb: float, words: tuple[str, ...] = ()) -> str:
    rc, err, peak = _run_child(code, path, 8 * 1024**3)
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("probe: error:"), err
    assert str(path) in lines[0] and all(w in lines[0] for w in words), lines[0]
    assert peak < ceiling_mb, f"peak RSS {peak:.0f} MB"
    return lines[0]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_crafted_pickle_is_one_line_under_the_ceiling(tmp_path, name):
    path = tmp_path / f"{name}.npy"
    path.write_bytes(ATTACKS[name])
    _assert_refused(NPY_PROBE, path, NUMPY_CEILING_MB)
    # and in a .npy container (np.save's layout: header, then the pickle)
    npy = tmp_path / f"{name}_hdr.npy"
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    npy.write_bytes(buf.getvalue() + ATTACKS[name])
    _assert_refused(NPY_PROBE, npy, NUMPY_CEILING_MB)


def test_numpy_singleton_dtype_is_untouched(tmp_path):
    path = tmp_path / "single.npy"
    path.write_bytes(SINGLETON)
    assert safe_load_npy(path) == np.dtype(">f8")
    assert np.dtype("f8").byteorder == "=" and np.float64(1).dtype.byteorder == "="


def test_numpys_own_pickles_still_load(tmp_path):
    """Every dtype and layout numpy writes passes the stand-ins (protocols 2 and 5) and
    loads as numpy's own unpickler loads it."""
    objs = [
        np.arange(6.0).reshape(2, 3),
        np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3)),
        np.array([None, "a", {"k": np.float32(2)}], dtype=object),
        np.array(["ab", "c"]),
        np.array([b"x"]),
        np.array([True]),
        np.complex128(1 + 2j),
        np.dtype(">f8"),
        np.zeros((0, 3), np.float16),
    ]
    for proto in (2, 5):
        path = tmp_path / f"ok{proto}.npy"
        path.write_bytes(pickle.dumps(objs, protocol=proto))
        got = safe_load_npy(path)
        for a, b in zip(pickle.loads(path.read_bytes()), got):
            assert type(a) is type(b) and repr(a) == repr(b)
            if isinstance(a, np.ndarray):
                assert a.flags.f_contiguous == b.flags.f_contiguous


def _zip_with_declared_size(path: Path, real: int, declared: int) -> Path:
    """An npz member of `real` zero bytes (deflated) whose headers declare `declared`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.npy", b"\x00" * real)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 22, declared)  # local header: uncompressed size
    cd = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, declared)  # central directory: uncompressed size
    path.write_bytes(bytes(raw))
    return path


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    path = _zip_with_declared_size(tmp_path / "bomb.npz", 1 << 20, 4 * 1024**3 - 1)
    _assert_refused(NPY_PROBE, path, NUMPY_CEILING_MB, ("zip bomb",))
    # a member that inflates to 256 MB while declaring 1 kB is read no further than 1 kB
    liar = _zip_with_declared_size(tmp_path / "liar.npz", 256 << 20, 1000)
    _assert_refused(NPY_PROBE, liar, NUMPY_CEILING_MB)


def test_npy_header_claiming_1e12_elements(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    path = tmp_path / "claim.npy"
    path.write_bytes(buf.getvalue() + b"\x00" * 16)
    _assert_refused(NPY_PROBE, path, NUMPY_CEILING_MB, ("claims",))
    with pytest.raises(NpyFileError, match="claims 8000000000000 bytes"):
        safe_load_npy(path)


# ------------------------------------------------------------------------ checkpoints


def _checkpoint_with_pickle(path: Path, data_pkl: bytes) -> Path:
    """A torch zip checkpoint whose data.pkl is `data_pkl` (other records as torch writes)."""
    buf = io.BytesIO()
    torch.save({"x": 0}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            body = data_pkl if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info.filename, body)
    return path


@pytest.mark.parametrize("name", ["fake_object_scalar", "subarray_scalar", "memo_index"])
def test_crafted_checkpoint_is_one_line_under_the_ceiling(tmp_path, name):
    path = _checkpoint_with_pickle(tmp_path / f"{name}.pth", ATTACKS[name])
    _assert_refused(CKPT_PROBE, path, TORCH_CEILING_MB, ("checkpoint",))


def _model_checkpoint(path: Path, widths: int, state_dict: dict) -> Path:
    rc = Namespace(
        conv_dims=[widths, widths],
        conv_kers=[3, 3],
        conv_strs=[2, 2],
        fc_dims=[widths],
        feat_comb="pre",
        psize=[16, 16],
        pshift=8,
        panc=1,
        shared=False,
        feat_dim=None,
    )
    ckpt = {
        "backbone": "ResNet34",
        "feat_idx": [0, 1, 2, 3],
        "change_stride": True,
        "regressor_config": rc,
        "state_dict": state_dict,
        "last_epoch": 0,
    }
    torch.save(ckpt, path)
    return path


def test_checkpoint_widths_are_checked_before_building(tmp_path):
    sd = {"extract.conv1.weight": torch.zeros(1)}
    huge = _model_checkpoint(tmp_path / "huge.pth", 100_000, sd)  # ~18 GB of regressors
    _assert_refused(CKPT_PROBE, huge, TORCH_CEILING_MB, ("conv_dims",))
    # widths the architecture allows, but not the weights the file holds: checked on the
    # meta device, nothing built
    wide = _model_checkpoint(tmp_path / "wide.pth", 4096, sd)
    _assert_refused(CKPT_PROBE, wide, TORCH_CEILING_MB, ("do not fit",))


def test_checkpoint_allow_list_is_exact(tmp_path):
    """torch's default list would load these; the checkpoint format holds none of them."""
    for name, obj in [
        ("set", {"x": {1, 2}}),
        ("size", {"x": torch.Size([2])}),
        ("counter_str", {"x": Counter({"a": 1})}),
        ("array", {"x": np.zeros(3)}),
    ]:
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        with pytest.raises(CheckpointError, match="outside the checkpoint format"):
            load_checkpoint_safe(path)
    # MultiStepLR's milestones (int → int) are part of the format
    torch.save({"milestones": Counter({3: 1, 5: 1})}, tmp_path / "ms.pth")
    assert load_checkpoint_safe(tmp_path / "ms.pth")["milestones"] == Counter({3: 1, 5: 1})


def test_tensor_beyond_its_storage_is_refused(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    # the storage claims 10**9 elements: more than the 16 bytes its record holds
    crafted = data.replace(b"K\x04", b"J" + struct.pack("<i", 10**9), 1)
    assert crafted != data
    path = _checkpoint_with_pickle(tmp_path / "big.pth", crafted)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "a") as dst:
        for info in src.infolist():
            if "/data/" in info.filename:
                dst.writestr(info.filename, src.read(info))
    _assert_refused(CKPT_PROBE, path, TORCH_CEILING_MB, ("checkpoint",))
