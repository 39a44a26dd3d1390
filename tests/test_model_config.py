"""The model's typed configuration (networks/config.py) and its Namespace boundaries.

The original's Namespaces (the constructor's, a checkpoint's ``regressor_config``) convert
to the dataclasses and back unchanged; checkpoints keep the bytes of their configuration
entries; a model built from either form is the same model; the trainer owns the optimiser
while ``Patch2Pix(training=True)`` still builds its own (docs/architecture.md §5).
"""

import pickle
from argparse import Namespace
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest
import torch

from networks.config import OptimConfig, Patch2PixConfig, RegressorConfig
from networks.patch2pix import Patch2Pix
from utils.common.setup_helper import CheckpointError, load_checkpoint_safe, save_checkpoint_atomic
from utils.eval.model_helper import load_model
from utils.train.cli import build_parser
from utils.train.trainer import (
    StartState,
    build_training,
    checkpoint_dict,
    model_config,
    regressor_config,
)

CPU = torch.device("cpu")
SMALL = ["--conv_dims", "8", "8", "--fc_dims", "8", "8", "--random_backbone"]
# The regressor_config of the released patch2pix_pretrained.pth (docs/file-formats.md §5):
# the training defaults, panc 8, feat_dim of levels 0..3 (3 + 64 + 64 + 128).
RELEASED_RC = Namespace(
    conv_dims=[512, 512],
    conv_kers=[3, 3],
    conv_strs=[2, 1],
    fc_dims=[512, 256],
    feat_comb="pre",
    psize=[16, 16],
    pshift=8,
    panc=8,
    shared=False,
    feat_dim=259,
)


def quiet(*_a):
    pass


def training_namespace(args: Namespace) -> Namespace:
    """The Namespace the training command built the model from before the typed config
    (utils/train/trainer.py, build_model, at commit bf6c3c7), attribute for attribute."""
    return Namespace(
        device=CPU,
        training=True,
        backbone=args.backbone,
        change_stride=args.change_stride,
        feat_idx=list(args.feat_idx),
        regressor_config=regressor_config(args),
        regr_batch=args.regr_batch,
        weights_dict=None,
        freeze_feat=args.freeze_feat,
        grad_ckpt=bool(args.grad_ckpt),
        imagenet_init="download",
        lprint=quiet,
        start_epoch=0,
        optim_config=Namespace(
            opt="adam",
            lr_init=args.lr_init,
            weight_decay=args.weight_decay,
            lr_decay=args.lr_decay,
            optimizer_dict=None,
            lr_scheduler_dict=None,
        ),
    )


ARGVS = [
    [],
    ["--shared", "--change_stride", "-lrd", "step", "0.5", "3", "-wd", "0.1", "--grad_ckpt"],
    ["--feat_idx", "1", "2", "--feat_comb", "post", "--panc", "1", "--regr_batch", "64"],
]


# ---------------------------------------------------------------- Namespace round trips
@pytest.mark.parametrize("argv", ARGVS, ids=["defaults", "shared-lrd", "post-featidx"])
def test_training_namespace_round_trip(argv):
    args = build_parser().parse_args(argv)
    ns = training_namespace(args)
    cfg = Patch2PixConfig.from_namespace(ns)
    back = cfg.to_namespace()
    assert back == ns
    assert list(vars(back)) == list(vars(ns))  # same attribute order
    assert list(vars(back.regressor_config)) == list(vars(ns.regressor_config))
    assert back.weights_dict is None and back.lprint is quiet
    assert Patch2PixConfig.from_namespace(back) == cfg
    # the trainer's typed config is the same, except that it leaves the optimiser to itself
    start = StartState()
    assert model_config(args, CPU, start, lprint=quiet) == replace(cfg, training=False)


