"""One clear line for every bad input, in every command (issue: one line, exit code 2).

Each command has a table of bad inputs. Every row runs the command's ``main([...])`` in
process and checks: exit code 2 (returned, or ``SystemExit(2)`` for argparse errors),
exactly one line on stderr, of the form ``<module>: error: ...``, naming the file or flag
(the row's expected words), no traceback, and no output file left behind.
"""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import rule_state_dict
from PIL import Image

from networks.patch2pix import Patch2Pix
from utils.common.cli import UsageError
from utils.common.setup_helper import CheckpointError, load_checkpoint_safe
from utils.eval.model_helper import load_model

# A row: (id, argv built from the fixture folders, words the one line must contain).
Row = tuple[str, Callable[[dict[str, Path]], list[str]], list[str]]


def _png_with_size(png: bytes, w: int, h: int) -> bytes:
    """`png` with its IHDR width / height replaced (CRC fixed): a decompression-bomb header."""
    import struct
    import zlib

    assert png[12:16] == b"IHDR"
    body = b"IHDR" + struct.pack(">II", w, h) + png[24:29]
    return png[:12] + body + struct.pack(">I", zlib.crc32(body)) + png[33:]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad (and a few good) inputs shared by the tables."""
    root = tmp_path_factory.mktemp("cli_inputs")
    f: dict[str, Path] = {"root": root, "missing": root / "missing" / "nothing.png"}
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    f["photo"] = root / "photo.jpg"
    photo.save(f["photo"], quality=90)
    f["png"] = root / "good.png"
    photo.save(f["png"])
    f["text"] = root / "notes.txt"
    f["text"].write_text("these are my notes\n")
    f["broken"] = root / "broken.jpg"
    f["broken"].write_bytes(b"this is not an image at all")
    f["truncated"] = root / "truncated.jpg"
    f["truncated"].write_bytes(f["photo"].read_bytes()[:300])
    f["npz"] = root / "arrays.npz"
    np.savez(f["npz"], a=np.zeros(3))
    f["a_file"] = root / "a_file"
    f["a_file"].write_text("x")
    f["empty_dir"] = root / "empty_dir"
    f["empty_dir"].mkdir()
    f["H_bad"] = root / "H_bad.txt"
    f["H_bad"].write_text("1 2\n3 4\n")
    f["H_zero"] = root / "H_zero.txt"
    f["H_zero"].write_text("0 0 0\n0 0 0\n0 0 0\n")
    f["H_nan"] = root / "H_nan.txt"
    f["H_nan"].write_text("1 0 0\n0 nan 0\n0 0 1\n")
    # images too small for one feature cell, and a PNG whose header claims 1e10 pixels
    for name, (h, w) in (("one", (1, 1)), ("t32", (2, 3))):
        f[name] = root / f"{name}.png"
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(f[name])
    f["bomb"] = root / "bomb.png"
    f["bomb"].write_bytes(_png_with_size(f["one"].read_bytes(), 100_000, 100_000))
    # a coarse-only model's bare state_dict (NCNet weights)
    net = Patch2Pix(
        Namespace(
            training=False,
            backbone="ResNet34",
            change_stride=True,
            feat_idx=[0, 1, 2, 3],
            regressor_config=None,
            regr_batch=1200,
            weights_dict=None,
            imagenet_init=False,
        )
    )
    f["ncn"] = root / "ncn.pth"
    torch.save(rule_state_dict(net), f["ncn"])
    nan_sd = rule_state_dict(net)
    next(v for v in nan_sd.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    f["ckpt_nan"] = root / "ckpt_nan.pth"
    torch.save(nan_sd, f["ckpt_nan"])
    for name, change in (("ckpt_psize0", {"psize": [0, 16]}), ("ckpt_featidx", {})):
        rc = Namespace(
            conv_dims=[8, 8],
            conv_kers=[3, 3],
            conv_strs=[2, 2],
            fc_dims=[8],
            feat_comb="pre",
            psize=[16, 16],
            pshift=8,
            panc=1,
            shared=False,
            feat_dim=None,
        )
        vars(rc).update(change)
        f[name] = root / f"{name}.pth"
        torch.save(
            {
                "backbone": "ResNet34",
                "feat_idx": [0, 1, 9] if name == "ckpt_featidx" else [0, 1, 2, 3],
                "change_stride": True,
                "regressor_config": rc,
                "state_dict": rule_state_dict(net),
            },
            f[name],
        )
    # scene_info folders for the pair command
    for name in ("crafted", "text_npz", "no_keys"):
        (root / name / "scene_info").mkdir(parents=True)
    f["marker"] = root / "marker"
    evil = np.empty(2, dtype=object)
    evil[:] = [None, _Payload(f["marker"])]
    np.savez(root / "crafted" / "scene_info" / "0000.0.npz", image_paths=evil)
    (root / "text_npz" / "scene_info" / "0000.0.npz").write_text("not an archive")
    np.savez(root / "no_keys" / "scene_info" / "0000.0.npz", a=np.zeros(2))
    # D2Net scene_info files with a NaN K, and with no overlapping images (no pair at all)
    for name in ("nan_K", "degenerate"):
        (root / name / "scene_info").mkdir(parents=True)
        info = {k: np.empty(2, dtype=object) for k in ("image_paths", "intrinsics", "poses")}
        info["points3D_id_to_2D"] = np.empty(2, dtype=object)
        for i in range(2):
            info["image_paths"][i] = f"Undistorted_SfM/0000/images/{i}.jpg"
            info["intrinsics"][i] = np.array([[300.0, 0, 240], [0, 300, 160], [0, 0, 1]])
            info["poses"][i] = np.eye(4)
            info["points3D_id_to_2D"][i] = {1: np.array([10.0, 20.0])}
        if name == "nan_K":
            info["intrinsics"][1] = np.full((3, 3), np.nan)
        ov = 0.5 if name == "nan_K" else -1.0
        info["overlap_matrix"] = np.array([[-1.0, ov], [ov, -1.0]])
        np.savez(root / name / "scene_info" / "0000.0.npz", **info)
    # experiment folders for plot_run: a recorded run, and one with epochs of 1e18
    recorded = Path(__file__).resolve().parent / "data" / "quickstart_metrics.jsonl"
    for name in ("run", "run_1e18"):
        (root / name).mkdir()
        (root / name / "metrics.jsonl").write_text(recorded.read_text())
    with (root / "run_1e18" / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "train", "epoch": 1e18, "iter": 1e18, "x": 1e18, "lr": 0.1}\n')
        fh.write('{"kind": "val", "epoch": 1e18, "improved": true}\n')
        fh.write('{"kind": "train", "epoch": "two", "x": "two", "lr": 0.1}\n')
    # validation roots for the overlap command
    (root / "val_bad" / "s1" / "dense" / "sparse").mkdir(parents=True)
    (root / "val_bad" / "s1" / "dense" / "sparse" / "images.bin").write_bytes(b"\x01\x02")
    # a crafted training-pair file
    f["evil_pairs"] = root / "pairs" / "evil.npy"
    f["evil_pairs"].parent.mkdir()
    np.save(
        f["evil_pairs"], {"0000": {"ims": [], "pairs": [_Payload(f["marker"])]}}, allow_pickle=True
    )
    (root / "pairs" / "notes.npy").write_text("not numpy")
    # pair files that load but whose scene entries are not what a pair file holds
    good_pair = dict(
        im1="a.jpg",
        im2="b.jpg",
        K1=np.eye(3),
        K2=np.eye(3),
        t=np.zeros(3),
        q=np.array([1, 0, 0, 0]),
    )
    for name, scene in (
        ("none_scene", None),
        ("pairs_not_list", {"ims": [], "pairs": "a.jpg b.jpg"}),
        ("pair_wrong_types", {"ims": [], "pairs": [Namespace(**{**good_pair, "im1": 3})]}),
        ("pair_K_text", {"ims": [], "pairs": [Namespace(**{**good_pair, "K1": "eye"})]}),
        (
            "pair_K_nan",
            {"ims": [], "pairs": [Namespace(**{**good_pair, "K2": np.full((3, 3), np.nan)})]},
        ),
        ("pair_no_attrs", {"ims": [], "pairs": [Namespace(foo=1)]}),
        ("pair_not_namespace", {"ims": [], "pairs": [("a.jpg", "b.jpg")]}),
    ):
        np.save(root / "pairs" / f"{name}.npy", {"0000": scene}, allow_pickle=True)
    # HPatches roots with an unreadable and with a missing image
    from utils.eval.make_hpatches_synthetic import make_synthetic_hpatches

    for name in (
        "hp_unreadable",
        "hp_missing",
        "hp_bad_H_text",
        "hp_bad_H_shape",
        "hp_no_H13",
        "hp_zero_H",
        "hp_nan_H",
    ):
        make_synthetic_hpatches(root / name, n_seqs=1, max_side=48, photos=("astronaut",))
    (root / "hp_unreadable" / "v_synth00_astronaut" / "3.ppm").write_bytes(b"garbage")
    (root / "hp_missing" / "i_synth00_astronaut" / "4.ppm").unlink()
    (root / "hp_bad_H_text" / "i_synth00_astronaut" / "H_1_3").write_text("garbage\n")
    (root / "hp_bad_H_shape" / "v_synth00_astronaut" / "H_1_2").write_text("1 0\n0 1\n")
    (root / "hp_no_H13" / "i_synth00_astronaut" / "H_1_3").unlink()
    (root / "hp_zero_H" / "v_synth00_astronaut" / "H_1_4").write_text("0 0 0\n0 0 0\n0 0 0\n")
    (root / "hp_nan_H" / "i_synth00_astronaut" / "H_1_5").write_text("1 0 0\n0 nan 0\n0 0 1\n")
    return f


def _check(
    main: Callable[[list[str]], int],
    prog: str,
    argv: list[str],
    words: list[str],
    out: Path | None,
    capsys,
) -> str:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors exit from parse_args, as in a real process
        rc = e.code
    cap = capsys.readouterr()
    lines = [x for x in cap.err.splitlines() if x.strip()]
    assert rc == 2, (rc, cap.err[-2000:])
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"{prog}: error: "), line
    assert "Traceback" not in cap.err and "Traceback" not in cap.out
    for w in words:
        assert w in line, (w, line)
    if out is not None:
        left = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
        assert left == [], left
    return line


def _check_out(
    main: Callable[[list[str]], int],
    prog: str,
    argv: list[str],
    words: list[str],
    tmp_path: Path,
    capsys,
    flag: str = "--out",
    name: str | None = None,
) -> str:
    """`_check` with the output flag pointing into a fresh folder unless the row sets it."""
    out = tmp_path / "out"
    if flag not in argv:
        argv = [*argv, flag, str(out / name if name else out)]
    return _check(main, prog, argv, words, out, capsys)


# ---------------------------------------------------------------- checkpoints
def test_non_checkpoints_are_named(files):
    for key, what in (
        ("photo", "JPEG image"),
        ("png", "PNG image"),
        ("text", "text file"),
        ("npz", "numpy .npz archive"),
        ("broken", "text file"),
    ):
        for load in (load_checkpoint_safe, lambda p: load_model(p, lprint=lambda *_: None)):
            with pytest.raises(CheckpointError) as ei:
                load(files[key])
            msg = str(ei.value)
            assert f"{files[key]} is not a PyTorch checkpoint" in msg and what in msg
            assert isinstance(ei.value, UsageError)
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        cut = files["root"] / "cut.pth"
        cut.write_bytes(files["ncn"].read_bytes()[:2000])
        load_checkpoint_safe(cut)


def test_both_torch_formats_pass_the_check(tmp_path):
    obj = {"state_dict": {"w": torch.arange(3.0)}, "last_epoch": 2}
    torch.save(obj, tmp_path / "zip.pth")
    torch.save(obj, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("zip.pth", "legacy.pth"):
        got = load_checkpoint_safe(tmp_path / name)
        assert got["last_epoch"] == 2 and torch.equal(got["state_dict"]["w"], torch.arange(3.0))


# ---------------------------------------------------------------- examples.match_pair
def _mp(f, *extra, im1="png", im2="png", ckpt=None):
    return [
        str(f[im1]),
        str(f[im2]),
        "--ckpt",
        str(ckpt or f["ncn"]),
        "--method",
        "nc",
        "--imsize",
        "64",
        "--device",
        "cpu",
        *extra,
    ]


MATCH_PAIR: list[Row] = [
    ("missing_image", lambda f: _mp(f, im1="missing"), ["im1", "nothing.png", "not found"]),
    ("broken_image", lambda f: _mp(f, im2="broken"), ["im2", "broken.jpg"]),
    ("truncated_image", lambda f: _mp(f, im2="truncated"), ["im2", "truncated.jpg"]),
    (
        "jpeg_as_ckpt",
        lambda f: _mp(f, ckpt=f["photo"]),
        ["photo.jpg", "not a PyTorch checkpoint", "JPEG"],
    ),
    (
        "text_as_ckpt",
        lambda f: _mp(f, ckpt=f["text"]),
        ["notes.txt", "not a PyTorch checkpoint", "text file"],
    ),
    ("npz_as_ckpt", lambda f: _mp(f, ckpt=f["npz"]), ["arrays.npz", "npz"]),
    ("missing_ckpt", lambda f: _mp(f, ckpt=f["missing"]), ["nothing.png", "not found"]),
    (
        "ncn_weights_as_patch2pix",
        lambda f: [str(f["png"]), str(f["png"]), "--ckpt", str(f["ncn"]), "--device", "cpu"],
        ["ncn.pth", "method='nc'"],
    ),
    (
        "fine_on_coarse_only",
        lambda f: _mp(f, "--eval_type", "fine"),
        ["--eval_type fine", "no regressors", "--eval_type coarse"],
    ),
    ("unknown_eval_type", lambda f: _mp(f, "--eval_type", "best"), ["--eval_type", "best"]),
    ("missing_H", lambda f: _mp(f, "--H", str(f["missing"])), ["--H", "nothing.png"]),
    ("bad_H", lambda f: _mp(f, "--H", str(f["H_bad"])), ["--H", "H_bad.txt", "3x3"]),
    (
        "bad_out_format",
        lambda f: _mp(f, "--out", str(f["root"] / "o.xyz")),
        ["--out", "o.xyz", "format"],
    ),
    (
        "out_under_a_file",
        lambda f: _mp(f, "--out", str(f["a_file"] / "m.png")),
        ["--out", "a_file"],
    ),
    ("bad_ksize", lambda f: _mp(f, "--ksize", "0"), ["--ksize"]),
    # issue 16.3: every numeric flag is checked for range and finiteness at parse time
    ("ksize_64", lambda f: _mp(f, "--ksize", "64"), ["--ksize", "64", "<= 16"]),
    ("io_thres_nan", lambda f: _mp(f, "--io_thres", "nan"), ["--io_thres", "finite"]),
    ("io_thres_2", lambda f: _mp(f, "--io_thres", "2"), ["--io_thres", "<= 1"]),
    ("ncn_thres_nan", lambda f: _mp(f, "--ncn_thres", "nan"), ["--ncn_thres", "finite"]),
    ("npts_negative", lambda f: _mp(f, "--Npts", "-3"), ["--Npts", ">= 1"]),
    ("npts_text", lambda f: _mp(f, "--Npts", "many"), ["--Npts", "many"]),
    # issue 16.1 / 16.3: checkpoints outside what the architecture allows
    ("ckpt_psize_0", lambda f: _mp_p2p(f, f["ckpt_psize0"]), ["ckpt_psize0.pth", "psize"]),
    (
        "ckpt_bad_feat_idx",
        lambda f: _mp_p2p(f, f["ckpt_featidx"]),
        ["ckpt_featidx.pth", "feat_idx"],
    ),
    ("ckpt_nan_weights", lambda f: _mp(f, ckpt=f["ckpt_nan"]), ["ckpt_nan.pth", "NaN"]),
    # issue 16.3: images / flags / outputs that gave tracebacks
    ("image_1x1", lambda f: _mp(f, im1="one"), ["one.png", "(1x1)", "too small"]),
    ("image_3x2", lambda f: _mp(f, im2="t32"), ["t32.png", "(3x2)", "too small"]),
    ("imsize_1", lambda f: _mp(f, "--imsize", "1"), ["good.png", "imsize=1", "too small"]),
    ("imsize_nan", lambda f: _mp(f, "--imsize", "nan"), ["--imsize", "nan"]),
    ("device_bogus", lambda f: _mp(f, "--device", "bogus"), ["--device bogus", "not a device"]),
    ("device_meta", lambda f: _mp(f, "--device", "meta"), ["--device meta", "cpu and cuda"]),
    (
        "decompression_bomb",
        lambda f: _mp(f, im1="bomb"),
        ["im1", "bomb.png", "decompression bomb"],
    ),
    (
        "out_folder_cannot_be_made",
        lambda f: _mp(f, "--out", "/proc/no_such_process/m.png"),
        ["--out", "/proc/no_such_process/m.png", "cannot create"],
    ),
    ("out_is_a_folder", lambda f: _mp(f, "--out", str(f["empty_dir"])), ["--out", "empty_dir"]),
    ("H_all_zero", lambda f: _mp(f, "--H", str(f["H_zero"])), ["--H", "H_zero.txt", "singular"]),
    ("H_nan", lambda f: _mp(f, "--H", str(f["H_nan"])), ["--H", "H_nan.txt", "NaN"]),
]


def _mp_p2p(f: dict[str, Path], ckpt: Path) -> list[str]:
    return [str(f["png"]), str(f["png"]), "--ckpt", str(ckpt), "--device", "cpu", "--imsize", "64"]


@pytest.mark.parametrize("row", MATCH_PAIR, ids=[r[0] for r in MATCH_PAIR])
def test_match_pair(row, files, tmp_path, capsys):
    from examples.match_pair import main

    _check_out(main, "examples.match_pair", row[1](files), row[2], tmp_path, capsys, name="m.png")


class _FullDisk:
    """A file object whose writes fail as on a full disk (ENOSPC)."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data) -> int:
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _full_disk(monkeypatch, match: str = "") -> None:
    """Make every file that write_atomic opens and whose (temporary) name contains `match`
    behave as on a full disk."""

    real = os.fdopen

    def fdopen(fd, *a, **k):
        f = real(fd, *a, **k)
        if match in os.readlink(f"/proc/self/fd/{fd}"):
            return _FullDisk(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("match", ["", ".m.png."], ids=["every_file", "the_png_only"])
def test_match_pair_full_disk_leaves_nothing(match, files, tmp_path, capsys, monkeypatch):
    """A full disk while writing any of the three outputs (also the last one, the figure):
    one line naming the file, no .npz / .csv / .png (the outputs are one atomic set)."""
    from examples.match_pair import main

    _full_disk(monkeypatch, match)
    out = tmp_path / "out"
    line = _check(
        main,
        "examples.match_pair",
        _mp(files, "--out", str(out / "m.png")),
        ["cannot write", "No space left on device"],
        out,
        capsys,
    )
    assert "m.png" in line if match else "m.npz" in line


def test_match_pair_unwritable_out(files, tmp_path, capsys):
    """An existing folder where nothing can be written (read-only /sys, also for root)."""
    from examples.match_pair import main

    if not Path("/sys").is_dir():
        pytest.skip("no /sys on this system")
    probe = Path("/sys/.p2p_probe")
    try:
        probe.touch()
    except OSError:
        pass
    else:
        probe.unlink()
        pytest.skip("/sys is writable here")
    _check(main, "examples.match_pair", _mp(files, "--out", "/sys/m.png"), ["/sys"], None, capsys)
    assert not list(Path("/sys").glob("m.*")) and not list(Path("/sys").glob(".m.*"))


def test_match_pair_huge_image_bounded_figure(files, tmp_path, capsys):
    """A real 10000x10000 PNG: the figure is drawn downscaled (each image at most
    MAX_FIGURE_SIDE px), not as a 6.9 GB full-size canvas; matches stay in original px."""
    import warnings

    from examples.match_pair import MAX_FIGURE_SIDE, main

    big = tmp_path / "big.png"
    Image.new("L", (10000, 10000), 90).save(big, compress_level=1)
    out = tmp_path / "out" / "m.png"
    argv = _mp(files, "--out", str(out))
    argv[0] = str(big)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert main(argv) == 0, capsys.readouterr().err
    with Image.open(out) as fig:
        assert fig.size[0] <= 2 * MAX_FIGURE_SIDE + 20 and fig.size[1] <= MAX_FIGURE_SIDE
    got = np.load(out.with_suffix(".npz"))
    assert tuple(got["size1"]) == (10000, 10000)


# ---------------------------------------------------------------- utils.eval.eval_hpatches
EVAL_HPATCHES: list[Row] = [
    (
        "missing_root",
        lambda f: ["--matcher", "oracle", "--root", str(f["missing"])],
        ["nothing.png"],
    ),
    ("no_ckpt", lambda f: ["--root", str(f["empty_dir"])], ["--ckpt"]),
    (
        "ransac_thres_nan",
        lambda f: ["--matcher", "oracle", "--root", str(f["empty_dir"]), "--ransac_thres", "nan"],
        ["--ransac_thres", "finite"],
    ),
    (
        "ransac_thres_negative",
        lambda f: ["--matcher", "oracle", "--root", str(f["empty_dir"]), "--ransac_thres", "-1"],
        ["--ransac_thres", "> 0"],
    ),
    (
        "jpeg_as_ckpt",
        lambda f: ["--root", str(f["empty_dir"]), "--ckpt", str(f["photo"])],
        ["photo.jpg", "not a PyTorch checkpoint", "JPEG"],
    ),
    (
        "text_as_ckpt",
        lambda f: ["--root", str(f["empty_dir"]), "--ckpt", str(f["text"])],
        ["notes.txt", "not a PyTorch checkpoint", "text file"],
    ),
    (
        "missing_ckpt",
        lambda f: ["--root", str(f["empty_dir"]), "--ckpt", str(f["missing"])],
        ["nothing.png", "not found"],
    ),
    (
        "fine_on_coarse_only",
        lambda f: [
            "--root",
            str(f["empty_dir"]),
            "--ckpt",
            str(f["ncn"]),
            "--method",
            "nc",
            "--eval_type",
            "mid",
            "--device",
            "cpu",
        ],
        ["--eval_type mid", "no regressors", "--eval_type coarse"],
    ),
    ("bad_solver", lambda f: ["--matcher", "oracle", "--solver", "magic"], ["--solver"]),
    (
        "unreadable_image",
        lambda f: [
            "--matcher",
            "oracle",
            "--root",
            str(f["root"] / "hp_unreadable"),
            "--exclude",
            "none",
        ],
        ["3.ppm", "cannot decode"],
    ),
    (
        "missing_image",
        lambda f: [
            "--matcher",
            "oracle",
            "--root",
            str(f["root"] / "hp_missing"),
            "--exclude",
            "none",
        ],
        ["i_synth00_astronaut", "4"],
    ),
    (
        "H_not_numbers",
        lambda f: [
            "--matcher",
            "oracle",
            "--root",
            str(f["root"] / "hp_bad_H_text"),
            "--exclude",
            "none",
        ],
        ["i_synth00_astronaut/H_1_3", "not a 3x3 homography"],
    ),
    (
        "H_not_3x3",
        lambda f: [
            "--matcher",
            "oracle",
            "--root",
            str(f["root"] / "hp_bad_H_shape"),
            "--exclude",
            "none",
        ],
        ["v_synth00_astronaut/H_1_2", "3x3", "(2, 2)"],
    ),
    # issue 16.3: no pair dropped silently, no singular / NaN ground truth
    *(
        (
            name,
            lambda f, name=name: [
                "--matcher",
                "oracle",
                "--root",
                str(f["root"] / name),
                "--exclude",
                "none",
            ],
            words,
        )
        for name, words in (
            ("hp_no_H13", ["i_synth00_astronaut", "has no H_1_3", "--exclude"]),
            ("hp_zero_H", ["v_synth00_astronaut/H_1_4", "singular"]),
            ("hp_nan_H", ["i_synth00_astronaut/H_1_5", "NaN"]),
        )
    ),
    (
        "unreadable_image_network",
        lambda f: [
            "--ckpt",
            str(f["tiny_ckpt"]),
            "--root",
            str(f["root"] / "hp_unreadable"),
            "--exclude",
            "none",
            "--imsize",
            "48",
            "--device",
            "cpu",
        ],
        ["3.ppm", "cannot decode"],
    ),
]


@pytest.mark.parametrize("row", EVAL_HPATCHES, ids=[r[0] for r in EVAL_HPATCHES])
def test_eval_hpatches(row, files, tiny_ckpt, tmp_path, capsys):
    from utils.eval.eval_hpatches import main

    out = tmp_path / "out"
    argv = row[1]({**files, "tiny_ckpt": tiny_ckpt}) + [
        "--out",
        str(out / "r.json"),
        "--no_progress",
    ]
    _check(main, "utils.eval.eval_hpatches", argv, row[2], out, capsys)


# ---------------------------------------------------------------- make_hpatches_synthetic
MAKE_HPATCHES: list[Row] = [
    ("zero_sequences", lambda f: ["--n_seqs", "0"], ["--n_seqs"]),
    ("out_is_a_file", lambda f: ["--out", str(f["a_file"])], ["--out", "a_file"]),
    ("not_an_int", lambda f: ["--n_seqs", "two"], ["--n_seqs", "two"]),
]


@pytest.mark.parametrize("row", MAKE_HPATCHES, ids=[r[0] for r in MAKE_HPATCHES])
def test_make_hpatches_synthetic(row, files, tmp_path, capsys):
    from utils.eval.make_hpatches_synthetic import main

    _check_out(main, "utils.eval.make_hpatches_synthetic", row[1](files), row[2], tmp_path, capsys)


# ---------------------------------------------------------------- data_pairs.make_synthetic
MAKE_SYNTHETIC: list[Row] = [
    ("out_is_a_file", lambda f: ["--out", str(f["a_file"])], ["--out", "a_file"]),
    ("one_image", lambda f: ["--images_per_scene", "1"], ["--images_per_scene"]),
    ("tiny_width", lambda f: ["--width", "8"], ["--width"]),
    ("bad_layout", lambda f: ["--sfm_layout", "zip"], ["--sfm_layout"]),
]


@pytest.mark.parametrize("row", MAKE_SYNTHETIC, ids=[r[0] for r in MAKE_SYNTHETIC])
def test_make_synthetic(row, files, tmp_path, capsys):
    from data_pairs.make_synthetic import main

    _check_out(main, "data_pairs.make_synthetic", row[1](files), row[2], tmp_path, capsys)


# ---------------------------------------------------------------- prep_megadepth_training_pairs
PREP_PAIRS: list[Row] = [
    (
        "missing_base_dir",
        lambda f: ["--base_dir", str(f["missing"])],
        ["--base_dir", "nothing.png", "not found"],
    ),
    ("no_scene_info", lambda f: ["--base_dir", str(f["empty_dir"])], ["scene_info"]),
    (
        "min_overlap_nan",
        lambda f: ["--base_dir", str(f["empty_dir"]), "--min_overlap_ratio", "nan"],
        ["--min_overlap_ratio", "finite"],
    ),
    ("seed_negative", lambda f: ["--base_dir", str(f["empty_dir"]), "--seed", "-1"], ["--seed"]),
    (
        "crafted_scene_info",
        lambda f: ["--base_dir", str(f["root"] / "crafted")],
        ["refusing", "0000.0.npz"],
    ),
    (
        "text_as_npz",
        lambda f: ["--base_dir", str(f["root"] / "text_npz")],
        ["0000.0.npz", "not an .npz archive"],
    ),
    (
        "npz_without_keys",
        lambda f: ["--base_dir", str(f["root"] / "no_keys")],
        ["0000.0.npz", "not a D2Net scene_info file"],
    ),
    (
        "save_dir_is_a_file",
        lambda f: ["--base_dir", str(f["empty_dir"]), "--save_dir", str(f["a_file"])],
        ["--save_dir", "a_file"],
    ),
    (
        "zero_pairs",
        lambda f: ["--base_dir", str(f["empty_dir"]), "--max_scene_pairs", "0"],
        ["--max_scene_pairs"],
    ),
    ("unknown_tag", lambda f: ["--exclude_tag", "excl_none"], ["--exclude_tag"]),
    # issue 16.3
    (
        "nan_intrinsics",
        lambda f: ["--base_dir", str(f["root"] / "nan_K")],
        ["0000.0.npz", "image 1", "1.jpg", "intrinsics", "finite"],
    ),
    (
        "degenerate_scene_no_pairs",
        lambda f: ["--base_dir", str(f["root"] / "degenerate")],
        ["--base_dir", "no pair", "nothing written"],
    ),
]


@pytest.mark.parametrize("row", PREP_PAIRS, ids=[r[0] for r in PREP_PAIRS])
def test_prep_megadepth_training_pairs(row, files, tmp_path, capsys):
    from data_pairs.prep_megadepth_training_pairs import main

    _check_out(
        main,
        "data_pairs.prep_megadepth_training_pairs",
        row[1](files),
        row[2],
        tmp_path,
        capsys,
        flag="--save_dir",
    )
    assert not files["marker"].exists()


# ---------------------------------------------------------------- precompute_immatch_val_ovs
VAL_OVS: list[Row] = [
    (
        "missing_root",
        lambda f: ["--data_root", str(f["missing"])],
        ["--data_root", "nothing.png", "not found"],
    ),
    ("no_scenes", lambda f: ["--data_root", str(f["empty_dir"])], ["no <scene>/dense/sparse"]),
    (
        "unknown_scene",
        lambda f: ["--data_root", str(f["empty_dir"]), "--scenes", "nope"],
        ["--scenes", "nope"],
    ),
    (
        "corrupt_model",
        lambda f: ["--data_root", str(f["root"] / "val_bad")],
        [str(Path("s1") / "dense" / "sparse")],
    ),
    (
        "bad_overlap",
        lambda f: ["--data_root", str(f["empty_dir"]), "--overlaps", "1.5"],
        ["--overlaps"],
    ),
]


@pytest.mark.parametrize("row", VAL_OVS, ids=[r[0] for r in VAL_OVS])
def test_precompute_immatch_val_ovs(row, files, capsys):
    from data_pairs.precompute_immatch_val_ovs import main

    _check(main, "data_pairs.precompute_immatch_val_ovs", row[1](files), row[2], None, capsys)
    assert not list(files["root"].rglob("ov_pairs.npy"))


# ---------------------------------------------------------------- train_patch2pix
def _train(
    f: dict[str, Path],
    data: Path,
    *extra: str,
    pair_root: Path | None = None,
    match_npy: str | None = None,
) -> list[str]:
    argv = [
        "--data_root",
        str(data / "data"),
        "--pair_root",
        str(pair_root or data / "pairs"),
        "--change_stride",
        "--conv_dims",
        "8",
        "8",
        "--fc_dims",
        "8",
        "8",
        "--train_size",
        "160",
        "96",
        "--workers",
        "0",
        "--no_progress",
        "--device",
        "cpu",
        "--no_val",
        "--random_backbone",
        *extra,
    ]
    if match_npy:
        argv += ["--match_npy", match_npy]
    return argv


TRAIN: list[tuple[str, Callable[[dict[str, Path], Path], list[str]], list[str]]] = [
    (
        "jpeg_as_ckpt",
        lambda f, d: _train(f, d, "--ckpt", str(f["photo"])),
        ["--ckpt", "photo.jpg", "not a PyTorch checkpoint", "JPEG"],
    ),
    (
        "text_as_ckpt",
        lambda f, d: _train(f, d, "--ckpt", str(f["text"])),
        ["--ckpt", "notes.txt", "not a PyTorch checkpoint", "text file"],
    ),
    (
        "jpeg_as_pretrain",
        lambda f, d: _train(f, d, "--pretrain", str(f["photo"])),
        ["--pretrain", "photo.jpg", "JPEG"],
    ),
    (
        "missing_pretrain",
        lambda f, d: _train(f, d, "--pretrain", str(f["missing"])),
        ["--pretrain", "nothing.png", "not found"],
    ),
    (
        "missing_data_root",
        lambda f, d: [
            "--data_root",
            str(f["missing"]),
            "--pair_root",
            str(d / "pairs"),
            "--random_backbone",
            "--device",
            "cpu",
        ],
        ["--data_root", "nothing.png"],
    ),
    ("lr_inf", lambda f, d: _train(f, d, "-lr", "inf"), ["--lr_init", "finite"]),
    ("lr_nan", lambda f, d: _train(f, d, "-lr", "nan"), ["--lr_init", "finite"]),
    ("lr_negative", lambda f, d: _train(f, d, "-lr", "-1"), ["--lr_init", "> 0"]),
    ("wcls_nan", lambda f, d: _train(f, d, "-wcls", "nan"), ["--weight_cls", "finite"]),
    ("seed_negative", lambda f, d: _train(f, d, "--seed", "-1"), ["--seed", ">= 0"]),
    ("ksize_0", lambda f, d: _train(f, d, "--ksize", "0"), ["--ksize", ">= 1"]),
    (
        "crafted_pair_file",
        lambda f, d: _train(f, d, pair_root=f["evil_pairs"].parent, match_npy="evil.npy"),
        ["refusing", "evil.npy"],
    ),
    (
        "text_pair_file",
        lambda f, d: _train(f, d, pair_root=f["evil_pairs"].parent, match_npy="notes.npy"),
        ["notes.npy"],
    ),
    # issue 16.3: refused at parse time / before the experiment directory is made
    ("psize_0", lambda f, d: _train(f, d, "--psize", "0", "0"), ["--psize", "positive"]),
    *(
        (
            name,
            lambda f, d, name=name: _train(
                f, d, pair_root=f["evil_pairs"].parent, match_npy=f"{name}.npy"
            ),
            [f"{name}.npy", "scene 0000", *words],
        )
        for name, words in (
            ("none_scene", ["expected a dict", "NoneType"]),
            ("pairs_not_list", ["'pairs' must be a list"]),
            ("pair_wrong_types", ["pair 0", "'im1'"]),
            ("pair_K_text", ["pair 0", "'K1'", "numbers"]),
            ("pair_K_nan", ["pair 0", "'K2'", "NaN"]),
            ("pair_no_attrs", ["pair 0", "'im1'"]),
            ("pair_not_namespace", ["pair 0", "Namespace", "tuple"]),
        )
    ),
]


@pytest.mark.parametrize("row", TRAIN, ids=[r[0] for r in TRAIN])
def test_train_patch2pix(row, files, train_data, tmp_path, capsys):
    import train_patch2pix

    out = tmp_path / "out"
    argv = row[1](files, train_data) + ["-o", str(out)]
    _check(train_patch2pix.main, "train_patch2pix", argv, row[2], out, capsys)
    assert not files["marker"].exists()


# ---------------------------------------------------------------- utils.train.plot_run
PLOT_RUN: list[Row] = [
    ("dpi_0", lambda f: [str(f["root"] / "run"), "--dpi", "0"], ["--dpi", ">= 10"]),
    ("dpi_100000", lambda f: [str(f["root"] / "run"), "--dpi", "100000"], ["--dpi", "<= 1000"]),
    ("dpi_nan", lambda f: [str(f["root"] / "run"), "--dpi", "nan"], ["--dpi", "finite"]),
    (
        "out_folder_cannot_be_made",
        lambda f: [str(f["root"] / "run"), "--out", "/proc/no_such_process/run.png"],
        ["cannot write", "/proc/no_such_process/run.png"],
    ),
    (
        "out_is_a_folder",
        lambda f: [str(f["root"] / "run"), "--out", str(f["empty_dir"])],
        ["--out", "empty_dir", "folder"],
    ),
    (
        "out_bad_format",
        lambda f: [str(f["root"] / "run"), "--out", str(f["root"] / "run.xyz")],
        ["--out", "run.xyz", "format"],
    ),
]


@pytest.mark.parametrize("row", PLOT_RUN, ids=[r[0] for r in PLOT_RUN])
def test_plot_run(row, files, tmp_path, capsys):
    from utils.train.plot_run import main

    _check_out(main, "utils.train.plot_run", row[1](files), row[2], tmp_path, capsys, name="r.png")
    assert not (files["root"] / "run" / "run.png").exists()


def test_plot_run_unwritable_and_full_disk(files, tmp_path, capsys, monkeypatch):
    """An existing read-only folder (/sys, also for root) and a full disk: one line each."""
    from utils.train.plot_run import main

    if Path("/sys").is_dir():
        _check(
            main,
            "utils.train.plot_run",
            [str(files["root"] / "run"), "--out", "/sys/r.png"],
            ["cannot write", "/sys/r.png"],
            None,
            capsys,
        )
    _full_disk(monkeypatch)
    out = tmp_path / "out"
    _check(
        main,
        "utils.train.plot_run",
        [str(files["root"] / "run"), "--out", str(out / "r.png")],
        ["cannot write", "r.png", "No space left on device"],
        out,
        capsys,
    )


def test_plot_run_epoch_1e18_is_left_out_with_a_word(files, tmp_path, capsys):
    from utils.train.plot_run import main

    out = tmp_path / "r.png"
    assert main([str(files["root"] / "run_1e18"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "3 record(s) with an epoch / x outside 0..1e+06 left out" in err, err
    assert out.is_file() and "Traceback" not in err


# ---------------------------------------------------------------- examples.make_example_pairs
MAKE_EXAMPLE_PAIRS: list[Row] = [
    ("out_is_a_file", lambda f: ["--out", str(f["a_file"])], ["--out", "a_file"]),
    ("quality_zero", lambda f: ["--quality", "0"], ["--quality", "0"]),
    ("quality_not_an_int", lambda f: ["--quality", "x"], ["--quality", "x"]),
]


@pytest.mark.parametrize("row", MAKE_EXAMPLE_PAIRS, ids=[r[0] for r in MAKE_EXAMPLE_PAIRS])
def test_make_example_pairs(row, files, tmp_path, capsys):
    from examples.make_example_pairs import main

    _check_out(main, "examples.make_example_pairs", row[1](files), row[2], tmp_path, capsys)
