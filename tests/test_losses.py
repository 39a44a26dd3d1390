"""Training loss and metrics (docs/training.md §3 steps 4–6) on hand-built match sets."""

from __future__ import annotations

import math

import pytest
import torch

from utils.train.losses import (
    SKIP_NO_EPI_ROWS,
    SKIP_NO_POSITIVE,
    LossConfig,
    batch_loss,
    weighted_bce,
)
from utils.train.metrics import RunningMeans, classification_metrics, step_metrics

# Rectified stereo: x2ᵀ F x1 = y1 − y2 and every gradient term is 1, so the Sampson
# distance of a row is (y1 − y2)² / 2 exactly (up to the 1e-8 of the denominator).
F_RECT = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def rows(dys: list[float], x: float = 10.0, y: float = 20.0) -> torch.Tensor:
    """(N, 4) matches whose Sampson distance under F_RECT is dy² / 2."""
    return torch.tensor([[x, y, x + 3.0, y + dy] for dy in dys], dtype=torch.float32)


def bce(p: float, t: int, w: float) -> float:
    return -w * (t * math.log(p) + (1 - t) * math.log(1 - p))


def pair_a():
    """cdist [0, 8, 200, 2], mdist [0.5, 4.5, 2, 50], fdist [0, 0.5, 2, 4.5]."""
    coarse = rows([0, 4, 20, 2])
    mid = rows([1, 3, 2, 10]).requires_grad_()
    fine = rows([0, 1, 2, 3]).requires_grad_()
    mprob = torch.tensor([0.9, 0.6, 0.2, 0.3], requires_grad=True)
    fprob = torch.tensor([0.7, 0.4, 0.5, 0.1], requires_grad=True)
    return coarse, mid, mprob, fine, fprob


def expected_pair_a(w_fine: float = 1.0, w_mid: float = 1.0) -> dict[str, float]:
    # mid targets [1, 1, 0, 1]: 3 positives, 1 negative -> positives weigh 1/3
    cls_mid = (bce(0.9, 1, 1 / 3) + bce(0.6, 1, 1 / 3) + bce(0.2, 0, 1) + bce(0.3, 1, 1 / 3)) / 4
    # fine targets (mdist < 5) [1, 1, 1, 0]: positives weigh 1/3
    cls_fine = (bce(0.7, 1, 1 / 3) + bce(0.4, 1, 1 / 3) + bce(0.5, 1, 1 / 3) + bce(0.1, 0, 1)) / 4
    epi_mid = (0.5 + 4.5 + 50.0) / 3  # mdist over cdist < 50
    epi_fine = (0.0 + 0.5 + 2.0) / 3  # fdist over mdist < 5
    return {
        "cls_mid": cls_mid,
        "cls_fine": cls_fine,
        "epi_mid": epi_mid,
        "epi_fine": epi_fine,
        "epi": w_mid * epi_mid + w_fine * epi_fine,
    }


def stack_pairs(*pairs):
    return [list(x) for x in zip(*pairs)]


def test_weighted_bce_weights_positives_by_neg_over_pos():
    p = torch.tensor([0.8, 0.3, 0.6, 0.1, 0.9])
    t = torch.tensor([True, False, False, False, True])
    want = bce(0.8, 1, 1.5) + bce(0.3, 0, 1) + bce(0.6, 0, 1) + bce(0.1, 0, 1) + bce(0.9, 1, 1.5)
    assert float(weighted_bce(p, t)) == pytest.approx(want / 5, rel=1e-6)


def test_single_pair_hand_computed():
    coarse, mid, mprob, fine, fprob = pair_a()
    cfg = LossConfig(weight_cls=10.0, weight_epi=(1.0, 1.0))
    out = batch_loss([coarse], [mid], [mprob], [fine], [fprob], F_RECT[None], cfg)
    want = expected_pair_a()
    assert out.kept == [0] and out.skipped == {}
    for k in ("cls_mid", "cls_fine", "epi_mid", "epi_fine", "epi"):
        assert float(out.terms()[k][0]) == pytest.approx(want[k], rel=1e-5), k
    total = 10.0 * (want["cls_mid"] + want["cls_fine"]) + want["epi"]
    assert float(out.loss.detach()) == pytest.approx(total, rel=1e-5)
    out.loss.backward()
    # the epipolar terms pull the mid / fine rows, the BCE the probabilities
    assert mid.grad.abs().sum() > 0 and fine.grad.abs().sum() > 0
    assert mprob.grad.abs().sum() > 0 and fprob.grad.abs().sum() > 0
    # mid row 2 (cdist 200) is in no epipolar row set: no gradient on its coordinates
    assert torch.all(mid.grad[2] == 0)


