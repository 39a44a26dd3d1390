"""The Visdom dashboard of a training run, drawn offline in a real browser (headless Chromium).

A Visdom server is started with the project's offline command (``tests/conftest.py``,
``python -m utils.common.visdom_server``: page assets from npm, no download step), a tiny
training run plots to it with ``-vh/-vp``, and Debian's ``chromium`` opens the run's
environment through the DevTools protocol (websocket-client, already a visdom dependency),
with every host name but 127.0.0.1 unresolvable. Checked in the page: every window the
server holds (the ``train.*`` windows and the validation's ``test.*``) is drawn, with its
title in the window bar and as the plot title, one plotly trace per line with values and
drawn SVG line paths; every asset request succeeded and none left the machine. A screenshot
is saved (``P2P_VISDOM_SCREENSHOT=path`` keeps a copy).

Without Chromium the test is skipped with a loud reason, or fails where a browser is required
(``P2P_REQUIRE_BROWSER=1`` or ``CI`` set; ``.ci/run`` installs it and sets it).
``P2P_CHROMIUM=/path/to/chrome`` picks another Chromium build.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # a browser, a Visdom server and a training run

REPO = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TRAIN_WINDOWS = {
    f"train.{p}"
    for p in ("loss", "cls_mid", "cls_fine", "cls_ratios", "match_dist", "mem", "pair_scores")
}
VIEW = (1400, 1900)  # room for the 13 windows (7 train, 6 validation), 3 per row
# Per window: title in the bar and in the plot, plotly traces and the SVG line paths drawn.
WINDOWS_JS = """JSON.stringify(Array.from(document.querySelectorAll('.window')).map(w => {
  const plot = w.querySelector('.js-plotly-plot');
  const bar = w.querySelector('.bar > div.pull-right');
  const title = plot && plot.layout && plot.layout.title;
  return {
    bar: bar ? bar.textContent : null,
    title: title ? (title.text !== undefined ? title.text : title) : null,
    traces: plot && plot.data ? plot.data.map(t => ({
      name: t.name, n: (t.y || []).filter(v => v !== null && isFinite(v)).length})) : [],
    drawn: Array.from(w.querySelectorAll('.scatterlayer .trace')).length,
    paths: Array.from(w.querySelectorAll('.scatterlayer .trace path.js-line'))
      .map(p => p.getAttribute('d') || ''),
  };
}))"""


def find_browser() -> str:
    """Path of a Chromium binary, or skip loudly / fail where a browser is required."""
    exe = os.environ.get("P2P_CHROMIUM") or next(
        (p for p in map(shutil.which, BROWSERS) if p), None
    )
    if exe:
        return exe
    msg = (
        "NO BROWSER: chromium is not installed, the Visdom page is NOT tested; "
        "install it with `apt-get install -y chromium` (.ci/run does)"
    )
    if os.environ.get("P2P_REQUIRE_BROWSER") == "1" or os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


class DevTools:
    """Headless Chromium driven through the DevTools protocol over one page's websocket.

    Only 127.0.0.1 resolves inside the browser, so a page that needs the network fails.
    Events received while waiting for a reply are kept in :attr:`events`.
    """

    def __init__(self, exe: str, profile: Path, width: int = 1400, height: int = 1100):
        import websocket  # websocket-client, a dependency of visdom

        args = [
            exe,
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        if os.geteuid() == 0:  # Chromium's sandbox refuses to run as root (containers, CI)
            args.insert(1, "--no-sandbox")
        self.log = profile / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                pytest.fail(f"chromium did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
        )
        self.next_id, self.events = 0, []
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:60]}...: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(
            base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        )
        return path

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def browser(tmp_path: Path):
    exe = find_browser()
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    dt = DevTools(exe, profile, *VIEW)
    yield dt
    dt.close()


def train_with_visdom(data: Path, out: Path, port: int) -> list[str]:
    """Two epochs x 2 steps of a tiny model, plotted twice per epoch, validated on 2 pairs."""
    args = [
        "--data_root",
        str(data / "data"),
        "--pair_root",
        str(data / "pairs"),
        "-o",
        str(out),
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
        "--epochs",
        "2",
        "--max_iters_per_epoch",
        "2",
        "--plot_counts",
        "2",
        "--val_imsize",
        "160",
        "--val_sample_max",
        "2",
        "--workers",
        "0",
        "--no_progress",
        "--device",
        "cpu",
        "--random_backbone",
        "-vh",
        "127.0.0.1",
        "-vp",
        str(port),
        # its own Visdom environment: the session-wide server also holds other tests' runs
        "--prefix",
        "browser",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "train_patch2pix", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return args


def server_windows(port: int, env: str) -> dict[str, dict[str, int]]:
    """{window title: {trace name: finite values}} as the Visdom server holds them."""
    from visdom import Visdom

    vis = Visdom(
        server="http://127.0.0.1", port=port, raise_exceptions=True, use_incoming_socket=False
    )
    wins = json.loads(vis.get_window_data(env=env))
    out = {}
    for win in wins.values():
        traces = win["content"]["data"]
        out[win["title"]] = {
            t["name"]: int(np.isfinite(np.asarray(t["y"], float)).sum()) for t in traces
        }
    return out


def test_training_dashboard_in_chromium(
    browser: DevTools, visdom_server, train_data, tmp_path: Path
) -> None:
    from utils.common.visdom_assets import missing_assets
    from utils.train.cli import parse_args
    from utils.train.experiment import make_tags
    from utils.train.visdom_helper import VAL_PLOTS

    assert not missing_assets(), "run `python -m utils.common.visdom_assets` (setup_env.sh)"
    port = visdom_server[0]
    args = train_with_visdom(train_data, tmp_path / "out", port)
    env = make_tags(parse_args(args)).visdom_env
    expected = server_windows(port, env)
    val_windows = {f"test.{p}" for p in VAL_PLOTS}  # the per-epoch validation
    assert set(expected) == TRAIN_WINDOWS | val_windows, sorted(expected)

    browser.send("Page.navigate", url=f"http://127.0.0.1:{port}/env/{urllib.parse.quote(env)}")

    def drawn_lines(w: dict) -> int:
        return sum("L" in d for d in w["paths"])

    def lines(title: str) -> int:  # every line with 2+ values is a path with a segment
        return sum(n >= 2 for n in expected[title].values())

    deadline, wins = time.time() + 90, []
    while time.time() < deadline:  # the page draws the windows asynchronously
        wins = json.loads(browser.evaluate(WINDOWS_JS) or "[]")
        if len(wins) >= len(expected) and all(
            w["bar"] in expected and drawn_lines(w) >= lines(w["bar"]) for w in wins
        ):
            break
        time.sleep(0.5)
    print(f"page drawn in {90 - deadline + time.time():.1f} s")
    shot = browser.screenshot(tmp_path / "visdom.png")
    if os.environ.get("P2P_VISDOM_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["P2P_VISDOM_SCREENSHOT"])

    drawn = {w["bar"]: w for w in wins}
    assert set(drawn) == set(expected), f"drawn {sorted(drawn)} != server {sorted(expected)}"
    for title, traces in expected.items():
        w = drawn[title]
        assert w["title"] == title  # plot title = window title = bar text
        assert {t["name"]: t["n"] for t in w["traces"]} == traces, title
        assert all(n > 0 for n in traces.values()), f"{title}: a line without values"
        assert w["drawn"] == len(traces), f"{title}: {w['drawn']} of {len(traces)} drawn"
        assert drawn_lines(w) >= lines(title) > 0, f"{title}: {w['paths']}"
    assert len(expected["train.loss"]) == 5 and min(expected["train.loss"].values()) == 4
    assert expected["test.sel_rate"] == {"rate": 2}  # validated after epochs 1 and 2

    # offline: every request stayed on this machine and every asset was served
    requests = {
        e["params"]["requestId"]: e["params"]["request"]["url"]
        for e in browser.events
        if e["method"] == "Network.requestWillBeSent"
    }
    status = {
        e["params"]["requestId"]: e["params"]["response"]["status"]
        for e in browser.events
        if e["method"] == "Network.responseReceived"
    }
    failed = {
        requests.get(e["params"]["requestId"]): e["params"].get("errorText")
        for e in browser.events
        if e["method"] == "Network.loadingFailed"
    }
    outside = [u for u in requests.values() if not u.startswith(("http://127.0.0.1:", "data:"))]
    assert not outside, f"the page requested other hosts: {outside}"
    static = {u: status.get(r) for r, u in requests.items() if "/static/" in u}
    assert len(static) >= 15 and all(s == 200 for s in static.values()), static
    assert not {u: e for u, e in failed.items() if u and "/static/" in u}, failed

    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape[:2] == VIEW[::-1] and im.std() > 20  # a drawn page, not a blank one
