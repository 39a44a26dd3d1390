"""Optimiser set-up: --lr_decay parsing, backbone freezing, schedules resumed
at an epoch."""

import pytest
import torch

from networks.optim import fast_forward, freeze_backbone, parse_lr_decay
from networks.resnet import ResNet34


def test_parse_lr_decay_forms():
    assert parse_lr_decay(None) is None
    assert parse_lr_decay(["multistep", "0.2", "5"]) == ("multistep", 0.2, [5])
    assert parse_lr_decay(["multistep", "0.5", "3", "8"]) == ("multistep", 0.5, [3, 8])
    assert parse_lr_decay(["step", "0.1", "10"]) == ("step", 0.1, [10])
    for bad in (
        ["multistep"],
        ["step", "0.1", "2", "3"],
        ["cosine", "0.1", "2"],
        ["step", "x", "2"],
        ["multistep", "1.5", "2"],
        ["step", "0.5", "0"],
    ):
        with pytest.raises(ValueError, match="--lr_decay"):
            parse_lr_decay(bad)


@pytest.mark.parametrize("freeze,trainable", [(87, 0), (0, 87), (60, 27)])
def test_freeze_backbone_counts(freeze, trainable):
    net = ResNet34(change_stride=True)
    params = list(net.parameters())
    assert len(params) > 87  # layer4 follows
    out = freeze_backbone(net, freeze)
    assert len(out) == trainable
    assert all(not p.requires_grad for p in params[87:])  # layer4 always frozen
    assert [p.requires_grad for p in params[:87]] == [i >= freeze for i in range(87)]


def make_sched(kind, steps):
    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(lin.parameters(), lr=0.1)
    if kind == "multistep":
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, steps, 0.5)
    return opt, torch.optim.lr_scheduler.StepLR(opt, steps[0], 0.5)


@pytest.mark.parametrize("kind,steps", [("multistep", [2, 5]), ("step", [3])])
def test_fast_forward_equals_stepping(kind, steps):
    for epoch in range(8):
        opt, sch = make_sched(kind, steps)
        for _ in range(epoch):
            opt.step()
            sch.step()
        opt2, sch2 = make_sched(kind, steps)
        fast_forward(sch2, opt2, kind, 0.5, steps, epoch)
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
        opt.step(), sch.step(), opt2.step(), sch2.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