def test_weight_epi_order_is_fine_then_mid():
    coarse, mid, mprob, fine, fprob = pair_a()
    cfg = LossConfig(weight_cls=0.0, weight_epi=(2.0, 3.0))
    out = batch_loss([coarse], [mid], [mprob], [fine], [fprob], F_RECT[None], cfg)
    want = expected_pair_a(w_fine=2.0, w_mid=3.0)
    assert float(out.terms()["epi"][0]) == pytest.approx(want["epi"], rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(want["epi"], rel=1e-5)


def test_skipped_pairs_and_batch_mean():
    a = pair_a()
    # no fine positive: every mid row is 4 px off (mdist 8 >= 5)
    b = (
        rows([0, 0]),
        rows([4, 4]),
        torch.tensor([0.5, 0.5]),
        rows([0, 0]),
        torch.tensor([0.5, 0.5]),
    )
    # no mid positive: every anchor is 20 px off (cdist 200)
    c = (
        rows([20, 20]),
        rows([0, 0]),
        torch.tensor([0.5, 0.5]),
        rows([0, 0]),
        torch.tensor([0.5, 0.5]),
    )
    # second copy of pair a with different probabilities
    d = list(pair_a())
    d[2] = torch.tensor([0.5, 0.5, 0.5, 0.5])
    d[4] = torch.tensor([0.5, 0.5, 0.5, 0.5])
    args = stack_pairs(a, b, c, d)
    cfg = LossConfig()
    out = batch_loss(*args, F_RECT.expand(4, 3, 3), cfg)
    assert out.kept == [0, 3]
    assert out.skipped == {1: SKIP_NO_POSITIVE, 2: SKIP_NO_POSITIVE}
    want_a = expected_pair_a()
    # probabilities 0.5 everywhere: BCE = log 2 · (sum of weights) / N = log 2 · 2 / 4
    cls_d = 2 * math.log(2) * 2 / 4
    cls_mean = ((want_a["cls_mid"] + want_a["cls_fine"]) + cls_d) / 2
    assert float(out.loss.detach()) == pytest.approx(10 * cls_mean + want_a["epi"], rel=1e-5)
    assert out.cls_mid.shape == (2,)
    # metrics still see every pair's rows
    assert len(out.dists) == 4


def test_skip_when_no_epipolar_rows():
    coarse, mid, mprob, fine, fprob = pair_a()
    # positives exist (cls thresholds default) but the epipolar thresholds select nothing
    cfg = LossConfig(epi_dthres=(1e-3, 1e-3))
    coarse = coarse.clone()
    coarse[:, 3] += 0.5  # cdist >= 0.125 everywhere
    out = batch_loss([coarse], [mid], [mprob], [fine], [fprob], F_RECT[None], cfg)
    assert out.kept == [] and out.skipped == {0: SKIP_NO_EPI_ROWS}


def test_one_empty_epipolar_set_counts_zero():
    coarse, mid, mprob, fine, fprob = pair_a()
    # fine epipolar rows need mdist < 0.1: none -> epi_fine = 0, pair kept
    cfg = LossConfig(epi_dthres=(50.0, 0.1))
    out = batch_loss([coarse], [mid], [mprob], [fine], [fprob], F_RECT[None], cfg)
    assert out.kept == [0]
    assert float(out.terms()["epi_fine"][0]) == 0.0
    assert float(out.terms()["epi"][0]) == pytest.approx(55.0 / 3, rel=1e-5)


def test_all_skipped_gives_differentiable_zero():
    mprob = torch.tensor([0.3, 0.6], requires_grad=True)
    fprob = torch.tensor([0.3, 0.6], requires_grad=True)
    out = batch_loss(
        [rows([20, 20])],
        [rows([0, 0])],
        [mprob],
        [rows([0, 0])],
        [fprob],
        F_RECT[None],
        LossConfig(),
    )
    assert out.kept == [] and float(out.loss.detach()) == 0.0
    out.loss.backward()
    assert torch.all(mprob.grad == 0) and torch.all(fprob.grad == 0)
    assert out.cls_mid.shape == (0,)


def test_classification_metrics():
    p = torch.tensor([0.9, 0.8, 0.2, 0.7, 0.1, 0.4])
    t = torch.tensor([True, True, True, False, False, False])
    m = classification_metrics(p, t, 0.5)  # TP 2, FN 1, FP 1, TN 2
    assert m["rec"] == pytest.approx(2 / 3)
    assert m["prec"] == pytest.approx(2 / 3)
    assert m["spec"] == pytest.approx(2 / 3)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 / 3)
    assert math.isnan(classification_metrics(p, torch.zeros(6, dtype=torch.bool), 0.5)["rec"])


