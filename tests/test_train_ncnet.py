"""NCNet-stage training (``python -m train_ncnet``): the weak loss, the frozen / fine-tuned
extractor, the written weights (ncn_ivd_5ep.pth format), CSV and pair-file inputs, resume."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import PAIR_FILE, REPO
from utils.train.ncnet_trainer import (
    build_coarse_model,
    finetune_blocks,
    ncnet_state_dict,
    ncnet_step,
)
from utils.train.weak_loss import negative_order, weak_loss, weak_score

SPEC_SHAPES = REPO.parent / "shared" / "spec" / "state_dict_shapes.json"


# ----------------------------------------------------------------------------- weak loss
def naive_weak_score(corr: torch.Tensor) -> float:
    """The definition, cell by cell in float64."""
    b, _, h1, w1, h2, w2 = corr.shape
    c = corr.double()
    tot_a = tot_b = 0.0
    for n in range(b):
        for k in range(h2):
            for m in range(w2):
                col = c[n, 0, :, :, k, m].flatten()  # all A cells for this B cell
                tot_a += float((col.exp() / col.exp().sum()).max())
        for i in range(h1):
            for j in range(w1):
                row = c[n, 0, i, j].flatten()  # all B cells for this A cell
                tot_b += float((row.exp() / row.exp().sum()).max())
    return (tot_a / (b * h2 * w2) + tot_b / (b * h1 * w1)) / 2


@pytest.mark.parametrize("shape", [(2, 1, 3, 4, 3, 4), (3, 1, 2, 3, 4, 2)])
def test_weak_score_equals_naive_definition(shape):
    gen = torch.Generator().manual_seed(3)
    corr = torch.randn(shape, generator=gen) * 3
    assert float(weak_score(corr)) == pytest.approx(naive_weak_score(corr), rel=1e-5)


def test_weak_score_extremes_and_loss_sign():
    flat = torch.zeros(2, 1, 3, 3, 3, 3)
    assert float(weak_score(flat)) == pytest.approx(1 / 9)
    peaked = torch.zeros(2, 1, 3, 3, 3, 3)
    for i in range(3):
        for j in range(3):
            peaked[:, 0, i, j, i, j] = 50.0  # one-to-one: every row and column one-hot
    assert float(weak_score(peaked)) == pytest.approx(1.0, abs=1e-6)
    loss, s_pos, s_neg = weak_loss(peaked, flat)
    assert float(loss) == pytest.approx(float(s_neg - s_pos)) and float(loss) < -0.8


def test_weak_score_gradcheck():
    corr = torch.randn(2, 1, 2, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(weak_score, (corr,))


def test_negative_order_rolls_by_one():
    assert negative_order(4).tolist() == [1, 2, 3, 0]
    with pytest.raises(ValueError, match="at least 2"):
        negative_order(1)


# ----------------------------------------------------------------------------- model
def _pairs(n: int, size=(96, 64), seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """n positive pairs: crops of skimage photographs and the same crops shifted by 8 px."""
    from skimage import data

    from utils.datasets.preprocess import normalize_imagenet

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    w, h = size
    src, tgt = [], []
    for k in range(n):
        im = photos[k % len(photos)]
        y, x = rng.integers(0, im.shape[0] - h - 16), rng.integers(0, im.shape[1] - w - 16)
        a = im[y : y + h, x : x + w]
        b = im[y + 8 : y + 8 + h, x + 8 : x + 8 + w]
        src.append(torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255)
        tgt.append(torch.from_numpy(b.copy()).permute(2, 0, 1).float() / 255)
    return normalize_imagenet(torch.stack(src)), normalize_imagenet(torch.stack(tgt))


def _model(fe_finetune: int, seed: int = 0):
    torch.manual_seed(seed)
    net = build_coarse_model(None, True, fe_finetune, torch.device("cpu"), imagenet=False)
    net.train()
    net.extract.eval()
    return net


def test_positives_score_above_rolled_negatives_after_training():
    """A random extractor fine-tuned with train-mode BatchNorm (train_ncnet --random_backbone
    --fe_finetune_params 13 --fe_bn_train): a few steps separate positives from negatives."""
    src, tgt = _pairs(4)
    net = _model(fe_finetune=13)
    for block in finetune_blocks(net.extract):
        block.train()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    with torch.no_grad():
        _, pos0, neg0, _, _ = ncnet_step(net, src, tgt, 2)
    for _ in range(20):
        loss, *_ = ncnet_step(net, src, tgt, 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss, pos, neg, _, _ = ncnet_step(net, src, tgt, 2)
    assert float(pos) > float(neg) * 1.1, (float(pos), float(neg))
    assert float(pos - neg) > float(pos0 - neg0) + 1e-4
    assert float(loss) < 0


def test_frozen_extractor_is_bitwise_untouched_and_finetune_moves_last_blocks():
    src, tgt = _pairs(2)
    for n in (0, 1):
        net = _model(fe_finetune=n)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(2):
            loss, *_ = ncnet_step(net, src, tgt, 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = net.state_dict()
        last = {
            f"extract.layer3.5.{k}" for k, _ in finetune_blocks(net.extract)[0].state_dict().items()
        }
        for k, v in after.items():
            if k.startswith("extract.") and k not in last:
                assert torch.equal(v, before[k]), k  # weights and BN statistics alike
        moved_last = any(not torch.equal(after[k], before[k]) for k in last if "weight" in k)
        assert moved_last == (n == 1)
        assert not torch.equal(after["ncn.conv.0.weight"], before["ncn.conv.0.weight"])


def test_finetune_blocks_order():
    net = _model(fe_finetune=0)
    blocks = finetune_blocks(net.extract)
    assert len(blocks) == 13
    assert blocks[0] is net.extract.layer3[5] and blocks[6] is net.extract.layer2[3]
    assert blocks[-1] is net.extract.layer1[0]


def test_state_dict_has_the_released_ncn_layout(tmp_path):
    net = _model(fe_finetune=0)
    sd = ncnet_state_dict(net)
    assert type(sd) is OrderedDict
    if SPEC_SHAPES.is_file():
        spec = json.loads(SPEC_SHAPES.read_text())
        want = {k: v for k, v in spec.items() if k.startswith(("extract.", "ncn."))}
        assert set(sd) == set(want)
        assert all(list(sd[k].shape) == list(want[k]) for k in want)
    assert all(k.startswith(("extract.", "ncn.")) for k in sd)


# ----------------------------------------------------------------------------- the command
def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train_ncnet", "--no_progress", "--workers", "0", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def ncnet_run(train_data, tmp_path_factory):
    """Two epochs x 2 steps on the synthetic pairs, held-out = the validation of the same file."""
    out = tmp_path_factory.mktemp("ncnet_out")
    pairs = str(train_data / "pairs" / PAIR_FILE)
    common = [
        "--pair_file",
        pairs,
        "--val_pair_file",
        pairs,
        "--data_root",
        str(train_data / "data"),
        "--image_size",
        "96",
        "64",
        "--batch_size",
        "2",
        "--max_iters_per_epoch",
        "2",
        "--val_max_pairs",
        "3",
        "--random_backbone",
        "--result_model_dir",
        str(out),
        "--result_model_fn",
        "run",
    ]
    r1 = _run(*common, "--num_epochs", "1")
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = _run(*common, "--num_epochs", "2", "--resume")
    assert r2.returncode == 0, r2.stderr[-2000:]
    return out / "run", common


@pytest.mark.slow
def test_command_writes_weights_logs_and_resumes(ncnet_run):
    exp, _ = ncnet_run
    for name in ("ncn_last.pth", "ncn_best.pth", "last_ckpt.pth", "log.txt", "config.json"):
        assert (exp / name).is_file(), name
    recs = [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in recs if r["kind"] == "val"]
    assert [r["epoch"] for r in vals] == [-1, 0, 1]  # start, then each epoch, once
    assert all(0 <= r["coarse_prec"] <= 1 and r["matches"] > 0 for r in vals)
    trains = [(r["epoch"], r["iter"]) for r in recs if r["kind"] == "train"]
    assert len(trains) == len(set(trains)) and {e for e, _ in trains} == {0, 1}
    assert "Resuming at epoch 1" in (exp / "log.txt").read_text()
    ckpt = torch.load(exp / "last_ckpt.pth", weights_only=True)
    assert ckpt["last_epoch"] == 1


@pytest.mark.slow
def test_written_weights_load_as_nc_and_as_pretrain(ncnet_run, train_data, tmp_path):
    exp, _ = ncnet_run
    from utils.eval.model_helper import load_model

    sd = torch.load(exp / "ncn_last.pth", weights_only=True)
    assert type(sd) is OrderedDict
    net = load_model(exp / "ncn_last.pth", method="nc", device="cpu", lprint=lambda *a: None)
    for k, v in net.state_dict().items():
        if k.startswith(("extract.", "ncn.")):
            assert torch.equal(v, sd[k]), k
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "train_patch2pix",
            "--data_root",
            str(train_data / "data"),
            "--pair_root",
            str(train_data / "pairs"),
            "-o",
            str(tmp_path / "p2p"),
            "--pretrain",
            str(exp / "ncn_last.pth"),
            "--change_stride",
            "--batch",
            "1",
            "--ptmax",
            "4",
            "--train_size",
            "96",
            "64",
            "--epochs",
            "1",
            "--max_iters_per_epoch",
            "1",
            "--no_val",
            "--workers",
            "0",
            "--no_progress",
            "--conv_dims",
            "16",
            "16",
            "--fc_dims",
            "16",
            "16",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    last = next((tmp_path / "p2p").rglob("last_ckpt.pth"))
    p2p = torch.load(last, weights_only=False)["state_dict"]
    assert torch.equal(p2p["ncn.conv.0.weight"], sd["ncn.conv.0.weight"])  # NCN not trained
    assert torch.equal(p2p["extract.layer3.5.conv2.weight"], sd["extract.layer3.5.conv2.weight"])


@pytest.mark.slow
def test_plot_run_draws_an_ncnet_run(ncnet_run, tmp_path):
    exp, _ = ncnet_run
    from utils.train.plot_run import NCNET_PANELS, find_runs, plot_runs

    fig = plot_runs(find_runs([exp]))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[: len(NCNET_PANELS)] == list(NCNET_PANELS)
    assert all(ax.lines for ax in fig.axes if ax.get_title() in NCNET_PANELS)


# ----------------------------------------------------------------------------- CSV input
def _write_ivd(root: Path) -> None:
    from skimage import data

    imgs = root / "images"
    imgs.mkdir(parents=True)
    a = data.astronaut()
    Image.fromarray(a).save(imgs / "a.jpg")
    Image.fromarray(a[10:, 20:]).save(imgs / "b.jpg")
    Image.fromarray(data.camera()).save(imgs / "grey.png")  # greyscale
    Image.fromarray(data.camera()[5:, 5:]).save(imgs / "grey2.png")
    csv_dir = root / "image_pairs"
    csv_dir.mkdir()
    for name in ("train_pairs.csv", "val_pairs.csv"):
        with open(csv_dir / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["source_image", "target_image", "class", "flip"])
            w.writerow(["images/a.jpg", "images/b.jpg", "1", "0"])
            w.writerow(["images/grey.png", "images/grey2.png", "2", "1"])


def test_csv_dataset_flip_and_grey(tmp_path):
    from utils.datasets.dataset_ncnet import CsvPairDataset

    _write_ivd(tmp_path)
    ds = CsvPairDataset(tmp_path / "image_pairs" / "train_pairs.csv", tmp_path, 64, 48)
    assert len(ds) == 2
    item = ds[1]
    assert item["src_im"].shape == (3, 48, 64)
    assert torch.equal(item["src_im"][0] * 0.229 + 0.485, item["src_im"][1] * 0.224 + 0.456) or (
        torch.allclose(
            item["src_im"][0] * 0.229 + 0.485, item["src_im"][1] * 0.224 + 0.456, atol=1e-6
        )
    )  # grey repeated to three channels
    # flip=1 mirrors both images: row 1's source is the mirrored resize of grey.png
    from utils.datasets.preprocess import normalize_imagenet, open_image, pil_to_tensor

    ref = normalize_imagenet(
        pil_to_tensor(open_image(tmp_path / "images/grey.png").resize((64, 48), Image.BICUBIC))
    )
    assert torch.allclose(item["src_im"], ref.flip(-1), atol=1e-6)
    assert torch.allclose(
        ds[0]["src_im"],
        normalize_imagenet(
            pil_to_tensor(open_image(tmp_path / "images/a.jpg").resize((64, 48), Image.BICUBIC))
        ),
        atol=1e-6,
    )


@pytest.mark.slow
def test_command_trains_on_ivd_csv(tmp_path):
    _write_ivd(tmp_path / "ivd")
    r = _run(
        "--dataset_image_path",
        str(tmp_path / "ivd"),
        "--dataset_csv_path",
        str(tmp_path / "ivd" / "image_pairs"),
        "--image_size",
        "64",
        "--batch_size",
        "2",
        "--num_epochs",
        "1",
        "--random_backbone",
        "--result_model_dir",
        str(tmp_path / "out"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    exp = tmp_path / "out" / "ncn"
    recs = [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in recs if x["kind"] == "val"][-1]
    assert "loss" in val and "coarse_prec" not in val  # CSV pairs carry no geometry
    assert "best weights by val_loss" in (exp / "log.txt").read_text()
    assert (exp / "ncn_best.pth").is_file()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--batch_size", "1"], "--batch_size must be at least 2"),
        (["--image_size", "100"], "--image_size 100"),
        (["--image_size", "64", "48", "32"], "--image_size takes S or W H"),
        (["--fe_finetune_params", "14"], "--fe_finetune_params must be in 0..13"),
        (["--ncons_kernel_sizes", "5", "5", "5"], "only Patch2Pix's neighbourhood consensus"),
        (["--lr", "nan"], "--lr must be a positive finite number"),
        (["--dataset_csv_path", "/nonexistent/x"], "no train_pairs.csv"),
        (["--pair_file", "/nonexistent/p.npy"], "--pair_file /nonexistent/p.npy: file not found"),
        (["--result_model_fn", "../up"], "--result_model_fn must be a plain folder name"),
        (
            ["--dataset_csv_path", "{ivd}/image_pairs", "--dataset_image_path", "{ivd}/nowhere"],
            "--dataset_image_path",
        ),
        (
            ["--dataset_csv_path", "{ivd}/missing_image", "--dataset_image_path", "{ivd}"],
            "line 3: image not found",
        ),
        (
            ["--dataset_csv_path", "{ivd}/binary", "--dataset_image_path", "{ivd}"],
            "not a text CSV file",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    _write_ivd(tmp_path / "ivd")
    bad = tmp_path / "ivd" / "missing_image"
    bad.mkdir()
    text = (tmp_path / "ivd" / "image_pairs" / "train_pairs.csv").read_text()
    (bad / "train_pairs.csv").write_text(text.replace("images/grey2.png", "images/gone.png"))
    (tmp_path / "ivd" / "binary").mkdir()
    (tmp_path / "ivd" / "binary" / "train_pairs.csv").write_bytes(bytes(range(256)) * 4)
    args = [a.format(ivd=tmp_path / "ivd") for a in args]
    r = _run("--result_model_dir", str(tmp_path / "out"), "--random_backbone", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_ncnet: error:"), r.stderr
    assert needle in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written
