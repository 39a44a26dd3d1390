"""Pickled numpy files are data, never code (docs/file-formats.md §6).

Every loader of the pair file, of D2Net's scene_info npz and of ov_pairs.npy refuses a crafted
pickle before its payload runs (the marker file never appears), still loads files in the
original's exact structure, and what the project writes still loads in plain numpy.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from argparse import Namespace
from pathlib import Path

import numpy as np
import numpy.lib.format as npformat
import pytest

from data_pairs import precompute_immatch_val_ovs as pov
from data_pairs import prep_megadepth_training_pairs as prep
from utils.common.cli import UsageError
from utils.common.safe_pickle import (
    NpyFileError,
    UnsafePickleError,
    safe_load_npy,
    safe_load_npz,
)
from utils.common.setup_helper import save_npy_atomic
from utils.datasets.dataset_megadepth import ImMatchDatasetMega, load_pair_file
from utils.train.eval_epoch_immatch import load_overlap_pairs


class _SystemPayload:
    """Unpickling this calls os.system(touch <marker>)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _ExecPayload:
    """Unpickling this calls builtins.exec(<python creating the marker>)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


PAYLOADS = [_SystemPayload, _ExecPayload]
PROTOCOLS = [2, 3, 4, 5]


def _write_npy(path: Path, obj: object, protocol: int = 3) -> Path:
    """Write `obj` as np.save would (0-d object array), with the given pickle protocol."""
    arr = np.empty((), dtype=object)
    arr[()] = obj
    with open(path, "wb") as fh:
        npformat.write_array_header_1_0(fh, npformat.header_data_from_array_1_0(arr))
        pickle.dump(arr, fh, protocol=protocol)
    return path


def _write_npz(path: Path, arrays: dict[str, np.ndarray], protocol: int = 3) -> Path:
    """An .npz archive as np.savez writes it, object members pickled with `protocol`."""
    with zipfile.ZipFile(path, "w") as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            if arr.dtype.hasobject:
                npformat.write_array_header_1_0(buf, npformat.header_data_from_array_1_0(arr))
                pickle.dump(arr, buf, protocol=protocol)
            else:
                np.lib.format.write_array(buf, arr)
            zf.writestr(key + ".npy", buf.getvalue())
    return path


def _original_pairs() -> dict:
    """A pair file in the original's exact structure (docs/file-formats.md §2)."""
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    q = np.array([1.0, 0.0, 0.0, 0.0])
    return {
        "0000": {
            "ims": [
                Namespace(name="0000/images/1.jpg", crop=(np.int64(0), np.int64(0))),
                Namespace(name="0000/images/2.jpg", crop=(0, 1)),
            ],
            "pairs": [
                Namespace(
                    im1="0000/images/1.jpg",
                    im2="0000/images/2.jpg",
                    overlap=np.float64(0.5),
                    K1=K,
                    K2=K.astype(np.float32),
                    t=np.array([1.0, 0.0, 0.0]),
                    q=q,
                    R=np.eye(3),
                    crop1=(0, 0),
                    crop2=(0, 1),
                )
            ],
        }
    }


def _original_scene_info() -> dict[str, np.ndarray]:
    """A D2Net scene_info in its exact structure: object arrays with None entries."""
    n = 3
    paths = np.array(
        [None, "Undistorted_SfM/0000/images/1.jpg", "Undistorted_SfM/0000/images/2.jpg"],
        dtype=object,
    )
    depth = np.array([None, "phoenix/d/1.h5", "phoenix/d/2.h5"], dtype=object)
    K = np.empty(n, dtype=object)
    K[:] = [None, np.eye(3), np.eye(3) * 2]
    poses = np.empty(n, dtype=object)
    poses[:] = [None, np.eye(4), np.eye(4)]
    to2d = np.empty(n, dtype=object)
    to2d[:] = [None, {7: np.array([1.0, 2.0]), 9: [3.0, 4.0]}, {7: [5.0, 6.0]}]
    ndepth = np.empty(n, dtype=object)
    ndepth[:] = [None, {7: 1.5, 9: np.float64(2.0)}, {7: 3.0}]
    ov = -np.ones((n, n))
    ov[1, 2] = ov[2, 1] = 0.5
    return {
        "image_paths": paths,
        "depth_paths": depth,
        "intrinsics": K,
        "poses": poses,
        "overlap_matrix": ov,
        "scale_ratio_matrix": np.ones((n, n)),
        "angles": np.zeros((n, n)),
        "n_points3D": np.int64(2),
        "points3D_id_to_2D": to2d,
        "points3D_id_to_ndepth": ndepth,
    }