def test_step_metrics_definitions():
    coarse, mid, mprob, fine, fprob = pair_a()
    out = batch_loss([coarse], [mid], [mprob], [fine], [fprob], F_RECT[None], LossConfig())
    m = step_metrics(out, [mprob], [fprob], 0.5)
    assert m["cls_ratios"] == pytest.approx(
        {"mpos_gt": 0.75, "mpos_pred": 0.5, "fpos_gt": 0.75, "fpos_pred": 0.25}
    )
    md = m["match_dist"]
    assert md["cmid_gt"] == pytest.approx((0 + 8 + 2) / 3, rel=1e-5)  # mid gt rows 0, 1, 3
    assert md["mmid_gt"] == pytest.approx((0.5 + 4.5 + 50) / 3, rel=1e-5)
    assert md["mfid_gt"] == pytest.approx((0.5 + 4.5 + 2) / 3, rel=1e-5)  # fine gt rows 0-2
    assert md["ffid_gt"] == pytest.approx((0 + 0.5 + 2) / 3, rel=1e-5)
    assert md["cmid_pred"] == pytest.approx((0 + 8) / 2, rel=1e-5)  # mid prob > .5: rows 0, 1
    assert md["mmid_pred"] == pytest.approx((0.5 + 4.5) / 2, rel=1e-5)
    assert md["mfid_pred"] == pytest.approx(0.5, rel=1e-5)  # fine prob > .5: row 0
    assert md["ffid_pred"] == pytest.approx(0.0, abs=1e-6)
    # pair scores: probabilities of positive / negative targets, both levels pooled
    assert m["pair_scores"]["pos"] == pytest.approx((0.9 + 0.6 + 0.3 + 0.7 + 0.4 + 0.5) / 6)
    assert m["pair_scores"]["neg"] == pytest.approx((0.2 + 0.1) / 2)
    assert m["loss"]["pair"] == pytest.approx(float(out.loss.detach()))
    assert set(m["loss"]) == {"pair", "cls_mid", "cls_fine", "epi_mid", "epi_fine"}


def test_running_means_ignore_nan():
    rm = RunningMeans()
    rm.update({"a": {"x": 1.0, "y": float("nan")}})
    rm.update({"a": {"x": 3.0}})
    assert rm.means() == {"a": {"x": 2.0}}
    rm.reset()
    assert not rm and rm.means() == {}


# ---------------------------------------------------------------- reference training step
def test_train_step_reference(refvec):
    """Per-pair terms and total of the recorded training step (testvectors.md `train_step`).

    The recorded batch holds two identical pairs; in train mode BatchNorm normalises with the
    batch statistics, which a duplicated batch leaves unchanged (mean and biased variance),
    and the regressor chunks are per image, so one pair reproduces both rows at half the cost.
    """
    from argparse import Namespace

    from conftest import rule_state_dict

    from networks.patch2pix import Patch2Pix

    ts = refvec["train_step"]
    a = ts["args"]
    rc = dict(refvec["model_eval"]["regressor_config"], panc=a["panc"])
    cfg = Namespace(
        device="cpu",
        training=False,
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=Namespace(**rc),
        regr_batch=1200,
        weights_dict=None,
        imagenet_init=False,
    )
    net = Patch2Pix(cfg)
    net.load_state_dict(rule_state_dict(net))
    net.train()
    assert torch.equal(ts["src_im"][0], ts["src_im"][1]) and torch.equal(ts["F"][0], ts["F"][1])
    with torch.no_grad():
        out = net.forward_train(
            ts["src_im"][:1], ts["pos_im"][:1], ksize=a["ksize"], ptmax=a["ptmax"]
        )
    loss_cfg = LossConfig(
        cls_dthres=tuple(a["cls_dthres"]),
        epi_dthres=tuple(a["epi_dthres"]),
        weight_cls=a["weight_cls"],
        weight_epi=tuple(a["weight_epi"]),
    )
    res = batch_loss(*out, ts["F"][:1], loss_cfg).terms()
    for k in ("cls_mid", "cls_fine", "epi_mid", "epi_fine"):
        torch.testing.assert_close(res[k], ts[k][:1], rtol=1e-4, atol=0, msg=k)
    torch.testing.assert_close(res["loss"].reshape(1), ts["loss_pair"], rtol=1e-4, atol=0)
