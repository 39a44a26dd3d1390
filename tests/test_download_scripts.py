"""Download scripts: clean failure without the network, atomic success with stand-ins.

Every run points the proxies at a closed local port, so the real hosts are never contacted
(the tests behave the same with or without the network). Success paths use a stand-in
gdown (``$PATCH2PIX_GDOWN``) and a local ``file://`` archive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained" / "download.sh"
PAIRS = REPO / "data_pairs" / "download.sh"
VAL = REPO / "data" / "prepare_immatch_val_data.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")

FAKE_GDOWN = r"""#!/usr/bin/env bash
# stand-in for gdown: behaviour chosen by $FAKE_MODE, output path after -O
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --help) echo "usage: gdown [-O OUTPUT] url"; exit 0 ;;
        -O) out="$2"; shift 2 ;;
        *) shift ;;
    esac
done
case "$out" in */) mkdir -p "$out"; file="${out}uc" ;; *) file="$out" ;; esac
case "$FAKE_MODE" in
    pth) printf 'PK\003\004fake weights' > "$out" ;;
    html) printf '<!DOCTYPE html><html><body>quota</body></html>' > "$file" ;;
    partial) printf 'PK\003\004trunc' > "$file"; exit 1 ;;
    npy) mkdir -p "$out"; printf 'pairs' > "$out/megadepth_pairs.fake.npy" ;;
    tgz)
        mkdir -p "$out"
        src="$(mktemp -d)"
        mkdir -p "$src/pairs"
        printf 'pairs' > "$src/pairs/megadepth_pairs.fake.npy"
        tar -czf "$out/pairs.tar.gz" -C "$src" pairs
        rm -rf "$src"
        ;;
esac
"""


def _offline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    closed = "http://127.0.0.1:9"  # nothing listens there: every request fails at once
    for k in ("http_proxy", "https_proxy", "all_proxy"):
        env[k] = env[k.upper()] = closed
    env.update(extra)
    return env


def _run(script: Path, target: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), str(target)],
        env=_offline_env(**extra),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )


def _files(root: Path) -> list[str]:
    """Every path under root (relative), hidden ones included; [] if root is absent."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def fake_gdown(tmp_path) -> Path:
    path = tmp_path / "fake_gdown"
    path.write_text(FAKE_GDOWN)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    "script, words",
    [
        (
            PRETRAINED,
            ["patch2pix_pretrained.pth", "ncn_ivd_5ep.pth", "1ZbJIE0LcZ3Oti-h8zU72JRL7LryVxJOh"],
        ),
        (PAIRS, ["1u8sfc23c9ZhXSA_IVct2l_T3JLrS5air", "prep_megadepth_training_pairs"]),
        (VAL, ["reichstag", "temple_nara_japan", "make_synthetic"]),
    ],
    ids=["pretrained", "pairs", "val"],
)
def test_fails_cleanly_offline(script, words, tmp_path):
    # a target that does not exist yet is not left behind
    fresh = tmp_path / "fresh"
    res = _run(script, fresh)
    assert res.returncode != 0
    assert "error" in res.stderr and "unreachable" in res.stderr
    for w in words:
        assert w in res.stderr, w
    assert not fresh.exists()
    # an existing target keeps exactly what it had
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "README").write_text("mine")
    res = _run(script, kept)
    assert res.returncode != 0
    assert _files(kept) == ["README"]


def test_pretrained_success_and_reuse(tmp_path, fake_gdown):
    target = tmp_path / "w"
    res = _run(PRETRAINED, target, PATCH2PIX_GDOWN=str(fake_gdown), FAKE_MODE="pth")
    assert res.returncode == 0, res.stderr
    assert _files(target) == ["ncn_ivd_5ep.pth", "patch2pix_pretrained.pth"]
    assert (target / "ncn_ivd_5ep.pth").read_bytes().startswith(b"PK")
    res = _run(PRETRAINED, target, PATCH2PIX_GDOWN=str(fake_gdown), FAKE_MODE="html")
    assert res.returncode == 0 and res.stdout.count("exists, kept") == 2


@pytest.mark.parametrize("mode, message", [("partial", "could not download"), ("html", "web page")])
def test_pretrained_bad_download_leaves_nothing(tmp_path, fake_gdown, mode, message):
    target = tmp_path / "w"
    target.mkdir()
    res = _run(PRETRAINED, target, PATCH2PIX_GDOWN=str(fake_gdown), FAKE_MODE=mode)
    assert res.returncode != 0 and message in res.stderr
    assert _files(target) == []


@pytest.mark.parametrize("mode", ["npy", "tgz"])
def test_pairs_success(tmp_path, fake_gdown, mode):
    target = tmp_path / "p"
    res = _run(PAIRS, target, PATCH2PIX_GDOWN=str(fake_gdown), FAKE_MODE=mode)
    assert res.returncode == 0, res.stderr
    assert _files(target) == ["megadepth_pairs.fake.npy"]
    res = _run(PAIRS, target, PATCH2PIX_GDOWN=str(fake_gdown), FAKE_MODE="html")
    assert res.returncode != 0 and "web page" in res.stderr
    assert _files(target) == ["megadepth_pairs.fake.npy"]
    res = _run(PAIRS, target, PATCH2PIX_GDOWN=str(fake_gdown), FAKE_MODE="partial")
    assert res.returncode != 0 and "could not download" in res.stderr
    assert _files(target) == ["megadepth_pairs.fake.npy"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_val_success_from_local_archive(tmp_path):
    from data_pairs.make_synthetic import make_val_scene

    src = tmp_path / "src"
    make_val_scene(
        src,
        "tiny_scene",
        0,
        seed=1,
        n_images=3,
        width=64,
        height=48,
        n_points=300,
        supersample=1,
        portrait_every=0,
    )
    archives = tmp_path / "archives"
    archives.mkdir()
    with tarfile.open(archives / "tiny_scene.tar.gz", "w:gz") as tar:
        tar.add(src / "immatch_benchmark" / "val_dense" / "tiny_scene", arcname="tiny_scene")
    (archives / "broken.tar.gz").write_bytes(b"not a tar archive")
    target = tmp_path / "val"
    env = {"PATCH2PIX_VAL_URL": archives.as_uri(), "PATCH2PIX_VAL_SCENES": "tiny_scene"}
    res = _run(VAL, target, **env)
    assert res.returncode == 0, res.stderr
    sparse = target / "tiny_scene" / "dense" / "sparse"
    ov = np.load(sparse / "ov_pairs.npy", allow_pickle=True).item()
    assert sorted(ov) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert len(list((target / "tiny_scene" / "dense" / "images").glob("*.jpg"))) == 3
    before = _files(target)
    env["PATCH2PIX_VAL_SCENES"] = "tiny_scene broken"
    res = _run(VAL, target, **env)
    assert res.returncode != 0
    assert "tiny_scene exists, kept" in res.stdout and "not a valid" in res.stderr
    assert _files(target) == before
