"""Per-epoch immatch validation (docs/training.md §6) with exact matches on synthetic scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.colmap.read_model import read_model
from utils.train import eval_epoch_immatch as ev


@pytest.fixture(scope="module")
def val_root(tmp_path_factory):
    from data_pairs import make_synthetic

    out = tmp_path_factory.mktemp("val") / "data"
    assert (
        make_synthetic.main(
            [
                "--out",
                str(out),
                "--scenes",
                "0",
                "--val_scenes",
                "1",
                "--val_images",
                "5",
                "--width",
                "240",
                "--height",
                "160",
                "--points",
                "600",
                "--supersample",
                "1",
                "--portrait_every",
                "0",
            ]
        )
        == 0
    )
    return out


class FakeNet(torch.nn.Module):
    """Stands in for Patch2Pix: records `panc` and the mode it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.panc = 8
        self.seen: list[tuple[int, bool, bool]] = []


def exact_matcher(models: dict):
    """estimate_matches replacement returning the COLMAP observations shared by two images."""

    def estimate(net, im1, im2, **kw):
        net.seen.append((net.panc, net.training, torch.is_grad_enabled()))
        scene_dense = im1.rsplit("/images/", 1)[0]
        images = models[scene_dense]
        a, b = images[im1.rsplit("/", 1)[1]], images[im2.rsplit("/", 1)[1]]
        ida = {int(p): xy for p, xy in zip(a.point3D_ids, a.xys) if p >= 0}
        rows = [np.r_[ida[int(p)], xy] for p, xy in zip(b.point3D_ids, b.xys) if int(p) in ida]
        m = np.asarray(rows, dtype=np.float64)
        return m, np.ones(len(m)), m.copy()

    return estimate


def test_exact_matches_give_zero_error(val_root, monkeypatch):
    import utils.eval.model_helper as mh

    vroot = ev.resolve_val_root(val_root)
    assert vroot == val_root / "immatch_benchmark" / "val_dense"
    models = {}
    for scene in ev.list_scenes(vroot):
        _, images, _ = read_model(vroot / scene / "dense" / "sparse")
        models[str(vroot / scene / "dense")] = {im.name: im for im in images.values()}
    monkeypatch.setattr(mh, "estimate_matches", exact_matcher(models))
    net = FakeNet().train()
    lines: list[str] = []
    res = ev.eval_immatch_val_sets(net, val_root, sample_max=3, lprint_=lines.append)
    assert res.num_pairs == 3 and res.num_failed == 0
    assert res.mean_err < 0.5 and res.rate == pytest.approx(1.0)
    assert res.pass_rates[1] == 1.0 and res.fine_dist < 0.01
    # panc 1, eval mode, no gradients during the call; restored afterwards
    assert set(net.seen) == {(1, False, False)}
    assert net.panc == 8 and net.training
    assert lines[0].startswith(">>Val immatch: 3 pairs")
    assert any(line.strip().startswith("inlier n=3") for line in lines)


def test_sampling_is_seeded_and_global_rng_untouched(val_root):
    vroot = ev.resolve_val_root(val_root)
    scene = ev.list_scenes(vroot)[0]
    pairs = ev.load_overlap_pairs(vroot / scene / "dense/sparse/ov_pairs.npy", 0.3)
    assert len(pairs) > 2
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    a = ev.sample_pairs(pairs, 2, np.random.RandomState(0))
    b = ev.sample_pairs(pairs, 2, np.random.RandomState(0))
    assert a == b and len(a) == 2
    assert [pairs[i] for i in np.random.RandomState(0).choice(len(pairs), 2, replace=False)] == a
    assert np.array_equal(np.random.get_state()[1], state)
    assert ev.sample_pairs(pairs, 1000, np.random.RandomState(0)) == pairs
    with pytest.raises(KeyError, match="overlap 0.7"):
        ev.load_overlap_pairs(vroot / scene / "dense/sparse/ov_pairs.npy", 0.7)


def test_missing_validation_data(tmp_path):
    with pytest.raises(ev.ValidationDataMissing, match="ov_pairs.npy"):
        ev.resolve_val_root(tmp_path)


def test_best_checkpoint_rule():
    def res(err, rate):
        return ev.ImmatchValResult(
            mean_err=err,
            median_err=err,
            rate=rate,
            pass_rates={},
            fine_dist=1.0,
            inlier_ratio=0.5,
            num_pairs=1,
            num_failed=0,
        )

    best = ev.BestTracker()
    assert best.update(res(10.0, 0.2))
    assert best.vals == [1.0, 0.5, 10.0, 0.2]
    assert not best.update(res(12.0, 0.1))  # worse on both
    assert best.update(res(11.0, 0.3))  # rate rises
    assert best.vals[2:] == [10.0, 0.3]
    assert best.update(res(9.0, 0.0))  # error drops
    assert best.vals[2:] == [9.0, 0.3]
