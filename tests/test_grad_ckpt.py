"""--grad_ckpt: the regressor chunks recomputed in backward give the same step as without.

Compared on the recorded `train_step` batch (testvectors.md; 2,464 anchor rows per regressor,
i.e. several chunks) and with chunk sizes whose bounds include a joined left-over row:
loss terms, every gradient, the parameters after one Adam step and the BatchNorm running
statistics (which a recomputed forward in train mode would otherwise update twice).
"""

from __future__ import annotations

import torch
from conftest import rule_training_net

from networks.patch2pix import Patch2Pix
from utils.train.losses import LossConfig
from utils.train.trainer import train_step

SMALL_RC = dict(
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
# Rectified pair (x2ᵀ F x1 = y1 − y2) for the synthetic batch.
F_RECT = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])


def training_net(grad_ckpt: bool, regr_batch: int, rc: dict = SMALL_RC) -> Patch2Pix:
    """The recorded model (weights by the rule) with `rc` regressors and Adam, in train mode."""
    return rule_training_net(rc, grad_ckpt=grad_ckpt, regr_batch=regr_batch)


def recorded_loss_cfg(refvec: dict) -> LossConfig:
    a = refvec["train_step"]["args"]
    return LossConfig(
        cls_dthres=tuple(a["cls_dthres"]),
        epi_dthres=tuple(a["epi_dthres"]),
        weight_cls=a["weight_cls"],
        weight_epi=tuple(a["weight_epi"]),
    )


def one_step(net: Patch2Pix, batch: dict, cfg: LossConfig, ptmax: int):
    """One train_step; returns the loss terms and a copy of every gradient."""
    torch.manual_seed(0)  # ptmax sampling
    out, _ = train_step(net, batch, cfg, 2, ptmax)
    grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    return out.terms(), grads


def assert_same_step(net0, net1, t0, t1, g0, g1, n_chunks: int) -> None:
    for k in ("cls_mid", "cls_fine", "epi_mid", "epi_fine", "loss"):
        torch.testing.assert_close(t1[k], t0[k], rtol=1e-6, atol=0, msg=k)
    assert set(g0) == set(g1)
    assert any(k.startswith("regress_mid.") for k in g1)  # mid level trained through fine
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-7, msg=k)
    sd0, sd1 = net0.state_dict(), net1.state_dict()
    for k in sd0:  # weights after the Adam step, BN running statistics, step counters
        torch.testing.assert_close(sd1[k], sd0[k], rtol=1e-5, atol=1e-7, msg=k)
        if k.endswith("num_batches_tracked") and k.startswith("regress_"):
            assert int(sd1[k]) == n_chunks, k  # one update per chunk, not two


def test_recorded_batch_same_step_with_and_without_checkpointing(refvec):
    """testvectors.md `train_step` (one of its two identical pairs): 2,464 anchor rows per
    regressor, chunks [1200, 1200, 64]."""
    ts = refvec["train_step"]
    rc = dict(refvec["model_eval"]["regressor_config"], panc=ts["args"]["panc"])
    batch = {"src_im": ts["src_im"][:1], "pos_im": ts["pos_im"][:1], "F": ts["F"][:1]}
    cfg = recorded_loss_cfg(refvec)
    net0, net1 = training_net(False, 1200, rc), training_net(True, 1200, rc)
    t0, g0 = one_step(net0, batch, cfg, ts["args"]["ptmax"])
    t1, g1 = one_step(net1, batch, cfg, ts["args"]["ptmax"])
    # the original's recorded loss is reproduced with checkpointing
    torch.testing.assert_close(t1["loss"].reshape(1), ts["loss_pair"], rtol=1e-4, atol=0)
    assert_same_step(net0, net1, t0, t1, g0, g1, n_chunks=3)


def synthetic_batch(b: int = 2) -> dict:
    g = torch.Generator().manual_seed(3)
    im = torch.randn(b, 3, 64, 96, generator=g)
    shifted = torch.roll(im, shifts=16, dims=3)  # x2 = x1 + 16, y2 = y1: F_RECT holds
    return {"src_im": im, "pos_im": shifted, "F": F_RECT.expand(b, 3, 3)}


def test_rows_spanning_several_chunks_with_a_joined_left_over_row():
    """2 pairs × 8 coarse × 8 anchors = 64 rows per image, regr_batch 7: chunks of 7 and a
    last one of 8 (64 = 9·7 + 1), nine per image and level."""
    batch = synthetic_batch()
    cfg = LossConfig(cls_dthres=(1e4, 1e4), epi_dthres=(1e4, 1e4))
    net0, net1 = training_net(False, 7), training_net(True, 7)
    t0, g0 = one_step(net0, batch, cfg, ptmax=8)
    t1, g1 = one_step(net1, batch, cfg, ptmax=8)
    assert len(t0["cls_mid"]) == 2
    assert_same_step(net0, net1, t0, t1, g0, g1, n_chunks=2 * 9)


def saved_bytes(net: Patch2Pix, batch: dict) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward_train."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net.forward_train(batch["src_im"], batch["pos_im"], ksize=2, ptmax=32)
    return total


def test_checkpointing_keeps_far_fewer_activations():
    batch = synthetic_batch(1)
    full = saved_bytes(training_net(False, 1200), batch)
    ckpt = saved_bytes(training_net(True, 1200), batch)
    # 256 rows: the patches alone are 256 × 518 × 16 × 16 floats (136 MB) per level; with
    # checkpointing only each chunk's (n, 4) input matches are kept
    assert full > 2 * 256 * 518 * 256 * 4 and ckpt < full / 20, (full, ckpt)


def test_no_recomputation_in_eval_or_without_grad():
    batch = synthetic_batch(1)
    net = training_net(True, 7).eval()
    outs = []
    for ckpt in (True, False):
        net.grad_ckpt = ckpt
        torch.manual_seed(0)
        with torch.no_grad():
            outs.append(net.forward_train(batch["src_im"], batch["pos_im"], ksize=2, ptmax=8))
    for x, y in zip(*outs):
        torch.testing.assert_close(x[0], y[0], rtol=0, atol=0)