def test_released_checkpoint_regressor_config_round_trip():
    rc = RegressorConfig.from_namespace(RELEASED_RC)
    assert rc == RegressorConfig(panc=8, feat_dim=259)  # the defaults are the released model
    back = rc.to_namespace()
    assert back == RELEASED_RC and list(vars(back)) == list(vars(RELEASED_RC))
    assert pickle.dumps(back, protocol=2) == pickle.dumps(RELEASED_RC, protocol=2)
    ckpt = {
        "backbone": "ResNet34",
        "feat_idx": [0, 1, 2, 3],
        "change_stride": True,
        "regressor_config": RELEASED_RC,
    }
    cfg = Patch2PixConfig.from_checkpoint(ckpt)
    assert cfg.checkpoint_fields() == ckpt
    assert pickle.dumps(cfg.checkpoint_fields(), protocol=2) == pickle.dumps(ckpt, protocol=2)
    # loading for matching replaces panc; the file's value is not read
    odd = Namespace(**{**vars(RELEASED_RC), "panc": "junk"})
    cfg1 = Patch2PixConfig.from_checkpoint(dict(ckpt, regressor_config=odd), panc=1)
    assert cfg1.regressor_config == RegressorConfig(panc=1, feat_dim=259)


def test_api_namespace_of_the_original_callers():
    """The constructor Namespace as docs/architecture.md §5 lists it (matching use: no
    training entries)."""
    ns = Namespace(
        device="cpu",
        training=False,
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=Namespace(**{k: v for k, v in vars(RELEASED_RC).items()}),
        regr_batch=1200,
        weights_dict=None,
    )
    cfg = Patch2PixConfig.from_namespace(ns)
    back = cfg.to_namespace()
    assert {k: getattr(back, k) for k in vars(ns)} == vars(ns)
    # the other attributes are the defaults
    assert (back.freeze_feat, back.start_epoch, back.optim_config) == (87, 0, None)
    assert (back.grad_ckpt, back.imagenet_init, back.lprint) == (False, True, None)


def test_missing_attributes_take_the_documented_defaults():
    cfg = Patch2PixConfig.from_namespace(Namespace())
    assert cfg == Patch2PixConfig()
    assert cfg.backbone == "ResNet34" and cfg.change_stride is False
    assert cfg.feat_idx == (0, 1, 2, 3) and cfg.regressor_config is None
    assert (cfg.regr_batch, cfg.grad_ckpt, cfg.imagenet_init) == (1200, False, True)
    assert (cfg.training, cfg.freeze_feat, cfg.start_epoch) == (False, 87, 0)
    assert cfg.device is None and cfg.weights_dict is None and cfg.lprint is None
    # a false regr_batch / start_epoch means the default, as the getattr calls had it
    assert Patch2PixConfig.from_namespace(Namespace(regr_batch=None)).regr_batch == 1200
    assert Patch2PixConfig.from_namespace(Namespace(start_epoch=None)).start_epoch == 0
    rc = RegressorConfig.from_namespace(Namespace(conv_dims=[8]))
    assert rc == replace(RegressorConfig(), conv_dims=(8,))
    assert (rc.feat_comb, rc.shared, rc.feat_dim, rc.panc) == ("pre", False, None, 1)
    oc = OptimConfig.from_namespace(Namespace(lr_init=1e-3))
    assert oc == OptimConfig(lr_init=1e-3)
    assert (oc.opt, oc.weight_decay, oc.lr_decay) == ("adam", 0.0, None)


def test_unknown_attributes_are_kept_and_given_back():
    ns = Namespace(
        regressor_config=Namespace(conv_dims=[8, 8], note="r"),
        optim_config=Namespace(lr_init=1e-3, betas=(0.9, 0.99)),
        my_flag=3,
    )
    back = Patch2PixConfig.from_namespace(ns).to_namespace()
    assert back.my_flag == 3 and back.regressor_config.note == "r"
    assert back.optim_config.betas == (0.9, 0.99)
    assert list(vars(back))[-1] == "my_flag"


