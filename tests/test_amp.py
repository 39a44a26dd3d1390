"""--amp: bf16 autocast over the regressors on CPU, fp16 refused off CUDA, float32 checkpoints.

On the recorded `train_step` batch (testvectors.md) bf16 gives the fp32 loss terms within
3 % and gradients pointing the same way (cosine > 0.80 for every regressor tensor with a
non-zero true gradient, > 0.98 for the output layers). Issue 8 asked for 0.99: no bf16
placement reaches it on this batch, because rounding the operands at all flips discrete
decisions (benchmarks/amp_gradient_study.py, benchmarks/RESULTS.md "bf16 gradient
direction (issue 8)"); a short overfit run on a tiny batch lowers the loss as fp32 does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import recorded_train_setup, rule_training_net

from networks.patch2pix import Patch2Pix
from utils.common.cli import UsageError
from utils.common.setup_helper import load_checkpoint_safe
from utils.train.amp import MixedPrecision
from utils.train.cli import parse_args
from utils.train.experiment import make_tags
from utils.train.losses import LossConfig
from utils.train.trainer import train_step

REPO = Path(__file__).resolve().parents[1]
F_RECT = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])


def step(net: Patch2Pix, batch: dict, cfg: LossConfig, mode: str, ptmax: int):
    torch.manual_seed(0)
    out, _ = train_step(net, batch, cfg, 2, ptmax, amp=MixedPrecision.create(mode, net.device))
    grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    return out.terms(), grads


def test_bf16_close_to_fp32_on_the_recorded_batch(refvec):
    rc, batch, cfg, ptmax = recorded_train_setup(refvec)
    nets = {m: rule_training_net(rc) for m in ("off", "bf16")}
    t32, g32 = step(nets["off"], batch, cfg, "off", ptmax)
    t16, g16 = step(nets["bf16"], batch, cfg, "bf16", ptmax)
    torch.testing.assert_close(
        t32["loss"].reshape(1), refvec["train_step"]["loss_pair"], rtol=1e-4, atol=0
    )
    for k in ("cls_mid", "cls_fine", "epi_mid", "epi_fine", "loss"):
        rel = float((t16[k] - t32[k]).abs().max() / t32[k].abs().max())
        assert rel < 0.03, (k, float(t16[k].sum()), float(t32[k].sum()))
    regs = [k for k in g32 if k.startswith(("regress_mid.", "regress_fine."))]
    assert len(regs) == 2 * 16  # every weight and bias of both regressors has a gradient
    # Biases right before a BatchNorm (and the last BN bias before the max-pool, whose
    # gradient cancels over the chunk) have a true gradient of ~0: fp32 gives rounding noise
    # there (norm < 1e-2 here), so their direction means nothing.
    live = [k for k in regs if float(g32[k].norm()) > 1e-2]
    assert len(live) >= 2 * 12
    for k in live:
        cos = torch.nn.functional.cosine_similarity(g16[k].flatten(), g32[k].flatten(), dim=0)
        # Measured (python -m benchmarks.amp_gradient_study, RESULTS.md "bf16 gradient
        # direction (issue 8)"): 0.86-0.96 for the convolutions and their BatchNorms (minimum
        # 0.859, fine.conv.1.b), 0.94-1.00 for the FC layers and their BatchNorms, >= 0.990
        # for the output layers. 0.99 is out of any bf16 placement's reach on this batch:
        # float32 arithmetic with only the regressor weights rounded to bf16 gives 0.888, a
        # float32 run with weights perturbed by 1e-3 gives 0.954, because integer fine patch
        # positions (15 % of rows move under bf16), max-pool argmaxes and Sampson memberships
        # flip; with those pinned, weight rounding gives 0.991. BatchNorm in float32 does not
        # help (0.868), float32 gradients between layers add ~0.01. The floor leaves room
        # for other bf16 kernels (this CPU has AVX-512 BF16; the H100 gives 0.79 against
        # its TF32 step, tests/test_cuda.py).
        floor = 0.98 if ".fc.6." in k else 0.80
        assert cos > floor, (k, float(cos))
    # parameters, gradients and optimiser states stay float32
    assert all(p.dtype == torch.float32 for p in nets["bf16"].parameters())
    assert all(g.dtype == torch.float32 for g in g16.values())
    for st in nets["bf16"].optimizer.state.values():
        assert st["exp_avg"].dtype == torch.float32


@pytest.mark.slow
def test_short_overfit_lowers_the_loss_like_fp32():
    """10 Adam steps on one tiny pair: bf16 lowers the loss as fp32 does."""
    rc = dict(
        conv_dims=[32, 32],
        conv_kers=[3, 3],
        conv_strs=[2, 1],
        fc_dims=[32, 16],
        feat_comb="pre",
        psize=[16, 16],
        pshift=8,
        panc=8,
        shared=False,
    )
    g = torch.Generator().manual_seed(5)
    im = torch.randn(1, 3, 64, 96, generator=g)
    batch = {"src_im": im, "pos_im": torch.roll(im, 16, dims=3), "F": F_RECT}
    cfg = LossConfig()
    curves = {}
    for mode in ("off", "bf16"):
        net = rule_training_net(rc, lr=1e-3)
        curves[mode] = [float(step(net, batch, cfg, mode, ptmax=16)[0]["loss"]) for _ in range(10)]
    drops = {}
    for mode, c in curves.items():
        drops[mode] = sum(c[-3:]) / 3 / c[0]  # mean of the last three steps / first loss
        assert drops[mode] < 0.6, (mode, c)
    # a tiny batch (128 rows) magnifies bf16 rounding: a fine row's patch moves by a pixel
    # when its mid match crosses an integer, and Sampson selections flip; still close
    assert abs(curves["bf16"][0] - curves["off"][0]) < 0.15 * curves["off"][0], curves
    assert abs(drops["bf16"] - drops["off"]) < 0.15, (drops, curves)


def test_fp16_needs_cuda_and_bad_modes_are_refused():
    with pytest.raises(UsageError, match=r"^--amp fp16 needs a CUDA device.*--amp bf16$"):
        MixedPrecision.create("fp16", torch.device("cpu"))
    with pytest.raises(UsageError, match="--amp must be one of off, bf16, fp16"):
        MixedPrecision.create("fp8", torch.device("cpu"))
    off = MixedPrecision.create("off", torch.device("cpu"))
    with off.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with MixedPrecision.create("bf16", torch.device("cpu")).autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")


@pytest.mark.slow
def test_training_cli_bf16_with_grad_ckpt_writes_float32_checkpoints(train_data, tmp_path):
    """The training command with --amp bf16 --grad_ckpt: the checkpoint is the original's
    format with float32 weights (docs/file-formats.md §5)."""
    args = [
        "--data_root",
        str(train_data / "data"),
        "--pair_root",
        str(train_data / "pairs"),
        "-o",
        str(tmp_path),
        "--change_stride",
        "--conv_dims",
        "8",
        "8",
        "--fc_dims",
        "8",
        "8",
        "--ptmax",
        "20",
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
        "--random_backbone",
        "--no_val",
        "--amp",
        "bf16",
        "--grad_ckpt",
        "--regr_batch",
        "50",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "train_patch2pix", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = parse_args(args)
    ckpt = load_checkpoint_safe(make_tags(a).exp_dir(a.out_dir) / "last_ckpt.pth")
    assert set(ckpt) >= {
        "last_epoch",
        "best_vals",
        "backbone",
        "feat_idx",
        "change_stride",
        "regressor_config",
        "state_dict",
        "optim",
    }
    for k, v in ckpt["state_dict"].items():
        assert v.dtype == (torch.long if k.endswith("num_batches_tracked") else torch.float32), k
    proc = subprocess.run(
        [sys.executable, "-m", "train_patch2pix", *args[:-5], "--amp", "fp16", "--device", "cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("train_patch2pix: error: --amp fp16 needs a CUDA device")
    )
