"""utils/train/plot_run.py on a recorded metrics file (a real quick-start run, 2 epochs).

The expected values are read from the file here, independently of the module: every line
of the figure must carry exactly the file's numbers.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from utils.train import plot_run

RECORDED = Path(__file__).resolve().parent / "data" / "quickstart_metrics.jsonl"


def _records() -> list[dict]:
    return [json.loads(line) for line in RECORDED.read_text().splitlines() if line.strip()]


def _expected(records: list[dict], kind: str, keys: tuple[str, ...], scale: float):
    xs, ys = [], []
    for r in records:
        if r["kind"] != kind:
            continue
        v = r
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        if v is None or not math.isfinite(float(v)):
            continue
        xs.append(r["x"] if kind == "train" else r["epoch"] + 1)
        ys.append(float(v) * scale)
    return xs, ys


@pytest.fixture
def exp_dir(tmp_path: Path) -> Path:
    d = tmp_path / "exp"
    d.mkdir()
    shutil.copy(RECORDED, d / "metrics.jsonl")
    return d


def _lines(fig) -> dict[tuple[str, str], tuple[list, list]]:
    return {
        (ax.get_title(), ln.get_label()): (list(ln.get_xdata()), list(ln.get_ydata()))
        for ax in fig.axes
        for ln in ax.lines
    }


def test_every_series_equals_the_file(exp_dir: Path) -> None:
    recs = _records()
    kinds = {r["kind"] for r in recs}
    assert {"train", "epoch", "val"} <= kinds  # the recording has all kinds of records
    fig = plot_run.plot_runs(plot_run.find_runs([exp_dir]))
    lines = _lines(fig)
    assert {t for t, _ in lines} == set(plot_run.PANELS)
    n_drawn = 0
    for title, label, kind, keys, scale in plot_run.SERIES:
        xs, ys = _expected(recs, kind, keys, scale)
        if not xs:
            assert (title, label) not in lines
            continue
        assert lines[(title, label)][0] == pytest.approx(xs), (title, label)
        assert lines[(title, label)][1] == pytest.approx(ys), (title, label)
        n_drawn += 1
    assert n_drawn == len(lines) and n_drawn >= 15
    # the validation points sit at the epoch count after each validated epoch
    assert lines[("validation pose error (°)", "mean")][0] == [1.0, 2.0]


def test_cli_writes_the_figure(exp_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert plot_run.main([str(exp_dir)]) == 0
    png = exp_dir / "run.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in capsys.readouterr().out


def test_partial_last_line_still_plots(exp_dir: Path, capsys: pytest.CaptureFixture) -> None:
    text = (exp_dir / "metrics.jsonl").read_text()
    n_full = len([ln for ln in text.splitlines() if ln.strip()])
    (exp_dir / "metrics.jsonl").write_text(text + '{"kind": "train", "epoch": 2, "x": 2.5, "lo')
    runs = plot_run.find_runs([exp_dir])
    assert len(runs[0].records) == n_full and runs[0].skipped_last_line
    out = exp_dir / "partial.png"
    assert plot_run.main([str(exp_dir), "--out", str(out)]) == 0 and out.is_file()
    assert "incomplete last line" in capsys.readouterr().err
    # a broken line that is not the last one is an error naming the file and line
    (exp_dir / "metrics.jsonl").write_text("{oops\n" + text)
    assert plot_run.main([str(exp_dir)]) == 2
    assert "metrics.jsonl:1: not a metrics record" in capsys.readouterr().err


def test_several_runs_on_one_figure(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "out" / name).mkdir(parents=True)
        shutil.copy(RECORDED, tmp_path / "out" / name / "metrics.jsonl")
    # two folders given, and one folder above both: the same two runs
    for argv in ([tmp_path / "out" / "a", tmp_path / "out" / "b"], [tmp_path / "out"]):
        runs = plot_run.find_runs(argv)
        assert [Path(r.name).name for r in runs] == ["a", "b"]
        lines = _lines(plot_run.plot_runs(runs))
        labels = {label for _, label in lines}
        assert any(lb.endswith("a: total") for lb in labels)
        assert any(lb.endswith("b: total") for lb in labels)


def test_missing_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert plot_run.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    missing = tmp_path / "nope"
    assert err == f"utils.train.plot_run: error: experiment folder {missing} does not exist"
    assert plot_run.main([str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_binary_metrics_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "metrics.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert plot_run.main([str(tmp_path), "--out", str(tmp_path / "run.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'metrics.jsonl'}: cannot be read" in err[0]
    assert not (tmp_path / "run.png").exists()
