"""The benchmark scripts run (tiny settings) and check what they compare.

bench_matching's two formulations give identical matches; bench_train_step's variants with
and without --grad_ckpt give the same loss, and its table / JSON carry every variant.
Timings are not asserted (benchmarks/RESULTS.md holds the recorded runs).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import PAIR_FILE, REPO


def run(module: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_bench_matching_formulations_agree(tmp_path):
    """Both variants run their own kernels (the script checks the functions in use, so a
    swap that stops applying fails instead of comparing the fast path with itself)."""
    out = tmp_path / "report.md"
    text = run(
        "benchmarks.bench_matching",
        "--devices",
        "cpu",
        "--imsizes",
        "128",
        "--repeats",
        "1",
        "--out",
        str(out),
    )
    assert "identical matches: True" in text
    report = out.read_text()
    assert "| cpu | 128 | fast |" in report and "| cpu | 128 | naive |" in report
    assert "identical: yes" in report


def test_bench_matching_variants_name_their_kernels():
    from benchmarks.bench_matching import KERNELS, build_net, kernels_in_use

    build_net("fast", "cpu")
    assert kernels_in_use() == KERNELS["fast"]


@pytest.mark.slow
def test_bench_train_step_variants(tmp_path):
    js = tmp_path / "rows.json"
    text = run(
        "benchmarks.bench_train_step",
        "--variants",
        "1,off,0",
        "1,off,1",
        "1,off,0,old",
        "--ptmax",
        "4",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
        str(js),
        "--profile",
        str(tmp_path),
    )
    rows = json.loads(js.read_text())
    assert [r["variant"] for r in rows] == ["1,off,0", "1,off,1", "1,off,0,old"]
    assert all("error" not in r for r in rows), rows
    assert rows[0]["loss"] == rows[1]["loss"]  # --grad_ckpt recomputes, same step
    # The regressor input as before issue 17: the same first step within float32 rounding.
    assert rows[2]["form"] == "old" and rows[0]["form"] == "new"
    assert rows[2]["loss"] == pytest.approx(rows[0]["loss"], rel=1e-5)
    assert rows[0]["rows_per_regressor"] == rows[1]["rows_per_regressor"] == 4 * 8
    assert rows[0]["time_ratio"] == rows[0]["peak_ratio"] == 1.0
    assert "| batch 1, fp32, grad_ckpt | 32 |" in text
    assert (tmp_path / "profile_1_off_1.txt").read_text().count("aten::") > 5


def test_bench_train_step_variant_forms():
    from benchmarks.bench_train_step import Variant

    v = Variant.parse("4,bf16,1,compile")
    assert (v.batch, v.amp, v.ckpt, v.form) == (4, "bf16", True, "compile")
    assert str(v) == "4,bf16,1,compile" and v.label == "batch 4, bf16, grad_ckpt, compile"
    assert str(Variant.parse("1,off,0")) == "1,off,0"  # "new" is the default, not written
    for bad in ("1,off,0,fast", "1,off,0,old,x", "1,off"):
        with pytest.raises(Exception, match="--variants"):
            Variant.parse(bad)


def test_bench_loader_reports_rates_and_cores(train_data, tmp_path):
    """The loader benchmark on the tiny synthetic set: a CPU cost per pair, a rate per
    worker count, and cores needed = (batch / GPU step) × CPU s per pair."""
    out = tmp_path / "loader.md"
    text = run(
        "benchmarks.bench_loader",
        "--data_root",
        str(train_data / "data"),
        "--pair_file",
        str(train_data / "pairs" / PAIR_FILE),
        "--item_type",
        "pair",
        "--workers",
        "0",
        "1",
        "--pairs",
        "8",
        "--batch",
        "2",
        "--gpu_step_s",
        "0.5",
        "--out",
        str(out),
    )
    assert out.read_text().strip() == text.strip()
    cpu_ms = float(re.search(r"\*\*(\d+) ms\*\*", text).group(1))
    assert cpu_ms > 0
    rates = re.findall(r"^\| ([01]) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    assert [w for w, _, _ in rates] == ["0", "1"] and all(float(r) > 0 for _, r, _ in rates)
    need, cores = re.search(r"^\| 0.5 \| ([\d.]+) \| ([\d.]+) \|$", text, re.M).groups()
    assert float(need) == 4.0  # batch 2 every 0.5 s
    assert float(cores) == pytest.approx(4.0 * cpu_ms / 1e3, abs=0.06)


def test_bench_loader_bad_input_is_one_line(tmp_path):
    junk = tmp_path / "pairs.npy"
    junk.write_text("not numpy")
    for args, word in (
        (["--data_root", str(tmp_path), "--pair_file", str(tmp_path / "none.npy")], "not found"),
        (["--data_root", str(tmp_path), "--pair_file", str(junk)], "not a numpy"),
        (["--pairs", "x"], "--pairs"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_loader", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and word in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
