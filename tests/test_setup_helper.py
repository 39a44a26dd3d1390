"""utils.common.setup_helper: the one atomic writer, and numpy-1.x checkpoints through the safe
loader."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.common.cli import UsageError
from utils.common.setup_helper import (
    WriteError,
    clean_stale_temporaries,
    load_checkpoint_safe,
    save_checkpoint_atomic,
    save_npy_atomic,
    write_atomic,
    write_atomic_set,
    write_text_atomic,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_atomic_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    assert write_atomic(target, lambda f: f.write(b"first")) == target  # makes the folder
    write_atomic(target, lambda f: f.write(b"second"))
    assert target.read_bytes() == b"second"
    assert _leftovers(target.parent) == []


def test_write_atomic_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def half_written(f):
        f.write(b"partial new content")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_written)
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []  # the temporary file is gone
    with pytest.raises(KeyboardInterrupt):  # also for an interrupt
        write_atomic(target, lambda f: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


class _FullFile(io.RawIOBase):
    """A file object that accepts `room` bytes, then fails as a full disk does."""

    def __init__(self, f, room: int = 100) -> None:
        self._f, self.room = f, room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        import errno

        self.room -= len(b)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._f.write(b)

    def fileno(self) -> int:
        return self._f.fileno()


def test_checkpoint_save_on_a_full_disk_is_one_clear_line(tmp_path):
    """torch.save reports a failed write as RuntimeError('... unexpected pos ...'); the
    writer names the file and the reason instead (a WriteError: an OSError and a
    UsageError, so every command prints it as one line)."""
    target = tmp_path / "last_ckpt.pth"
    with pytest.raises(WriteError) as ei:
        write_atomic(target, lambda f: torch.save({"w": torch.zeros(10000)}, _FullFile(f)))
    msg = str(ei.value)
    assert msg == f"cannot write {target}: No space left on device", msg
    assert "unexpected pos" not in msg and ei.value.errno == 28
    assert isinstance(ei.value, OSError) and isinstance(ei.value, UsageError)
    assert not target.exists() and _leftovers(tmp_path) == []


def test_write_atomic_set_is_all_or_nothing(tmp_path):
    a, b, c = (tmp_path / n for n in ("m.npz", "m.csv", "m.png"))
    c.write_bytes(b"old figure")

    def fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match="m.png: No space left"):
        write_atomic_set({a: lambda f: f.write(b"A"), b: lambda f: f.write(b"B"), c: fail})
    assert not a.exists() and not b.exists() and c.read_bytes() == b"old figure"
    assert _leftovers(tmp_path) == []
    assert write_atomic_set({a: lambda f: f.write(b"A"), b: lambda f: f.write(b"B")}) == [a, b]
    assert a.read_bytes() == b"A" and b.read_bytes() == b"B"


def test_clean_stale_temporaries(tmp_path):
    """The temporaries of dead processes go; those of live ones (and other files) stay."""
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last_ckpt.pth.{dead_pid}.0123abcd.tmp"
    mine = tmp_path / f".last_ckpt.pth.{os.getpid()}.0123abcd.tmp"
    other = [tmp_path / "last_ckpt.pth", tmp_path / "notes.tmp", tmp_path / ".x.12.zz.tmp"]
    for p in [stale, mine, *other]:
        p.write_bytes(b"x")
    assert clean_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and mine.exists() and all(p.exists() for p in other)
    assert clean_stale_temporaries(tmp_path / "missing") == []


def test_write_atomic_file_mode_follows_umask(tmp_path):
    """Unlike mkstemp's 0600, the file gets the permissions of an ordinary open()."""
    old = os.umask(0o022)
    try:
        p = write_text_atomic(tmp_path / "a.json", "{}")
        os.umask(0o077)
        q = write_text_atomic(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert stat.S_IMODE(q.stat().st_mode) == 0o600


def test_the_three_writers_round_trip(tmp_path):
    ckpt = save_checkpoint_atomic({"w": torch.arange(3.0), "epoch": 7}, tmp_path / "c.pth")
    back = load_checkpoint_safe(ckpt)
    assert back["epoch"] == 7 and back["w"].tolist() == [0.0, 1.0, 2.0]
    npy = save_npy_atomic({"pairs": [1, 2]}, tmp_path / "p.npy")
    assert np.load(npy, allow_pickle=True).item() == {"pairs": [1, 2]}
    txt = write_text_atomic(tmp_path / "t.json", json.dumps({"ü": 1}))
    assert json.loads(txt.read_text(encoding="utf-8")) == {"ü": 1}
    assert _leftovers(tmp_path) == []


def _numpy1_checkpoint(path: Path) -> bytes:
    """A checkpoint as the released ones are: torch zip, protocol-2 pickle, numpy 1.x names.

    torch.save writes it with this numpy (2.x: ``numpy._core.multiarray scalar``); the
    pickle's GLOBAL opcode is then re-spelled the numpy-1.x way and the zip rebuilt.
    """
    obj = {
        "last_epoch": 4,
        "best_vals": [np.float64(0.25), np.float64(0.5), np.float64(0.125), np.float64(1.0)],
        "state_dict": {"regress.weight": torch.tensor([[1.5, -2.0]])},
        "regressor_config": argparse.Namespace(panc=8, shared=True),
    }
    buf = io.BytesIO()
    torch.save(obj, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    pkl_name = next(n for n in src.namelist() if n.endswith("/data.pkl"))
    pkl = src.read(pkl_name)
    assert pkl[:2] == b"\x80\x02"  # protocol 2, as the original's torch.save wrote
    new_name, old_name = b"cnumpy.core.multiarray\nscalar\n", b"cnumpy._core.multiarray\nscalar\n"
    assert pkl.count(old_name) == 1  # one GLOBAL, memoised for the other scalars
    pkl = pkl.replace(old_name, new_name)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, pkl if info.filename == pkl_name else src.read(info))
    return pkl


def test_numpy1_era_checkpoint_loads_through_the_safe_loader(tmp_path):
    path = tmp_path / "patch2pix_numpy1.pth"
    pkl = _numpy1_checkpoint(path)
    with zipfile.ZipFile(path) as z:  # the file on disk really carries the numpy-1 name
        on_disk = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    assert on_disk == pkl
    assert b"numpy.core.multiarray\nscalar" in on_disk and b"numpy._core" not in on_disk
    ckpt = load_checkpoint_safe(path)
    assert ckpt["last_epoch"] == 4
    assert [type(v) for v in ckpt["best_vals"]] == [np.float64] * 4
    assert [float(v) for v in ckpt["best_vals"]] == [0.25, 0.5, 0.125, 1.0]
    assert ckpt["state_dict"]["regress.weight"].tolist() == [[1.5, -2.0]]
    assert ckpt["regressor_config"] == argparse.Namespace(panc=8, shared=True)
