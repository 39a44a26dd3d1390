"""Visdom schema (training.md §5) against a real server on a free loopback port."""

from __future__ import annotations

import json

from utils.common.visdom_helper import PLOTS, VisdomPlotter


def _traces(vis, win, env) -> dict[str, list]:
    data = json.loads(vis.get_window_data(win, env=env))
    return {t["name"]: list(zip(t["x"], t["y"])) for t in data["content"]["data"]}


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