def test_conversion_rules():
    cfg = Patch2PixConfig.from_namespace(Namespace(feat_idx=np.array([1, 2])))
    assert cfg.feat_idx == (1, 2) and all(type(i) is int for i in cfg.feat_idx)
    with pytest.raises(TypeError):
        Patch2PixConfig.from_namespace(Namespace(feat_idx=[1.5]))
    with pytest.raises(ValueError, match="unsupported backbone 'VGG'"):
        Patch2PixConfig.from_namespace(Namespace(backbone="VGG"))
    with pytest.raises(ValueError, match="feat_comb must be 'pre' or 'post'"):
        RegressorConfig(feat_comb="mid")
    with pytest.raises(FrozenInstanceError):
        Patch2PixConfig().regr_batch = 3  # type: ignore[misc]
    # feat_dim: the channels of the sampled levels, filled in when None
    assert Patch2PixConfig(regressor_config=RegressorConfig()).resolved().regressor_config == (
        RegressorConfig(feat_dim=259)
    )
    three = Patch2PixConfig(feat_idx=(2, 4), regressor_config=RegressorConfig(feat_dim=7))
    assert three.resolved() is three  # an explicit feat_dim stays
    # the model keeps neither the weights nor the optimiser states
    sd = {"w": torch.zeros(1)}
    full = Patch2PixConfig(weights_dict=sd, optim_config=OptimConfig(optimizer_dict={"s": 1}))
    kept = full.without_inputs()
    assert kept.weights_dict is None and kept.optim_config.optimizer_dict is None
    assert not hasattr(kept.to_namespace(inputs=False), "weights_dict")
    assert not hasattr(kept.to_namespace(inputs=False).optim_config, "optimizer_dict")


def test_checkpoint_values_are_checked_before_conversion():
    ckpt = {"backbone": "ResNet34", "regressor_config": RELEASED_RC}
    bad_psize = Namespace(**{**vars(RELEASED_RC), "psize": [0, 16]})
    with pytest.raises(ValueError, match=r"regressor_config\.psize"):
        Patch2PixConfig.from_checkpoint(dict(ckpt, regressor_config=bad_psize))
    with pytest.raises(ValueError, match="feat_idx"):
        Patch2PixConfig.from_checkpoint(dict(ckpt, feat_idx=[0, 9]))
    with pytest.raises(ValueError, match="missing or incomplete 'regressor_config'"):
        Patch2PixConfig.from_checkpoint(dict(ckpt, regressor_config=Namespace(panc=8)))


# ---------------------------------------------------------------- the model
SMALL_RC = dict(
    conv_dims=[8, 8],
    conv_kers=[3, 3],
    conv_strs=[2, 1],
    fc_dims=[8],
    feat_comb="pre",
    psize=[16, 16],
    pshift=8,
    panc=1,
    shared=False,
)


