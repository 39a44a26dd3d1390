"""Visdom schema (docs/training.md §5) against a real server on a free loopback port."""

from __future__ import annotations

import json

import pytest

from utils.train.visdom_helper import DIST_LEGENDS, PLOTS, VAL_PLOTS, VisdomPlotter


def _traces(vis, win, env) -> dict[str, list]:
    data = json.loads(vis.get_window_data(win, env=env))
    return {t["name"]: list(zip(t["x"], t["y"])) for t in data["content"]["data"]}


@pytest.mark.slow
def test_windows_and_legends(visdom_server):
    port, env_path = visdom_server
    env = "test_env.ks2fe0123_ep50-5cls50-5"
    plotter = VisdomPlotter("127.0.0.1", str(port), env)
    assert plotter.enabled
    means = {
        "loss": {"pair": 3.0, "cls_mid": 0.5, "cls_fine": 0.7, "epi_mid": 1.0, "epi_fine": 0.8},
        "cls_mid": {"rec": 0.5, "prec": 0.4, "spec": 0.9, "acc": 0.8, "f1": 0.44},
        "mem": {"rss": 1.0, "vms": 2.0},
        "pair_scores": {"pos": float("nan"), "neg": float("nan")},
    }
    wins = plotter.plot("train", 0.25, means)
    assert wins == ["train.loss", "train.cls_mid", "train.mem"]
    means["loss"]["pair"] = 2.0
    plotter.plot("train", 0.5, means)
    vis = plotter.vis
    for plot in ("loss", "cls_mid", "mem"):
        assert vis.win_exists(f"train.{plot}", env=env)
    for win in ("train.pair_scores", "train.cls_fine", "test.loss"):
        assert not vis.win_exists(win, env=env)
    loss = _traces(vis, "train.loss", env)
    # one line per legend with values; 'nc' has no value and is not drawn
    assert set(loss) == set(PLOTS["loss"]) - {"nc"}
    assert loss["pair"] == [(0.25, 3.0), (0.5, 2.0)]
    assert set(_traces(vis, "train.mem", env)) == {"rss", "vms"}
    title = json.loads(vis.get_window_data("train.loss", env=env))["title"]
    assert title == "train.loss"
    # test-set windows carry their own prefix
    assert plotter.plot("test", 1.0, {"cls_fine": {"acc": 0.9}}) == ["test.cls_fine"]
    assert set(_traces(vis, "test.cls_fine", env)) == {"acc"}
    # saved after each update
    assert (env_path / f"{env}.json").exists()


def test_no_host_sends_nothing():
    plotter = VisdomPlotter(None, None, "whatever")
    assert not plotter.enabled
    assert plotter.plot("train", 0.1, {"loss": {"pair": 1.0}}) == []


def test_unreachable_server_disables_with_message(free_port):
    msgs: list[str] = []
    plotter = VisdomPlotter("127.0.0.1", str(free_port), "env", lprint=msgs.append)
    assert plotter.plot("train", 0.1, {"loss": {"pair": 1.0}}) == []
    assert not plotter.enabled and "Visdom disabled" in msgs[0]


@pytest.mark.slow
def test_validation_windows(visdom_server):
    """The per-epoch validation result goes to the test.* windows, one point per epoch."""
    from utils.train.eval_epoch_immatch import ImmatchValResult
    from utils.train.visdom_helper import validation_means

    port, _ = visdom_server
    env = "test_env.validation"
    plotter = VisdomPlotter("127.0.0.1", str(port), env)
    hist = [0.5, 0.25, 0.25, 0, 0, 0, 0, 0, 0]
    res = ImmatchValResult(
        mean_err=4.0,
        median_err=3.0,
        rate=0.5,
        pass_rates={t: t / 10 for t in range(1, 11)},
        fine_dist=2.0,
        inlier_ratio=0.6,
        num_pairs=2,
        num_failed=0,
        dist_hist={"coarse": hist, "fine": hist[::-1], "inlier": hist},
    )
    wins = plotter.plot("test", 1, validation_means(res.as_dict()))
    assert wins == [f"test.{p}" for p in VAL_PLOTS]
    res.mean_err, res.rate = 2.0, 0.75
    plotter.plot("test", 2, validation_means(res.as_dict()))
    vis = plotter.vis
    assert _traces(vis, "test.pose_err", env) == {
        "mean": [(1, 4.0), (2, 2.0)],
        "median": [(1, 3.0), (2, 3.0)],
    }
    assert _traces(vis, "test.sel_rate", env) == {"rate": [(1, 0.5), (2, 0.75)]}
    rates = _traces(vis, "test.pass_rates", env)
    assert set(rates) == {f"{t}deg" for t in range(1, 11)}
    assert rates["3deg"] == [(1, 30.0), (2, 30.0)]  # percent
    fine = _traces(vis, "test.dist_fine", env)
    assert list(fine) == list(DIST_LEGENDS)
    assert [fine[name][0][1] for name in DIST_LEGENDS] == [100 * v for v in hist[::-1]]
    assert json.loads(vis.get_window_data("test.dist_fine", env=env))["title"] == "test.dist_fine"
    # validation windows belong to the test set only
    assert plotter.plot("train", 1, validation_means(res.as_dict())) == []