def _assert_same(a, b) -> None:
    """Deep equality of nested dict / list / tuple / Namespace / ndarray / scalars."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        if a.dtype == object:
            for x, y in zip(a.ravel(), b.ravel(), strict=True):
                _assert_same(x, y)
        else:
            np.testing.assert_array_equal(a, b)
    elif isinstance(a, Namespace):
        assert isinstance(b, Namespace)
        _assert_same(vars(a), vars(b))
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


# ---------------------------------------------------------------- the payloads are real
@pytest.mark.parametrize("payload", PAYLOADS)
def test_crafted_file_runs_its_payload_under_plain_numpy(tmp_path, payload):
    """Sanity check of the test files: unrestricted np.load does run the payload."""
    marker = tmp_path / "marker"
    path = _write_npy(tmp_path / "evil.npy", {"0000": payload(marker)})
    np.load(path, allow_pickle=True)
    assert marker.exists()


# ---------------------------------------------------------------- refused, nothing runs
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_pair_file_loaders_refuse_crafted_pickle(tmp_path, payload, protocol):
    marker = tmp_path / "marker"
    pairs = _original_pairs()
    pairs["0000"]["pairs"].append(payload(marker))
    path = _write_npy(tmp_path / "pairs.npy", pairs, protocol)
    (tmp_path / "MegaDepth_undistort").mkdir()
    loaders = [
        load_pair_file,
        prep.load_pairs,
        safe_load_npy,
        lambda p: ImMatchDatasetMega(tmp_path, p, item_type="pair"),
    ]
    for load in loaders:
        with pytest.raises(UnsafePickleError) as ei:
            load(path)
        assert str(path) in str(ei.value)
        assert isinstance(ei.value, ValueError) and isinstance(ei.value, UsageError)
        assert not marker.exists()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_scene_info_loaders_refuse_crafted_pickle(tmp_path, payload, protocol):
    marker = tmp_path / "marker"
    info = _original_scene_info()
    info["points3D_id_to_2D"][2] = {7: payload(marker)}
    path = _write_npz(tmp_path / "0000.0.npz", info, protocol)
    for load in (prep.load_scene_info, safe_load_npz):
        with pytest.raises(UnsafePickleError) as ei:
            load(path)
        assert str(path) in str(ei.value) and "points3D_id_to_2D" in str(ei.value)
        assert not marker.exists()


def test_pair_command_refuses_crafted_scene_info(tmp_path, capsys):
    marker = tmp_path / "marker"
    info = _original_scene_info()
    info["image_paths"][0] = _SystemPayload(marker)
    base = tmp_path / "MegaDepth_undistort"
    (base / "scene_info").mkdir(parents=True)
    path = _write_npz(base / "scene_info" / "0000.0.npz", info)
    rc = prep.main(["--base_dir", str(base), "--save_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(path) in err[0] and "refusing" in err[0]
    assert not marker.exists()
    assert not list((tmp_path / "out").glob("*.npy")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_ov_pairs_loaders_refuse_crafted_pickle(tmp_path, payload, protocol):
    marker = tmp_path / "marker"
    path = _write_npy(
        tmp_path / "ov_pairs.npy", {0.1: [("b.jpg", "a.jpg")], 0.2: payload(marker)}, protocol
    )
    for load in (pov.load_ov_pairs, lambda p: load_overlap_pairs(p, 0.1)):
        with pytest.raises(UnsafePickleError) as ei:
            load(path)
        assert str(path) in str(ei.value)
        assert not marker.exists()


def test_refused_global_is_named(tmp_path):
    path = _write_npy(tmp_path / "x.npy", {"a": _ExecPayload(tmp_path / "m")})
    with pytest.raises(UnsafePickleError, match=r"builtins\.exec"):
        safe_load_npy(path)


# ---------------------------------------------------------------- original files load
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_original_pair_file_structure_loads(tmp_path, protocol):
    pairs = _original_pairs()
    path = _write_npy(tmp_path / "pairs.npy", pairs, protocol)
    for load in (load_pair_file, prep.load_pairs, safe_load_npy):
        _assert_same(pairs, load(path))


def test_numpy1_written_files_load(tmp_path):
    """numpy 1.x spells the reconstruction module numpy.core.multiarray."""
    pairs = _original_pairs()
    path = _write_npy(tmp_path / "pairs.npy", pairs, 3)
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    _assert_same(pairs, safe_load_npy(path))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_original_scene_info_structure_loads(tmp_path, protocol):
    info = _original_scene_info()
    path = _write_npz(tmp_path / "0000.0.npz", info, protocol)
    got = prep.load_scene_info(path)
    assert list(got) == list(info)
    for k in info:
        _assert_same(np.asarray(info[k]), got[k])
    assert got["image_paths"][0] is None and got["points3D_id_to_2D"][1][9] == [3.0, 4.0]


def test_original_ov_pairs_structure_loads(tmp_path):
    ov = {0.1: [("b.jpg", "a.jpg"), ("c.jpg", "a.jpg")], 0.2: [("c.jpg", "a.jpg")], 0.3: []}
    path = _write_npy(tmp_path / "ov_pairs.npy", ov)
    _assert_same(ov, pov.load_ov_pairs(path))
    assert load_overlap_pairs(path, 0.2) == [("c.jpg", "a.jpg")]


def test_plain_arrays_load_without_pickle(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    np.savez(tmp_path / "z.npz", a=a, b=np.array(["x", "yz"]))
    np.testing.assert_array_equal(safe_load_npy(tmp_path / "a.npy"), a)
    np.testing.assert_array_equal(safe_load_npy(tmp_path / "f.npy"), a)
    z = safe_load_npz(tmp_path / "z.npz")
    np.testing.assert_array_equal(z["a"], a)
    assert z["b"].tolist() == ["x", "yz"]


# ---------------------------------------------------------------- what the project writes
def test_project_written_files_load_in_plain_numpy(tmp_path):
    pairs = _original_pairs()
    p = prep.save_pairs(pairs, tmp_path / "pairs.npy")
    _assert_same(pairs, np.load(p, allow_pickle=True).item())
    _assert_same(pairs, prep.load_pairs(p))
    ov = {0.1: [("b", "a")], 0.5: []}
    q = save_npy_atomic(ov, tmp_path / "ov_pairs.npy")
    _assert_same(ov, np.load(q, allow_pickle=True).item())
    _assert_same(ov, pov.load_ov_pairs(q))


# ---------------------------------------------------------------- bad files, one message
def test_bad_files_name_the_file(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello\n")
    with pytest.raises(NpyFileError, match="notes.txt"):
        safe_load_npy(txt)
    with pytest.raises(NpyFileError, match="notes.txt"):
        safe_load_npz(txt)
    with pytest.raises(NpyFileError, match="missing.npy"):
        safe_load_npy(tmp_path / "missing.npy")
    full = _write_npy(tmp_path / "cut.npy", _original_pairs())
    cut = tmp_path / "cut2.npy"
    cut.write_bytes(full.read_bytes()[:-40])
    with pytest.raises(NpyFileError, match="cut2.npy"):
        safe_load_npy(cut)
    np.savez(tmp_path / "z.npz", a=np.zeros(2))
    with pytest.raises(NpyFileError, match=r"z\.npz.*\.npz archive"):
        safe_load_npy(tmp_path / "z.npz")


def test_pickle_cannot_patch_the_namespace_class(tmp_path):
    """BUILD with slot state on the allowed class itself would set class attributes."""
    raw = b"\x80\x02cargparse\nNamespace\nN}X\x08\x00\x00\x00__repr__K\x01s\x86b."
    path = tmp_path / "patch.npy"
    path.write_bytes(raw)
    with pytest.raises(UnsafePickleError, match=r"state set on type \(BUILD\)"):
        safe_load_npy(path)
    assert repr(Namespace(a=1)) == "Namespace(a=1)"
    assert not isinstance(vars(Namespace).get("__repr__"), int)
