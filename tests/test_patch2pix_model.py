"""The whole Patch2Pix model: layout, recorded outputs, refinement rules, loading, gradients."""

import json
import pickle
from argparse import Namespace

import numpy as np
import pytest
import torch
from conftest import REPO, rule_state_dict

from networks.patch2pix import Patch2Pix
from utils.common.setup_helper import CheckpointError, load_checkpoint_safe, save_checkpoint_atomic
from utils.eval.model_helper import load_model

SPEC_SHAPES = REPO.parent / "shared" / "spec" / "state_dict_shapes.json"
SMALL_RC = dict(
    conv_dims=[32, 32],
    conv_kers=[3, 3],
    conv_strs=[2, 1],
    fc_dims=[32, 16],
    feat_comb="pre",
    psize=[16, 16],
    pshift=8,
    panc=1,
    shared=False,
)
DEFAULT_RC = dict(SMALL_RC, conv_dims=[512, 512], fc_dims=[512, 256])


def make_net(rc=SMALL_RC, **kw):
    cfg = Namespace(
        training=False,
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=Namespace(**rc) if rc else None,
        regr_batch=1200,
        weights_dict=None,
        imagenet_init=False,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return Patch2Pix(cfg)


@pytest.fixture(scope="module")
def rule_net():
    net = make_net()
    net.load_state_dict(rule_state_dict(net))
    return net.eval()


def test_state_dict_layout_matches_spec():
    if not SPEC_SHAPES.exists():
        pytest.skip("../shared/spec is absent")
    spec = json.loads(SPEC_SHAPES.read_text())
    sd = make_net(DEFAULT_RC).state_dict()
    assert len(sd) == len(spec) == 276
    assert list(sd) == list(spec)
    for k, shape in spec.items():
        assert list(sd[k].shape) == shape, k


def test_ref_model_eval(rule_net, refvec):
    v = refvec["model_eval"]
    with torch.no_grad():
        corr, _ = rule_net(v["im1"], v["im2"], ksize=2)
        assert torch.allclose(corr, v["corr4d"], rtol=1e-4, atol=1e-5 * v["corr4d"].abs().max())
        fine, fine_p, mid, mid_p, coarse = rule_net.predict_fine(
            v["im1"], v["im2"], ksize=2, mutual=True, return_all=True
        )
        assert torch.equal(coarse[0], v["coarse"])
        assert torch.allclose(mid[0], v["mid"], atol=1e-3)
        assert torch.allclose(mid_p[0], v["mid_scores"], atol=1e-5)
        assert torch.allclose(fine[0], v["fine"], atol=1e-3)
        assert torch.allclose(fine_p[0], v["fine_scores"], atol=1e-5)
        cm, cs = rule_net.predict_coarse(v["im1"], v["im2"], ksize=2, mutual=False)
        assert torch.equal(cm[0], v["coarse_nonmutual"])
        assert torch.allclose(cs[0], v["coarse_nonmutual_scores"], rtol=1e-3, atol=1e-6)


def test_ref_refine_matches(rule_net, refvec):
    v, r = refvec["model_eval"], refvec["refine_matches"]
    with torch.no_grad():
        ref, sc, co = rule_net.refine_matches(v["im1"], v["im2"], r["coarse"].numpy(), 0.0)
    assert np.allclose(ref, r["refined"].numpy(), atol=1e-3)
    assert np.allclose(sc, r["scores"].numpy(), atol=1e-5)
    assert np.array_equal(co, r["coarse"].numpy())


class ConstRegressor(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.out = torch.as_tensor(out, dtype=torch.float32)

    def forward(self, x):
        return self.out.expand(x.shape[0], 5)


def feats_for(h1, w1, h2, w2):
    net = make_net()
    return (
        net,
        net.extract.forward_all(torch.zeros(1, 3, h1, w1)),
        net.extract.forward_all(torch.zeros(1, 3, h2, w2)),
    )


def test_regressor_output_parsing_and_clamping():
    net, f1, f2 = feats_for(32, 48, 40, 32)
    raw = torch.tensor([0.5, -2.0, 3.0, 100.0, 0.3])
    matches = torch.tensor([[10.0, 10.0, 10.0, 10.0], [47.0, 1.0, 30.0, 39.0]])
    with torch.no_grad():
        out, prob = net.forward_fine_match(f1, f2, [matches], 16, "center", ConstRegressor(raw))
    off = 16 * torch.tanh(torch.relu(raw[:4])) - 8
    assert torch.allclose(off[1], torch.tensor(-8.0))  # negative raw -> relu 0 -> -8
    expected = matches + off
    expected[:, [0, 2]] = expected[:, [0, 2]].clamp(min=0)
    expected[:, 0] = expected[:, 0].clamp(max=48)  # x1 <= W1
    expected[:, 1] = expected[:, 1].clamp(min=0, max=32)
    expected[:, 2] = expected[:, 2].clamp(max=32)  # x2 <= W2
    expected[:, 3] = expected[:, 3].clamp(min=0, max=40)
    assert torch.allclose(out[0], expected)
    assert out[0][1, 1:].tolist() == [0.0, 32.0, 40.0]  # clamped to inclusive bounds
    assert torch.allclose(prob[0], torch.sigmoid(raw[4]).expand(2))


@pytest.mark.parametrize("n", [5, 6, 11])
def test_chunking_equals_unchunked(rule_net, n):
    g = torch.Generator().manual_seed(n)
    im1, im2 = torch.randn(1, 3, 64, 80, generator=g), torch.randn(1, 3, 48, 64, generator=g)
    coarse = torch.rand(n, 4, generator=g) * torch.tensor([80, 64, 64, 48])
    with torch.no_grad():
        rule_net.regr_batch = 1200
        full = rule_net.refine_matches(im1, im2, coarse, -1.0)
        rule_net.regr_batch = 5  # n = chunk, chunk + 1, 2 chunks + 1
        chunked = rule_net.refine_matches(im1, im2, coarse, -1.0)
        rule_net.regr_batch = 1200
    for a, b in zip(full, chunked):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)


def test_zero_matches_give_empty_outputs(rule_net):
    im = torch.randn(1, 3, 32, 32)
    ref, sc, co = rule_net.refine_matches(im, im, np.zeros((0, 4)), 0.5)
    assert ref.shape == (0, 4) and sc.shape == (0,) and co.shape == (0, 4)
    feats = rule_net.extract.forward_all(im)
    m, p = rule_net.forward_fine_match(
        feats, feats, [torch.zeros(0, 4)], 16, "center", rule_net.regress_mid
    )
    assert m[0].shape == (0, 4) and p[0].shape == (0,)


class PixelProjection(torch.nn.Module):
    """A stand-in backbone with distinct features per cell: a random 8x8/8 projection."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 64, 8, stride=8)

    def forward(self, x):
        return self.proj(x)


@pytest.mark.parametrize("hw", [(64, 64), (96, 128), (128, 80), (256, 192)])
def test_identical_images_match_on_identity(hw):
    # Random backbone weights make cells nearly indistinguishable, so the identity is only
    # well defined with distinct features; the NCN keeps its (positive) rule weights.
    torch.manual_seed(0)
    net = make_net(rc=None)
    net.load_state_dict(rule_state_dict(net))
    net.extract = PixelProjection()
    im = torch.randn(1, 3, *hw)
    with torch.no_grad():
        coarse, scores = net.eval().predict_coarse(im, im, ksize=2, mutual=True)
    m = coarse[0]
    assert torch.equal(m[:, :2], m[:, 2:])  # every mutual match lies on the identity
    assert torch.all(m % 8 == 4)  # centres of the stride-8 cells
    assert m.shape[0] >= 0.25 * (hw[0] // 16) * (hw[1] // 16)
    assert len(set(map(tuple, m.tolist()))) == m.shape[0]


def test_gradients_reach_regressors_and_ncn():
    net = make_net(
        dict(SMALL_RC, panc=8),
        training=True,
        freeze_feat=87,
        start_epoch=0,
        optim_config=Namespace(
            opt="adam",
            lr_init=5e-4,
            weight_decay=0,
            lr_decay=None,
            optimizer_dict=None,
            lr_scheduler_dict=None,
        ),
    )
    net.train()
    g = torch.Generator().manual_seed(0)
    im1, im2 = torch.randn(1, 3, 64, 64, generator=g), torch.randn(1, 3, 64, 64, generator=g)
    coarse, mid, mid_p, fine, fine_p = net.forward_train(im1, im2, ksize=2, ptmax=20)
    assert coarse[0].shape == (160, 4) and mid[0].shape == (160, 4)  # 20 matches x 8 anchors
    (fine[0].sum() + mid[0].sum() + fine_p[0].sum() + mid_p[0].sum()).backward()
    for name in ("regress_mid", "regress_fine"):
        grads = [p.grad for p in getattr(net, name).parameters()]
        assert all(gr is not None for gr in grads), name
        assert sum(gr.abs().sum() for gr in grads) > 0, name
    assert all(p.grad is None for p in net.extract.parameters())  # frozen backbone
    # Coarse matches are argmax indices, so the NCN is reached through the correlation
    # volume only; in training mode its 4D convolutions must be differentiable (the
    # original's in-place Conv4d raises here on PyTorch 2.x).
    corr4d, _ = net(im1, im2, ksize=2)
    corr4d.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.ncn.parameters())
    n_trainable = sum(len(pg["params"]) for pg in net.optimizer.param_groups)
    assert n_trainable == sum(1 for _ in net.regress_mid.parameters()) * 2 + 4
    net.optimizer.step()


# ---------------------------------------------------------------- checkpoint loading
def original_checkpoint(net, rc):
    return {
        "last_epoch": 3,
        "best_vals": [np.float64(1.5), np.float64(0.3), np.inf, 0.0],
        "backbone": "ResNet34",
        "feat_idx": [0, 1, 2, 3],
        "change_stride": True,
        "regressor_config": Namespace(**rc),
        "state_dict": net.state_dict(),
        "optim": {},
    }


def test_checkpoint_round_trip(rule_net, tmp_path):
    rc = dict(SMALL_RC, panc=8)
    path = tmp_path / "ckpt.pth"
    save_checkpoint_atomic(original_checkpoint(rule_net, rc), path)
    loaded = load_model(path, lprint=lambda *_: None, device="cpu")
    assert loaded.panc == 1 and not loaded.training
    g = torch.Generator().manual_seed(5)
    im1, im2 = torch.randn(1, 3, 64, 96, generator=g), torch.randn(1, 3, 64, 96, generator=g)
    with torch.no_grad():
        a = rule_net.predict_fine(im1, im2, return_all=True)
        b = loaded.predict_fine(im1, im2, return_all=True)
    for x, y in zip(a, b):
        assert torch.equal(x[0], y[0])


def test_load_bare_ncnet_state_dict(rule_net, tmp_path):
    sd = {k: v for k, v in rule_net.state_dict().items() if k.startswith(("extract.", "ncn."))}
    path = tmp_path / "ncn.pth"
    torch.save(sd, path)
    msgs = []
    net = load_model(path, method="nc", lprint=msgs.append, device="cpu")
    assert net.regressor_config is None and not hasattr(net, "regress_mid")
    assert "nc model" in msgs[0]
    im = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.predict_coarse(im, im)[0][0], rule_net.predict_coarse(im, im)[0][0])
    with pytest.raises(RuntimeError, match="no regressors"):
        net.refine_matches(im, im, np.ones((1, 4)))
    with pytest.raises(CheckpointError, match="method='nc'"):
        load_model(path, method="patch2pix", lprint=lambda *_: None)


def test_non_strict_loading_reports_keys(rule_net, capsys):
    msgs = []
    from networks.patch2pix import load_weights

    sd = {k: v for k, v in rule_net.state_dict().items() if k.startswith(("extract.", "ncn."))}
    net = make_net()
    load_weights(net, sd, lprint=msgs.append)
    assert "missing: regress_mid.* (" in msgs[0] and "unexpected: none" in msgs[0]


def test_wrong_shape_names_the_key(rule_net, tmp_path):
    ck = original_checkpoint(rule_net, dict(SMALL_RC, conv_dims=[64, 32]))
    path = tmp_path / "other_arch.pth"
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match=r"regress_mid\.conv\.0\.weight"):
        load_model(path, lprint=lambda *_: None, device="cpu")


class Smuggled:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_smuggled_type_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"backbone": "ResNet34", "payload": Smuggled()}, path)
    with pytest.raises(CheckpointError, match="print, which is not part of this file format"):
        load_checkpoint_safe(path)
    assert "must never run" not in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint_safe(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(pickle.dumps([1, 2])[:5])
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint_safe(tmp_path / "junk.pth")


def test_imagenet_weights_from_local_cache_only(tmp_path, monkeypatch):
    from torchvision.models import resnet34

    from networks.resnet import IMAGENET_FILES, ResNet34, load_imagenet_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    msgs = []
    net = ResNet34(change_stride=True)
    assert not load_imagenet_weights(net, lprint=msgs.append)
    assert "random weights" in msgs[0] and IMAGENET_FILES[0] in msgs[0]
    torch.manual_seed(3)
    tv = resnet34()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(tv.state_dict(), tmp_path / "hub" / "checkpoints" / IMAGENET_FILES[1])
    assert load_imagenet_weights(net, lprint=msgs.append)
    assert torch.equal(net.layer3[0].conv1.weight, tv.layer3[0].conv1.weight)
    assert net.layer3[0].conv1.stride == (1, 1) and net.layer3[0].downsample[0].stride == (1, 1)
    x = torch.randn(1, 3, 64, 96)
    feats = net.eval().forward_all(x)
    assert [f.shape[1:] for f in feats] == [
        (3, 64, 96),
        (64, 32, 48),
        (64, 16, 24),
        (128, 8, 12),
        (256, 8, 12),
    ]
    assert torch.equal(feats[-1], net(x))


def test_partial_weights_are_reported_through_lprint(rule_net, tmp_path, monkeypatch):
    msgs = []
    sd = {k: v for k, v in rule_net.state_dict().items() if k.startswith(("extract.", "ncn."))}
    net = make_net(weights_dict=sd, lprint=msgs.append)
    assert any("missing: regress_mid.* (" in m and "regress_fine.*" in m for m in msgs)
    assert torch.equal(net.ncn.conv[0].weight, rule_net.ncn.conv[0].weight)
    msgs.clear()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache
    make_net(imagenet_init=True, lprint=msgs.append)
    assert len(msgs) == 1 and "starts from random weights" in msgs[0]


def test_training_chunks_never_leave_one_row_for_batchnorm():
    net = make_net().train()
    net.regr_batch = 4
    assert net._chunk_sizes(9) == [4, 5]  # the left-over row joins the last full chunk
    assert net._chunk_sizes(8) == [4, 4] and net._chunk_sizes(3) == [3]
    feats = net.extract.forward_all(torch.randn(1, 3, 32, 32))
    m, p = net.forward_fine_match(
        feats, feats, [torch.rand(9, 4) * 32], 16, "center", net.regress_mid
    )  # 9 = 2 chunks + 1 row
    assert m[0].shape == (9, 4) and p[0].shape == (9,)
    net.eval()
    assert net._chunk_sizes(9) == [4, 5]  # same bounds in evaluation (docs/architecture.md §4.6)
