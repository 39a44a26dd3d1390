"""End-to-end training CLI (docs/training.md) on tiny synthetic data.

Sizes are tiny (160×96 images, 8-wide regressors, 20 coarse matches per pair, 2 steps per
epoch, 2 validation pairs at 160 px) so that the whole file runs in well under a minute on
two idle cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_patch2pix
from utils.common.setup_helper import load_checkpoint_safe
from utils.train.cli import parse_args
from utils.train.experiment import make_tags

REPO = Path(__file__).resolve().parents[1]
TINY = (
    "--change_stride --conv_dims 8 8 --fc_dims 8 8 --ptmax 20 --batch 1 --train_size 160 96 "
    "--max_iters_per_epoch 2 --plot_counts 2 --val_imsize 160 --val_sample_max 2 "
    "--workers 0 --no_progress --device cpu --random_backbone"
).split()


@pytest.fixture(scope="module")
def data(train_data: Path) -> Path:
    """Synthetic MegaDepth + val scenes and their training-pair file (tests/conftest.py)."""
    return train_data


def base_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data_root",
        str(data / "data"),
        "--pair_root",
        str(data / "pairs"),
        "-o",
        str(out),
        *TINY,
        *extra,
    ]


def run_cli(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train_patch2pix", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )


def exp_dir_of(args: list[str]) -> Path:
    a = parse_args(args)
    return make_tags(a).exp_dir(a.out_dir)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory, visdom_server):
    """Two epochs of the tiny configuration (epochs 0 and 1), with validation and Visdom."""
    out = tmp_path_factory.mktemp("out")
    port = visdom_server[0]
    args = base_args(data, out, "-vh", "127.0.0.1", "-vp", str(port), "--epochs", "2")
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return args, exp_dir_of(args), proc


@pytest.mark.slow
def test_two_epochs_outputs(trained):
    args, exp, proc = trained
    for name in (
        "log.txt",
        "metrics.jsonl",
        "config.json",
        "last_ckpt.pth",
        "ckpt_ep1.pth",
        "ckpt_ep2.pth",
        "immatch_best_ckpt.pth",
    ):
        assert (exp / name).is_file(), name
    log = (exp / "log.txt").read_text()
    assert ">>>>>> Epoch 0" in log and ">>>>>> Epoch 1" in log and ">>Val immatch: 2 pairs" in log
    assert "ptmax: 20" in log  # the configuration heads the log
    recs = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in recs]
    assert kinds.count("train") == 4 and kinds.count("epoch") == 2 and kinds.count("val") == 2
    train = next(r for r in recs if r["kind"] == "train")
    assert set(train["loss"]) >= {"pair", "cls_mid", "cls_fine", "epi_mid", "epi_fine"}
    assert train["x"] == pytest.approx(0.5)
    val = next(r for r in recs if r["kind"] == "val")
    assert val["num_pairs"] == 2
    pr = {int(t): v for t, v in val["pass_rates"].items()}
    assert list(pr) == list(range(1, 11)) and set(pr.values()) <= {0.0, 0.5, 1.0}  # 2 pairs
    assert val["rate"] == pytest.approx(0.34 * pr[1] + 0.33 * pr[5] + 0.33 * pr[10])
    assert val["median_err"] == pytest.approx(val["mean_err"])  # the median of two is the mean
    for t, v in pr.items():  # both errors below t ⇒ mean below t; none below ⇒ mean ≥ t
        assert (v < 1.0 or val["mean_err"] < t) and (v > 0.0 or val["mean_err"] >= t)
    assert json.loads((exp / "config.json").read_text())["conv_dims"] == [8, 8]

    # Visdom: the run's environment holds the train windows with their legends
    from visdom import Visdom

    a = parse_args(args)
    env = make_tags(a).visdom_env
    vis = Visdom(
        server="http://127.0.0.1",
        port=int(a.visdom_port),
        raise_exceptions=True,
        use_incoming_socket=False,
    )
    win = json.loads(vis.get_window_data("train.loss", env=env))
    names = {t["name"] for t in win["content"]["data"]}
    assert names == {"pair", "cls_mid", "cls_fine", "epi_mid", "epi_fine"}
    assert [len(t["x"]) for t in win["content"]["data"]] == [4] * 5
    for plot in ("cls_mid", "cls_fine", "cls_ratios", "match_dist", "mem", "pair_scores"):
        assert vis.win_exists(f"train.{plot}", env=env), plot
    # ... and the per-epoch validation in the test windows, at x = 1, 2, equal to metrics.jsonl
    vals = [r for r in recs if r["kind"] == "val"]
    win = json.loads(vis.get_window_data("test.pose_err", env=env))
    lines = {t["name"]: (t["x"], t["y"]) for t in win["content"]["data"]}
    assert lines["mean"][0] == [1, 2] and lines["median"][0] == [1, 2]
    assert lines["mean"][1] == pytest.approx([v["mean_err"] for v in vals])
    win = json.loads(vis.get_window_data("test.sel_rate", env=env))
    assert win["content"]["data"][0]["y"] == pytest.approx([v["rate"] for v in vals])
    win = json.loads(vis.get_window_data("test.dist_fine", env=env))
    shares = [t["y"] for t in win["content"]["data"]]  # one line per distance bin
    for k, v in enumerate(vals):  # percent of the fine matches per bin, as recorded
        assert [y[k] for y in shares] == pytest.approx([100 * f for f in v["dist_hist"]["fine"]])
    for plot in ("pass_rates", "dist_coarse", "dist_inlier"):
        assert vis.win_exists(f"test.{plot}", env=env), plot

    # checkpoint format of docs/file-formats.md §5, loadable through the safe loader
    ckpt = load_checkpoint_safe(exp / "last_ckpt.pth")
    assert set(ckpt) == {
        "last_epoch",
        "best_vals",
        "backbone",
        "feat_idx",
        "change_stride",
        "regressor_config",
        "state_dict",
        "optim",
    }
    assert ckpt["last_epoch"] == 1 and ckpt["backbone"] == "ResNet34"
    assert ckpt["feat_idx"] == [0, 1, 2, 3] and ckpt["change_stride"] is True
    rc = ckpt["regressor_config"]
    assert (rc.conv_dims, rc.fc_dims, rc.panc, rc.psize) == ([8, 8], [8, 8], 8, [16, 16])
    assert len(ckpt["best_vals"]) == 4 and ckpt["best_vals"][2] < float("inf")
    assert load_checkpoint_safe(exp / "ckpt_ep1.pth")["last_epoch"] == 0
    # 2 epochs x 2 steps of Adam
    assert all(s["step"] == 4 for s in ckpt["optim"]["state"].values())

    # the matching API loads the trained checkpoint
    from utils.eval.model_helper import load_model

    net = load_model(exp / "immatch_best_ckpt.pth", lprint=lambda *_: None, device="cpu")
    assert net.panc == 1 and not net.training


@pytest.mark.slow
def test_resume_continues_with_optimiser_state(trained):
    args, exp, _ = trained
    before = load_checkpoint_safe(exp / "last_ckpt.pth")
    assert args[-2] == "--epochs"
    proc = run_cli([*args[:-2], "--epochs", "3", "--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (exp / "log.txt").read_text()
    resumed = log[log.index(">>>>>> Resuming at epoch 2") :]
    assert ">>>>>> Epoch 2" in resumed and ">>>>>> Epoch 0" not in resumed
    after = load_checkpoint_safe(exp / "last_ckpt.pth")
    assert after["last_epoch"] == 2
    # the optimiser continued from its saved state (4 steps before, 2 more now)
    assert all(s["step"] == 6 for s in after["optim"]["state"].values())
    assert after["best_vals"][2] <= before["best_vals"][2]
    assert (exp / "ckpt_ep3.pth").is_file()


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_last_ckpt(trained, tmp_path, capsys):
    """The process dies (SIGKILL) in the middle of writing last_ckpt.pth."""
    args, exp, _ = trained
    last = exp / "last_ckpt.pth"
    digest = sha(last)
    epoch = load_checkpoint_safe(last)["last_epoch"]
    script = tmp_path / "die_in_save.py"
    script.write_text(
        "import os, signal, sys\n"
        "import torch\n"
        "def dying_save(obj, f, *a, **k):\n"
        "    f.write(b'\\x80\\x02partial checkpoint bytes' * 4096)\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = dying_save\n"
        "import train_patch2pix\n"
        "sys.exit(train_patch2pix.main(sys.argv[1:]))\n"
    )
    run_args = list(args)
    i = run_args.index("--epochs")
    run_args[i + 1] = str(epoch + 2)
    proc = subprocess.run(
        [sys.executable, str(script), *run_args, "--resume", "--no_val"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sha(last) == digest
    assert load_checkpoint_safe(last)["last_epoch"] == epoch
    stale = list(exp.glob(".last_ckpt.pth.*.tmp"))
    assert len(stale) == 1  # what SIGKILL leaves: the temporary file

    # issue 16.3: the next start removes it; the resumed run drops the killed run's records
    # of the epoch it re-runs; a checkpoint save on a full disk is one clear line
    import errno

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        return Full(f) if ".last_ckpt.pth." in os.readlink(f"/proc/self/fd/{fd}") else f

    os.fdopen = fdopen
    try:
        rc = train_patch2pix.main([*run_args, "--resume", "--no_val"])
    finally:
        os.fdopen = real_fdopen
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2 and len(lines) == 1, err[-2000:]
    assert lines[0] == (f"train_patch2pix: error: cannot write {last}: No space left on device"), (
        lines
    )
    assert not list(exp.glob(".*.tmp")) and sha(last) == digest
    recs = [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]
    keys = [(r.get("kind"), r.get("epoch"), r.get("iter")) for r in recs]
    assert len(keys) == len(set(keys)), "duplicate metrics rows after --resume"
    assert any(k[1] == epoch + 1 for k in keys)
    assert "dropped" in (exp / "log.txt").read_text()


@pytest.mark.slow
def test_overfit_one_pair_lowers_epipolar_loss(data):
    """Twelve steps on one pair (fixed seed) clearly lower the epipolar loss."""
    from utils.common.setup_helper import seed_all
    from utils.train.losses import LossConfig
    from utils.train.trainer import StartState, build_dataset, build_training, train_step

    args = parse_args(base_args(data, data / "unused", "-lr", "1e-3"))
    seed_all(0)
    item = build_dataset(args)[0]
    batch = {k: item[k][None] for k in ("src_im", "pos_im", "F")}
    net, optimizer, _ = build_training(
        args, torch.device("cpu"), StartState(), lprint=lambda *_: None
    )
    assert net.optimizer is None  # the trainer owns the optimiser
    cfg = LossConfig.from_args(args)
    epi = []
    for _ in range(12):
        out, metrics = train_step(net, batch, cfg, args.ksize, args.ptmax, optimizer=optimizer)
        assert out.kept == [0]
        epi.append(float(out.epi.detach().mean()))
        assert set(metrics) >= {"loss", "cls_mid", "cls_fine", "match_dist"}
    first, last = sum(epi[:2]) / 2, sum(epi[-3:]) / 3
    assert last < 0.6 * first, epi


# ------------------------------------------------------------------------- bad input
def _main_error(argv: list[str], capsys) -> str:
    rc = train_patch2pix.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err and err[-1].startswith("train_patch2pix: error: ")
    return err[-1]


def test_missing_data_root(data, tmp_path, capsys):
    argv = base_args(data, tmp_path)
    argv[argv.index("--data_root") + 1] = str(tmp_path / "nowhere")
    assert "--data_root" in _main_error(argv, capsys)


def test_missing_pair_file(data, tmp_path, capsys):
    argv = base_args(data, tmp_path, "--match_npy", "nope.npy")
    assert "pair file not found" in _main_error(argv, capsys)


def test_bad_lr_decay(data, tmp_path, capsys):
    assert "--lr_decay" in _main_error(base_args(data, tmp_path, "-lrd", "linear", "0.1"), capsys)


def test_resume_without_checkpoint(data, tmp_path, capsys):
    assert "--resume" in _main_error(base_args(data, tmp_path, "--resume"), capsys)


@pytest.mark.slow
def test_ckpt_of_another_architecture(trained, data, tmp_path, capsys):
    _, exp, _ = trained
    msg = _main_error(
        base_args(data, tmp_path, "--conv_dims", "16", "16", "--ckpt", str(exp / "ckpt_ep1.pth")),
        capsys,
    )
    assert "--ckpt" in msg and "another architecture" in msg and "conv_dims" in msg


def test_pretrain_of_another_architecture(data, tmp_path, capsys):
    bad = tmp_path / "other.pth"
    torch.save(
        {"ncn.conv.0.weight": torch.zeros(3, 8, 1, 3, 3, 3), "ncn.conv.0.bias": torch.zeros(8)}, bad
    )
    msg = _main_error(base_args(data, tmp_path, "--pretrain", str(bad)), capsys)
    assert "--pretrain" in msg and "architecture" in msg
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert "--pretrain" in _main_error(base_args(data, tmp_path, "--pretrain", str(junk)), capsys)


@pytest.mark.slow
def test_unreadable_image_one_line_error(data, tmp_path):
    """A corrupt training image read by a loader worker: one line, exit 2, no traceback."""
    bad = tmp_path / "bad"
    shutil.copytree(data / "data", bad / "data", symlinks=True)
    shutil.copytree(data / "pairs", bad / "pairs")
    for im in (bad / "data" / "MegaDepth_undistort").glob("*/images/*.jpg"):
        im.write_bytes(b"this is no jpeg")
    argv = base_args(bad, tmp_path / "out", "--epochs", "1")
    argv[argv.index("--workers") + 1] = "1"
    proc = run_cli(argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_patch2pix: error: training pair") and "cannot decode" in last
