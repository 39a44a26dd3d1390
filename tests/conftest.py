"""Shared test helpers and fixtures.

Thread count, the reference test vectors and their weight rule; a free loopback port, a
real Visdom server (the project's offline command) and a tiny synthetic training set with
its pair file, shared by the end-to-end tests (no test module imports another).
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
TESTVECTORS = REPO.parent / "shared" / "testvectors" / "patch2pix_reference.pt"


def rule_tensor(key: str, shape, dtype=torch.float32) -> torch.Tensor:
    """Regenerate one weight with the rule of spec/testvectors.md."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    r = torch.rand(tuple(shape), generator=gen, dtype=torch.float32)
    if key.startswith("ncn.") or key.startswith("conv."):
        out = r * 0.1 if key.endswith("weight") else r * 0.01
    elif len(shape) >= 2:
        out = (r - 0.5) * 2 * math.sqrt(3 / math.prod(shape[1:]))
    elif key.endswith("running_var") or key.endswith(".weight"):
        out = 0.5 + r
    else:
        out = (r - 0.5) * 0.2
    return out.to(dtype)


def rule_state_dict(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A state_dict for `module` whose every entry follows the weight rule.

    `prefix` is prepended to each key before generating (e.g. 'ncn.' for a bare
    NeighConsensus whose keys are recorded as 'ncn.conv.0.weight' in a whole model).
    """
    return {k: rule_tensor(prefix + k, tuple(v.shape)) for k, v in module.state_dict().items()}


_RULE_NETS: dict[str, torch.nn.Module] = {}


def rule_training_net(
    rc: dict,
    device: str | torch.device = "cpu",
    grad_ckpt: bool = False,
    regr_batch: int = 1200,
    lr: float = 5e-4,
) -> torch.nn.Module:
    """A Patch2Pix with the rule weights (testvectors.md) and `rc` regressors, on `device`,
    in train mode with its Adam optimiser (training's freezing). The model is built and
    filled once per `rc` (the slow part) and deep-copied per call."""
    import copy
    from argparse import Namespace

    from networks.patch2pix import Patch2Pix

    optim = Namespace(
        opt="adam",
        lr_init=lr,
        weight_decay=0,
        lr_decay=None,
        optimizer_dict=None,
        lr_scheduler_dict=None,
    )
    cfg = Namespace(
        training=False,
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=Namespace(**rc),
        regr_batch=regr_batch,
        weights_dict=None,
        imagenet_init=False,
        grad_ckpt=grad_ckpt,
        freeze_feat=87,
        start_epoch=0,
        optim_config=optim,
    )
    key = repr(sorted(rc.items()))
    if key not in _RULE_NETS:
        base = Patch2Pix(cfg)
        base.load_state_dict(rule_state_dict(base))
        _RULE_NETS[key] = base
    net = copy.deepcopy(_RULE_NETS[key]).to(device)
    net.grad_ckpt, net.regr_batch = grad_ckpt, regr_batch
    net.set_optimizer(cfg)
    return net.train()


def recorded_train_setup(refvec: dict) -> tuple[dict, dict, object, int]:
    """testvectors.md `train_step`: its regressor config (with its panc), one of its two
    identical pairs as a batch, its LossConfig and its ptmax."""
    from utils.train.losses import LossConfig

    ts = refvec["train_step"]
    a = ts["args"]
    rc = dict(refvec["model_eval"]["regressor_config"], panc=a["panc"])
    cfg = LossConfig(
        cls_dthres=tuple(a["cls_dthres"]),
        epi_dthres=tuple(a["epi_dthres"]),
        weight_cls=a["weight_cls"],
        weight_epi=tuple(a["weight_epi"]),
    )
    batch = {"src_im": ts["src_im"][:1], "pos_im": ts["pos_im"][:1], "F": ts["F"][:1]}
    return rc, batch, cfg, a["ptmax"]


@pytest.fixture(scope="session")
def refvec() -> dict:
    if not TESTVECTORS.exists():
        pytest.skip(f"reference test vectors not found at {TESTVECTORS} (../shared is absent)")
    return torch.load(TESTVECTORS, weights_only=True)


PAIR_FILE = "megadepth_pairs.ov0.35_imrat1.5.pair500.excl_test.npy"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port nothing listens on (at the time of the call)."""
    return _free_port()


@pytest.fixture(scope="session")
def visdom_server(tmp_path_factory):
    """(port, env_path) of a Visdom server on 127.0.0.1, started with the project's command.

    ``python -m utils.common.visdom_server`` serves the page from the installed npm assets
    (``scripts/setup_env.sh``); environments are saved under ``env_path``.
    """
    env_path = tmp_path_factory.mktemp("visdom_env")
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "utils.common.visdom_server",
            "--port",
            str(port),
            "--hostname",
            "127.0.0.1",
            "--env_path",
            str(env_path),
            "--bind_local",
            "--logging_level",
            "WARNING",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"visdom server died: {proc.stderr.read().decode()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("visdom server did not start in 30 s")
    yield port, env_path
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> Path:
    """Tiny synthetic MegaDepth + validation scenes (240x160) and their training-pair file.

    Layout: ``<root>/data`` (``--data_root``) and ``<root>/pairs/{PAIR_FILE}``
    (``--pair_root``).
    """
    from data_pairs import make_synthetic, prep_megadepth_training_pairs

    root = tmp_path_factory.mktemp("train_data")
    rc = make_synthetic.main(
        [
            "--out",
            str(root / "data"),
            "--scenes",
            "1",
            "--images_per_scene",
            "4",
            "--val_scenes",
            "1",
            "--val_images",
            "4",
            "--width",
            "240",
            "--height",
            "160",
            "--points",
            "400",
            "--supersample",
            "1",
            "--portrait_every",
            "0",
        ]
    )
    assert rc == 0
    rc = prep_megadepth_training_pairs.main(
        ["--base_dir", str(root / "data/MegaDepth_undistort"), "--save_dir", str(root / "pairs")]
    )
    assert rc == 0 and (root / "pairs" / PAIR_FILE).is_file()
    return root


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A Patch2Pix checkpoint (original format) with predictable matching behaviour.

    A random backbone, an identity neighbourhood-consensus filter (coarse matches are the
    mutual nearest neighbours of the features) and regressors whose offsets are exactly
    zero (probability ~0.98): on a pair whose second image is the first one enlarged 1.5x,
    every match satisfies (x2, y2) = 1.5 (x1, y1) in original pixels.
    """
    from argparse import Namespace

    from networks.patch2pix import Patch2Pix

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.manual_seed(0)
    rc = Namespace(
        conv_kers=[3, 3],
        conv_dims=[8, 8],
        conv_strs=[2, 1],
        fc_dims=[8],
        feat_comb="pre",
        psize=[16, 16],
        pshift=8,
        panc=1,
        shared=False,
    )
    net = Patch2Pix(
        Namespace(
            training=False,
            backbone="ResNet34",
            change_stride=True,
            feat_idx=[0, 1, 2, 3],
            regressor_config=rc,
            regr_batch=1200,
            weights_dict=None,
            imagenet_init=False,
        )
    )
    sd = net.state_dict()
    for k in ("ncn.conv.0", "ncn.conv.2"):  # identity 4D filter: centre tap 1, channel 0
        sd[f"{k}.weight"].zero_()
        sd[f"{k}.bias"].zero_()
        sd[f"{k}.weight"][1, 0, 0, 1, 1, 1] = 1.0
    for reg in ("regress_mid", "regress_fine"):  # offset 16 tanh(relu(b)) - 8 = 0, p ~ 0.98
        last = max(int(k.split(".")[2]) for k in sd if k.startswith(f"{reg}.fc."))
        sd[f"{reg}.fc.{last}.weight"].zero_()
        sd[f"{reg}.fc.{last}.bias"].copy_(torch.tensor([math.atanh(0.5)] * 4 + [4.0]))
    torch.save(
        {
            "last_epoch": 0,
            "best_vals": [math.inf, 0.0, math.inf, 0.0],
            "backbone": "ResNet34",
            "feat_idx": [0, 1, 2, 3],
            "change_stride": True,
            "regressor_config": net.regressor_config,
            "state_dict": sd,
        },
        path,
    )
    return path


def write_scaled_pair(root: Path, size: tuple[int, int], scale: float = 1.5) -> tuple[Path, Path]:
    """skimage's astronaut at `size` (W, H) as ``a.png`` and the same picture enlarged by
    `scale` as ``b.png`` under `root`: with the tiny_ckpt model, (x2, y2) = scale (x1, y1)."""
    from PIL import Image
    from skimage import data

    im = Image.fromarray(data.astronaut()).resize(size, Image.Resampling.BICUBIC)
    p1, p2 = root / "a.png", root / "b.png"
    im.save(p1)
    im.resize((round(size[0] * scale), round(size[1] * scale)), Image.Resampling.BICUBIC).save(p2)
    return p1, p2


@pytest.fixture(scope="module")
def tiny_net(tiny_ckpt: Path) -> torch.nn.Module:
    """tiny_ckpt loaded on the CPU (one per test module)."""
    from utils.eval.model_helper import load_model

    return load_model(tiny_ckpt, device="cpu", lprint=lambda *a: None)
