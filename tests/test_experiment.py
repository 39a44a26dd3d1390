"""Experiment naming (docs/training.md §4), CLI flags (§1), log and metrics files."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from networks.optim import parse_lr_decay
from utils.common.cli import UsageError
from utils.train.cli import build_parser, check_args, parse_args
from utils.train.experiment import ExperimentLog, make_tags, save_config, truncate_metrics

PAPER_CMD = (
    "--epochs 25 --batch 4 --save_step 1 --plot_counts 20 --data_root data --change_stride "
    "--panc 8 --ptmax 400 --pretrain pretrained/ncn_ivd_5ep.pth -lr 0.0005 -lrd multistep 0.2 5 "
    "--cls_dthres 50 5 --epi_dthres 50 5 -o output/patch2pix"
)
PAPER_DIR = (
    "output/patch2pix/Mega.ov0.35.pair500.excl_test.freeze87.cs.pretrain/"
    "ks2fe0123ep50-5cls50-5_wcls10.0wepi1-1.lr0.0005lrms0.2-5/"
    "pre400_conv33dim512-512str2-1fc512-256_psz16-16a8"
)
PAPER_ENV = (
    "Mega.ov0.35.pair500.excl_test.freeze87.cs.pretrain.ks2fe0123_ep50-5cls50-5_wcls10.0wepi1-1"
    ".lr0.0005lrms0.2-5_pre400_conv33dim512-512str2-1fc512-256_psz16-16a8"
)


def test_paper_command_dir_and_env():
    args = parse_args(shlex.split(PAPER_CMD))
    tags = make_tags(args)
    assert tags.data_tag == "Mega.ov0.35.pair500.excl_test"
    assert tags.exp_dir(args.out_dir) == Path(PAPER_DIR)
    assert tags.visdom_env == PAPER_ENV


def test_defaults_of_every_original_flag():
    a = build_parser().parse_args([])
    want = dict(
        gpu=0,
        seed=1,
        epochs=100,
        save_step=1,
        plot_counts=5,
        batch=8,
        regr_batch=1200,
        visdom_host=None,
        visdom_port=None,
        prefix="",
        out_dir="output/patch2pix",
        dataset="MegaDepth",
        data_root="data",
        pair_root="data_pairs",
        match_npy="megadepth_pairs.ov0.35_imrat1.5.pair500.excl_test.npy",
        backbone="ResNet34",
        change_stride=False,
        ksize=2,
        freeze_feat=87,
        feat_idx=[0, 1, 2, 3],
        feat_comb="pre",
        conv_kers=[3, 3],
        conv_dims=[512, 512],
        conv_strs=[2, 1],
        fc_dims=[512, 256],
        psize=[16, 16],
        pshift=8,
        panc=8,
        ptmax=400,
        shared=False,
        cthres=0.5,
        cls_dthres=[50, 5],
        epi_dthres=[50, 5],
        pretrain=None,
        ckpt=None,
        resume=False,
        lr_init=5e-4,
        lr_decay=None,
        weight_decay=0,
        weight_cls=10.0,
        weight_epi=[1, 1],
    )
    for k, v in want.items():
        assert getattr(a, k) == v, k
        assert type(getattr(a, k)) is type(v), k


def test_aliases():
    a = parse_args(
        shlex.split(
            "-gpu 1 -vh localhost -vp 8097 -o out -lr 0.001 -lrd step 0.5 3 "
            "-wd 0.01 -wcls 5 -wepi 0 1"
        )
    )
    assert (a.gpu, a.visdom_host, a.visdom_port, a.out_dir) == (1, "localhost", "8097", "out")
    assert (a.lr_init, a.lr_decay, a.weight_decay) == (0.001, ["step", "0.5", "3"], 0.01)
    assert (a.weight_cls, a.weight_epi) == (5.0, [0.0, 1.0])


def test_optional_tags():
    a = parse_args(
        shlex.split(
            "--prefix dbg --freeze_feat 60 -wd 0.01 -lrd step 0.5 3 --shared --feat_idx 1 2 "
            "--conv_kers 3 --conv_dims 64 --conv_strs 2 --fc_dims 32 --psize 8 8 --panc 1 "
            "--feat_comb post --ptmax 250 -wepi 0 1 --match_npy my.npy"
        )
    )
    tags = make_tags(a)
    assert tags.odir_tag == "dbg.Mega.my.freeze60"
    assert tags.exp_tag == "ks2fe12ep50-5cls50-5_wcls10.0wepi0.0-1.0.lr0.0005wd0.01lrst0.5-3"
    assert tags.regress_tag == "post250_conv3dim64str2fc32_psz8-8a1.shared"


@pytest.mark.parametrize(
    "tokens",
    [
        ["linear", "0.1"],
        ["step", "0.5"],
        ["step", "x", "3"],
        ["multistep", "0.2"],
        ["step", "0.5", "3", "4"],
        ["step", "1.5", "3"],
    ],
)
def test_bad_lr_decay_names_the_flag(tokens):
    with pytest.raises(ValueError, match="--lr_decay"):
        parse_lr_decay(tokens)
    a = build_parser().parse_args(["-lrd", *tokens])
    with pytest.raises(UsageError, match="--lr_decay"):
        check_args(a)


def test_log_and_metrics_append(tmp_path):
    args = parse_args([])
    with ExperimentLog(tmp_path / "exp", echo=None) as log:
        log.log_config(args)
        log("epoch 0 done")
        log.metrics({"epoch": 0, "loss": {"pair": 1.5}})
    with ExperimentLog(tmp_path / "exp", echo=None) as log:  # resume appends
        log("epoch 1 done")
        log.metrics({"epoch": 1, "best": float("inf")})
    text = (tmp_path / "exp" / "log.txt").read_text()
    assert "ptmax: 400" in text and text.index("epoch 0 done") < text.index("epoch 1 done")
    recs = [json.loads(x) for x in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [0, 1]
    assert recs[0]["loss"] == {"pair": 1.5} and recs[1]["best"] == "inf"
    cfg = json.loads(save_config(args, tmp_path / "exp").read_text())
    assert cfg["weight_epi"] == [1, 1] and cfg["lr_decay"] is None


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--panc", "4"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train_patch2pix: error: argument --panc")


def test_truncate_metrics_for_a_resume(tmp_path):
    """--resume at epoch 2 re-runs epoch 2: its records (and a line cut by a kill) go."""
    path = tmp_path / "metrics.jsonl"
    recs = [
        {"kind": "train", "epoch": 0, "iter": 1},
        {"kind": "epoch", "epoch": 1},
        {"kind": "note"},
        {"kind": "train", "epoch": 2, "iter": 1},
        {"kind": "val", "epoch": 3},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"kind": "tra')
    assert truncate_metrics(path, 2) == 3
    assert [json.loads(x) for x in path.read_text().splitlines()] == recs[:3]
    assert truncate_metrics(path, 2) == 0
    assert truncate_metrics(tmp_path / "none.jsonl", 0) == 0