def test_model_from_the_dataclass_equals_model_from_the_namespace():
    ns = Namespace(
        training=False,
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=Namespace(**SMALL_RC),
        regr_batch=1200,
        weights_dict=None,
        imagenet_init=False,
    )
    torch.manual_seed(0)
    a = Patch2Pix(ns).eval()
    assert ns.regressor_config == Namespace(**SMALL_RC)  # the caller's Namespace is untouched
    torch.manual_seed(0)
    b = Patch2Pix(Patch2PixConfig.from_namespace(ns)).eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.config == b.config and a.model_config == b.model_config
    assert a.regressor_config == Namespace(**SMALL_RC, feat_dim=259)
    assert a.config.regressor_config is a.regressor_config
    for net in (a, b):
        assert (net.psize, net.ptype, net.pshift, net.panc) == ([16, 16], ["center"] * 2, 8, 1)
        assert (net.feat_idx, net.regr_batch, net.change_stride) == ([0, 1, 2, 3], 1200, True)
        assert net.optimizer is None and net.lr_scheduler is None
    g = torch.Generator().manual_seed(1)
    im1, im2 = torch.randn(1, 3, 64, 64, generator=g), torch.randn(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        outa = a.predict_fine(im1, im2, ksize=2, return_all=True)
        outb = b.predict_fine(im1, im2, ksize=2, return_all=True)
    for xa, xb in zip(outa, outb, strict=True):
        assert torch.equal(xa[0], xb[0])


def test_trainer_owns_the_optimiser_and_training_true_still_builds_one():
    args = build_parser().parse_args(SMALL)
    torch.manual_seed(0)
    net, optimizer, scheduler = build_training(args, CPU, StartState(), lprint=quiet)
    assert net.optimizer is None and net.lr_scheduler is None  # held by the trainer
    assert scheduler is None and isinstance(optimizer, torch.optim.Adam)
    # the original's way: Patch2Pix(training=True) builds net.optimizer (docs/architecture.md §5)
    ns = training_namespace(args)
    ns.imagenet_init = False
    torch.manual_seed(0)
    old = Patch2Pix(ns)
    assert isinstance(old.optimizer, torch.optim.Adam) and old.lr_scheduler is None
    shapes = [[tuple(p.shape) for p in g["params"]] for g in optimizer.param_groups]
    assert shapes == [[tuple(p.shape) for p in g["params"]] for g in old.optimizer.param_groups]
    assert optimizer.param_groups[0]["lr"] == old.optimizer.param_groups[0]["lr"] == 5e-4
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen == [n for n, p in old.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("extract.") for n in frozen)


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_config_entries_are_those_written_before(tmp_path):
    """The pickled configuration entries of a training checkpoint are byte for byte those
    the trainer wrote before the typed config (recorded at commit bf6c3c7)."""
    args = build_parser().parse_args(SMALL)
    net, optimizer, scheduler = build_training(args, CPU, StartState(), lprint=quiet)
    ckpt = checkpoint_dict(net, optimizer, scheduler, 0, [1.0, 0.0, 1.0, 0.0])
    assert list(ckpt) == [
        "last_epoch",
        "best_vals",
        "backbone",
        "feat_idx",
        "change_stride",
        "regressor_config",
        "state_dict",
        "optim",
    ]
    before = {
        "last_epoch": 0,
        "best_vals": [1.0, 0.0, 1.0, 0.0],
        "backbone": "ResNet34",
        "feat_idx": [0, 1, 2, 3],
        "change_stride": False,
        "regressor_config": Namespace(
            conv_dims=[8, 8],
            conv_kers=[3, 3],
            conv_strs=[2, 1],
            fc_dims=[8, 8],
            feat_comb="pre",
            psize=[16, 16],
            pshift=8,
            panc=8,
            shared=False,
            feat_dim=259,
        ),
    }
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optim")}
    assert pickle.dumps(meta, protocol=2) == pickle.dumps(before, protocol=2)
    # and what a file holds after the safe loader is the same
    path = save_checkpoint_atomic(ckpt, tmp_path / "last_ckpt.pth")
    back = load_checkpoint_safe(path)
    assert {k: back[k] for k in before} == before


def test_checkpoint_saved_then_loaded_gives_the_same_config(tmp_path):
    args = build_parser().parse_args([*SMALL, "--shared", "--change_stride", "--panc", "8"])
    net, optimizer, scheduler = build_training(args, CPU, StartState(), lprint=quiet)
    path = save_checkpoint_atomic(
        checkpoint_dict(net, optimizer, scheduler, 2, [1.0, 0.5, 2.0, 0.5]), tmp_path / "c.pth"
    )
    ckpt = load_checkpoint_safe(path)
    assert Patch2PixConfig.from_checkpoint(ckpt).checkpoint_fields() == (
        net.model_config.checkpoint_fields()
    )
    loaded = load_model(path, lprint=quiet, device="cpu")
    want = replace(
        net.model_config,
        training=False,
        regressor_config=replace(net.model_config.regressor_config, panc=1),
        freeze_feat=87,
        grad_ckpt=False,
        imagenet_init=False,
        start_epoch=0,
        optim_config=None,
    )
    assert loaded.model_config == want
    assert loaded.regressor_config == Namespace(**{**vars(ckpt["regressor_config"]), "panc": 1})
    assert not hasattr(loaded.config, "weights_dict")
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_load_model_refuses_out_of_range_config(tmp_path):
    args = build_parser().parse_args(SMALL)
    net, optimizer, scheduler = build_training(args, CPU, StartState(), lprint=quiet)
    ckpt = checkpoint_dict(net, optimizer, scheduler, 0, [0.0] * 4)
    ckpt["regressor_config"].conv_dims = [100_000, 8]
    path = save_checkpoint_atomic(ckpt, tmp_path / "huge.pth")
    with pytest.raises(CheckpointError, match=r"huge\.pth: regressor_config\.conv_dims"):
        load_model(path, lprint=quiet, device="cpu")
