"""The per-level evaluation (utils/eval/levels.py) and the learning-run command end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, write_scaled_pair
from utils.eval.levels import LevelMatchers, OracleCoarseLevels
from utils.eval.matcher import Patch2PixMatcher


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_scaled_pair(tmp_path_factory.mktemp("levels"), (160, 128))


@pytest.mark.parametrize("level", ["mid", "fine", "coarse"])
def test_levels_equal_the_matcher_of_each_eval_type(tiny_net, pair, level):
    lm = LevelMatchers(tiny_net, imsize=160, io_thres=0.3)
    got = lm.matcher(level)(str(pair[0]), str(pair[1]))
    if level == "coarse":
        # the coarse level is every mutual coarse match (what the regressors refine)
        ref = Patch2PixMatcher(tiny_net, imsize=160, io_thres=0.0, eval_type="fine")
        out = ref(str(pair[0]), str(pair[1]))
        want = out["coarse"]
    else:
        ref = Patch2PixMatcher(tiny_net, imsize=160, io_thres=0.3, eval_type=level)
        out = ref(str(pair[0]), str(pair[1]))
        want = np.concatenate([out["keypoints0"], out["keypoints1"]], 1)
    assert len(got) > 0
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_levels_run_the_network_once_per_pair(tiny_net, pair, monkeypatch):
    lm = LevelMatchers(tiny_net, imsize=160, io_thres=0.3)
    calls = []
    orig = tiny_net.predict_fine
    monkeypatch.setattr(tiny_net, "predict_fine", lambda *a, **k: calls.append(1) or orig(*a, **k))
    levels = {lv: lm.matcher(lv)(str(pair[0]), str(pair[1])) for lv in ("coarse", "mid", "fine")}
    full = lm.levels(pair[0], pair[1])
    assert len(calls) == 1
    assert len(full["fine_all"]) == len(levels["coarse"])  # one refined row per coarse match
    with pytest.raises(ValueError, match="level must be one of"):
        lm.matcher("pixel")


def test_oracle_coarse_levels_snap_ground_truth_to_cell_centres(tiny_net, pair):
    """a.png -> b.png is an exact 1.5x enlargement: ground truth (x, y) -> 1.5 (x, y)."""
    ys, xs = np.mgrid[2:128:5, 3:160:5].astype(np.float64)
    gt = np.stack([xs.ravel(), ys.ravel(), 1.5 * xs.ravel(), 1.5 * ys.ravel()], 1)
    lm = OracleCoarseLevels(lambda p0, p1: gt, tiny_net, imsize=None, io_thres=0.0, thin=1)
    lv = lm.levels(pair[0], pair[1])
    coarse, u = lv["coarse"], tiny_net.upsample
    assert len(coarse) == len(np.unique(coarse[:, :2], axis=0))  # one per image-0 cell
    assert len(coarse) == (160 // u) * (128 // u)  # every cell of image 0 has ground truth
    np.testing.assert_array_equal(coarse[:, :2] % u, u // 2)  # image 0 at native size
    # image 1 is resized for the network (240x192 -> multiple of 16): centres up to scale
    assert np.all(np.abs(coarse[:, 2:] - 1.5 * coarse[:, :2]) <= 1.5 * u)
    assert len(lv["fine_all"]) == len(coarse) and len(lv["mid"]) == len(coarse)
    thinned = OracleCoarseLevels(lambda p0, p1: gt, tiny_net, imsize=None, thin=2)
    assert len(thinned.levels(pair[0], pair[1])["coarse"]) == len(coarse) // 4


@pytest.mark.slow
def test_learning_run_tiny_preset_writes_table_and_figures(tmp_path):
    out = tmp_path / "lr"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.learning_run",
            "--preset",
            "tiny",
            "--start",
            "random",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert list(res["stages"]) == ["untrained", "ncnet", "patch2pix_ep1"]
    for stage in res["stages"].values():
        md, hp = stage["md1500"], stage["hpatches"]
        assert set(md) == {"coarse", "mid", "fine", "fine_all"} == set(hp)
        assert all(0 <= md[lv]["precision"] <= 1 for lv in md)
        assert all(0 <= v <= 1 for lv in hp for v in hp[lv]["mma"].values())
    assert res["config"]["imagenet_start"] is False
    table = (out / "results.md").read_text()
    assert table.count("\n") == 2 + 3 and "AUC@10" in table
    diag = json.loads((out / "diagnosis.json").read_text())
    assert len(diag) == 2 and all(0 <= d["coarse"]["precision"] <= 1 for d in diag.values())
    for fig in ("curves.png", "ncnet_run.png", "patch2pix_run.png"):
        assert (out / fig).stat().st_size > 10_000, fig

    # A second Patch2Pix stage on the first run's data and NCNet stage, one knob changed.
    out2 = tmp_path / "lr2"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.learning_run",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--out",
            str(out2),
            "--ncnet_from",
            str(out),
            "--set",
            "p2p_freeze_feat=87",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res2 = json.loads((out2 / "results.json").read_text())
    assert list(res2["stages"]) == ["untrained", "ncnet", "patch2pix_ep1"]
    for name in ("untrained", "ncnet"):  # copied, marked, not recomputed
        assert res2["stages"][name] == dict(res["stages"][name], copied_from=str(out))
    assert res2["config"]["params"]["p2p_freeze_feat"] == 87
    assert res2["config"]["ncnet_from"] == str(out)
    assert not (out2 / "ncnet").exists() and not (out2 / "data").exists()
    assert len(list((out2 / "patch2pix").rglob("*freeze87*"))) >= 1
    assert (out2 / "diagnosis.json").is_file()


def test_learning_run_set_parses_as_the_preset_types():
    from benchmarks.learning_run import PRESETS, resolve_params
    from utils.common.cli import UsageError

    p = resolve_params("cpu", ["p2p_freeze_feat=87", "p2p_size=256,192", "ncnet_lr=2e-4"])
    assert p["p2p_freeze_feat"] == 87 and p["p2p_size"] == (256, 192) and p["ncnet_lr"] == 2e-4
    assert PRESETS["cpu"]["p2p_freeze_feat"] == 0  # the preset itself is untouched
    for bad, word in (
        ("p2p_freeze=87", "KEY one of"),
        ("p2p_freeze_feat", "KEY one of"),
        ("p2p_freeze_feat=1.5", "takes a value like 0"),
        ("p2p_size=256", "takes a value like"),
    ):
        with pytest.raises(UsageError, match=word):
            resolve_params("cpu", [bad])


def test_learning_run_ncnet_from_refuses_other_data_knobs(tmp_path):
    from benchmarks.learning_run import resolve_params, reused_stages
    from utils.common.cli import UsageError

    with pytest.raises(UsageError, match="no results.json"):
        reused_stages(tmp_path, resolve_params("tiny", []))
    (tmp_path / "ncnet").mkdir()
    (tmp_path / "ncnet" / "ncn_best.pth").write_bytes(b"")
    params = {
        k: list(v) if isinstance(v, tuple) else v for k, v in resolve_params("tiny", []).items()
    }
    stages = {"untrained": {"a": 1}, "ncnet": {"a": 2}}
    for junk in ("not json", json.dumps({"config": {}}), json.dumps([1, 2])):
        (tmp_path / "results.json").write_text(junk)
        with pytest.raises(UsageError, match="results.json is not a learning-run record"):
            reused_stages(tmp_path, resolve_params("tiny", []))
    config = {"params": params, "imagenet_start": False}
    (tmp_path / "results.json").write_text(json.dumps({"config": config, "stages": stages}))
    got, imagenet = reused_stages(tmp_path, resolve_params("tiny", ["p2p_iters=3", "amp=bf16"]))
    assert imagenet is False
    assert got == [
        ("untrained", {"a": 1, "copied_from": str(tmp_path)}),
        ("ncnet", {"a": 2, "copied_from": str(tmp_path)}),
    ]
    with pytest.raises(UsageError, match=r"ncnet_epochs 1 there, 2 here"):
        reused_stages(tmp_path, resolve_params("tiny", ["ncnet_epochs=2"]))
