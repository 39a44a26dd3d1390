"""The ImageNet backbone of a training run (docs/training.md §2), without network access.

A run with none of --pretrain / --ckpt / --resume takes torchvision's ResNet-34 ImageNet
weights from the torch cache, downloads them when missing, and otherwise stops with one line
naming the file and where to put it; --random_backbone asks for a random backbone. Loading a
checkpoint for matching never downloads. Every download function is replaced here, so no
test touches the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import urllib.error
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet34

import networks.resnet as resnet
import train_patch2pix
from networks.patch2pix import Patch2Pix
from networks.resnet import (
    IMAGENET_FILES,
    IMAGENET_SHA256_PREFIX,
    IMAGENET_URL,
    ImageNetWeightsError,
    ResNet34,
    load_imagenet_weights,
)
from utils.common.cli import UsageError
from utils.common.setup_helper import save_checkpoint_atomic
from utils.eval.model_helper import load_model
from utils.train.trainer import StartState, prepare_backbone

DOWNLOAD_SH = Path(__file__).resolve().parents[1] / "pretrained" / "download.sh"
SMALL_RC = dict(
    conv_dims=[8, 8],
    conv_kers=[3, 3],
    conv_strs=[2, 1],
    fc_dims=[8, 8],
    feat_comb="pre",
    psize=[16, 16],
    pshift=8,
    panc=1,
    shared=False,
)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch cache (TORCH_HOME) in which the weights belong at hub/checkpoints/."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def offline(monkeypatch) -> list:
    """Every download path of torch / torchvision raises URLError; the calls are recorded."""
    calls: list = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    return calls


def _imagenet_like_state(seed: int = 3) -> dict[str, torch.Tensor]:
    """A torchvision ResNet-34 state_dict (random values) standing in for the real file."""
    torch.manual_seed(seed)
    return resnet34().state_dict()


def _train_config(**kw) -> Namespace:
    return Namespace(
        training=False,
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=Namespace(**SMALL_RC),
        regr_batch=1200,
        weights_dict=None,
        **kw,
    )


# ---------------------------------------------------------------- offline: one clear error
def test_offline_error_names_the_file_and_where_to_put_it(torch_home, offline):
    want = torch_home / "hub" / "checkpoints" / IMAGENET_FILES[0]
    with pytest.raises(ImageNetWeightsError) as ei:
        load_imagenet_weights(ResNet34(change_stride=True), lprint=lambda *_: None, download=True)
    msg = str(ei.value)
    assert isinstance(ei.value, UsageError)
    assert str(want) in msg and IMAGENET_URL in msg and "TORCH_HOME" in msg
    assert "--random_backbone" in msg and "name resolution" in msg
    assert len(offline) == 1 and offline[0][0] == IMAGENET_URL
    assert not want.exists()
    assert not want.parent.exists() or list(want.parent.iterdir()) == []  # nothing half-written
    with pytest.raises(ImageNetWeightsError):
        Patch2Pix(_train_config(imagenet_init="download", lprint=lambda *_: None))
    with pytest.raises(ImageNetWeightsError, match="--random_backbone"):
        prepare_backbone(Namespace(random_backbone=False), StartState(), lprint=lambda *_: None)


def test_training_command_stops_with_one_line(train_data, torch_home, offline, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "--data_root",
        str(train_data / "data"),
        "--pair_root",
        str(train_data / "pairs"),
        "-o",
        str(out),
        "--change_stride",
        "--conv_dims",
        "8",
        "8",
        "--fc_dims",
        "8",
        "8",
        "--batch",
        "1",
        "--train_size",
        "160",
        "96",
        "--max_iters_per_epoch",
        "1",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--no_progress",
        "--device",
        "cpu",
        "--no_val",
    ]
    rc = train_patch2pix.main(argv)
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("train_patch2pix: error: "), err
    assert IMAGENET_FILES[0] in err[0] and "--random_backbone" in err[0]
    assert not out.exists()  # failed before anything was written


# ---------------------------------------------------------------- cached file: no download
def test_cached_weights_are_used_without_download(torch_home, offline):
    state = _imagenet_like_state()
    ckpt_dir = torch_home / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.save(state, ckpt_dir / IMAGENET_FILES[0])
    msgs: list[str] = []
    net = ResNet34(change_stride=True)
    assert load_imagenet_weights(net, lprint=msgs.append, download=True)
    assert torch.equal(net.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert torch.equal(net.bn1.running_var, state["bn1.running_var"])
    assert offline == [] and str(ckpt_dir / IMAGENET_FILES[0]) in msgs[-1]
    model = Patch2Pix(_train_config(imagenet_init="download", lprint=msgs.append))
    assert torch.equal(model.extract.layer1[0].conv2.weight, state["layer1.0.conv2.weight"])
    desc = prepare_backbone(Namespace(random_backbone=False), StartState(), lprint=msgs.append)
    assert desc.startswith("ImageNet backbone") and IMAGENET_FILES[0] in desc
    assert offline == []


def test_original_file_name_is_accepted(torch_home, offline):
    """The file the original downloaded (resnet34-333f7ec4.pth) counts as cached too."""
    state = _imagenet_like_state(4)
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, torch_home / "hub" / "checkpoints" / IMAGENET_FILES[1])
    net = ResNet34()
    assert load_imagenet_weights(net, lprint=lambda *_: None, download=True)
    assert torch.equal(net.conv1.weight, state["conv1.weight"]) and offline == []


def test_missing_file_is_fetched_into_the_cache(torch_home, monkeypatch):
    state = _imagenet_like_state(5)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, Path(dst), hash_prefix))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    net = ResNet34(change_stride=True)
    assert load_imagenet_weights(net, lprint=lambda *_: None, download=True)
    dst = torch_home / "hub" / "checkpoints" / IMAGENET_FILES[0]
    assert calls == [(IMAGENET_URL, dst, IMAGENET_SHA256_PREFIX)]
    assert dst.is_file() and torch.equal(net.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])


def test_unreadable_cached_file_is_named(torch_home, offline):
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    bad = torch_home / "hub" / "checkpoints" / IMAGENET_FILES[0]
    bad.write_text("not weights")
    with pytest.raises(ImageNetWeightsError, match=str(bad)):
        load_imagenet_weights(ResNet34(), lprint=lambda *_: None, download=True)


# ---------------------------------------------------------------- explicit random backbone
def test_random_backbone_flag_never_downloads(torch_home, offline):
    args = Namespace(random_backbone=True)
    assert prepare_backbone(args, StartState(), lprint=lambda *_: None) == (
        "random backbone (--random_backbone)"
    )
    torch.manual_seed(0)
    a = Patch2Pix(_train_config(imagenet_init=False))
    assert offline == []
    # start weights make the ImageNet weights unnecessary: nothing is looked up
    st = StartState(weights={"x": torch.zeros(1)}, sources=["pretrain p.pth"])
    assert prepare_backbone(Namespace(random_backbone=False), st) == "pretrain p.pth"
    assert offline == [] and a.extract.conv1.weight.abs().sum() > 0


def test_flag_is_parsed():
    from utils.train.cli import parse_args

    assert parse_args(["--random_backbone"]).random_backbone is True
    assert parse_args([]).random_backbone is False


# ---------------------------------------------------------------- matching never downloads
def test_load_model_never_downloads(torch_home, offline, tmp_path, monkeypatch):
    def no_cache_lookup(*_a, **_k):
        raise AssertionError("load_model looked for ImageNet weights")

    monkeypatch.setattr(resnet, "find_imagenet_weights", no_cache_lookup)
    torch.manual_seed(1)
    net = Patch2Pix(_train_config(imagenet_init=False))
    path = tmp_path / "ckpt.pth"
    save_checkpoint_atomic(
        {
            "last_epoch": 0,
            "best_vals": [0.0] * 4,
            "backbone": "ResNet34",
            "feat_idx": [0, 1, 2, 3],
            "change_stride": True,
            "regressor_config": Namespace(**SMALL_RC),
            "state_dict": net.state_dict(),
        },
        path,
    )
    msgs: list[str] = []
    loaded = load_model(path, lprint=msgs.append, device="cpu")
    assert offline == [] and not any("ImageNet" in m for m in msgs)
    torch.testing.assert_close(loaded.state_dict(), net.state_dict())
    nc = tmp_path / "ncn.pth"
    torch.save(
        {k: v for k, v in net.state_dict().items() if k.startswith(("extract.", "ncn."))}, nc
    )
    load_model(nc, method="nc", lprint=msgs.append, device="cpu")
    assert offline == []


# ---------------------------------------------------------------- pretrained/download.sh imagenet
def _script_env(**extra: str) -> dict[str, str]:
    """The environment with every proxy pointed at a closed local port (no real host)."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    for k in ("http_proxy", "https_proxy", "all_proxy"):
        env[k] = env[k.upper()] = "http://127.0.0.1:9"
    env.update(extra)
    return env


def _download_sh(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(DOWNLOAD_SH), "imagenet", *args],
        env=_script_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DOWNLOAD_SH.parents[1],
    )


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_download_script_fetches_into_the_torch_cache(tmp_path):
    src = tmp_path / "src.pth"
    torch.save(_imagenet_like_state(6), src)
    prefix = hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    home = tmp_path / "th"
    res = _download_sh(
        TORCH_HOME=str(home), PATCH2PIX_IMAGENET_URL=src.as_uri(), PATCH2PIX_IMAGENET_SHA256=prefix
    )
    assert res.returncode == 0, res.stderr
    got = home / "hub" / "checkpoints" / IMAGENET_FILES[0]
    assert sorted(p.name for p in got.parent.iterdir()) == [IMAGENET_FILES[0]]
    assert got.read_bytes() == src.read_bytes()
    res = _download_sh(TORCH_HOME=str(home))  # present: kept, no network needed
    assert res.returncode == 0 and "exists, kept" in res.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_download_script_fails_cleanly(tmp_path):
    target = tmp_path / "cache"
    res = _download_sh(str(target))  # offline
    assert res.returncode != 0 and not target.exists()
    assert IMAGENET_FILES[0] in res.stderr and str(target / IMAGENET_FILES[0]) in res.stderr
    assert "--random_backbone" in res.stderr
    src = tmp_path / "src.pth"
    src.write_bytes(b"not the weights")
    target.mkdir()
    res = _download_sh(str(target), PATCH2PIX_IMAGENET_URL=src.as_uri())  # real prefix
    assert res.returncode != 0 and "SHA-256" in res.stderr
    assert list(target.iterdir()) == []
