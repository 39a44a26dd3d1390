"""Training plots without a server: draw runs from their ``metrics.jsonl`` with matplotlib.

    python -m utils.train.plot_run EXP_DIR [EXP_DIR ...] [--out run.png] [--dpi 100]

One figure, six panels: the losses (total, classification and epipolar per level; log
scale like the distances and the learning rate when all values are positive), the
classification F1 per level, the mean Sampson distance (px², log scale) of the coarse, mid
and fine matches the model selects, the learning rate (against the fractional epoch of the
periodic ``train`` records), and the per-epoch validation: mean / median pose error and the
pass rates at 1°, 5°, 10° with the selection rate that decides the best checkpoint (against
the epoch count after the validated epoch, as in Visdom). Several experiment folders go on
the same axes (one colour each) for comparison.

An EXP_DIR is an experiment folder (holding ``metrics.jsonl``) or a folder above
experiments (every ``metrics.jsonl`` below it is one run). A run interrupted mid-write (a
partial last line) still plots; values that are not finite are left out of the lines.
Default output: ``EXP_DIR/run.png`` for one folder, ``runs.png`` for several.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.common.cli import UsageError, make_parser, number, run_command
from utils.common.setup_helper import write_atomic

MODULE = "utils.train.plot_run"
METRICS_FILE = "metrics.jsonl"

# (panel title, line label, record kind, path of keys in the record, scale)
SERIES: tuple[tuple[str, str, str, tuple[str, ...], float], ...] = (
    ("loss", "total", "train", ("loss", "pair"), 1.0),
    ("loss", "cls mid", "train", ("loss", "cls_mid"), 1.0),
    ("loss", "cls fine", "train", ("loss", "cls_fine"), 1.0),
    ("loss", "epi mid", "train", ("loss", "epi_mid"), 1.0),
    ("loss", "epi fine", "train", ("loss", "epi_fine"), 1.0),
    ("classification F1", "mid", "train", ("cls_mid", "f1"), 1.0),
    ("classification F1", "fine", "train", ("cls_fine", "f1"), 1.0),
    ("match distance (px²)", "coarse", "train", ("match_dist", "cmid_pred"), 1.0),
    ("match distance (px²)", "mid", "train", ("match_dist", "mmid_pred"), 1.0),
    ("match distance (px²)", "fine", "train", ("match_dist", "ffid_pred"), 1.0),
    ("learning rate", "lr", "train", ("lr",), 1.0),
    ("validation pose error (°)", "mean", "val", ("mean_err",), 1.0),
    ("validation pose error (°)", "median", "val", ("median_err",), 1.0),
    ("validation rates (%)", "pass@1°", "val", ("pass_rates", "1"), 100.0),
    ("validation rates (%)", "pass@5°", "val", ("pass_rates", "5"), 100.0),
    ("validation rates (%)", "pass@10°", "val", ("pass_rates", "10"), 100.0),
    ("validation rates (%)", "selection", "val", ("rate",), 100.0),
)
PANELS: tuple[str, ...] = tuple(dict.fromkeys(s[0] for s in SERIES))
# runs of python -m train_ncnet (records with "stage": "ncnet"): the weak loss and scores
# per step and on the held-out pairs (x = 0: before training), coarse precision
NCNET_SERIES: tuple[tuple[str, str, str, tuple[str, ...], float], ...] = (
    ("weak loss", "train", "train", ("loss", "weak"), 1.0),
    ("weak loss", "held-out", "val", ("loss", "weak"), 1.0),
    ("weak score", "pos", "train", ("score", "pos"), 1.0),
    ("weak score", "neg", "train", ("score", "neg"), 1.0),
    ("weak score", "held-out pos", "val", ("score", "pos"), 1.0),
    ("weak score", "held-out neg", "val", ("score", "neg"), 1.0),
    ("coarse precision (%)", "held-out", "val", ("coarse_prec",), 100.0),
    ("coarse precision (%)", "training batches", "train", ("coarse_prec",), 100.0),
    ("held-out coarse matches per pair", "mutual", "val", ("matches",), 1.0),
)
NCNET_PANELS: tuple[str, ...] = tuple(dict.fromkeys(s[0] for s in NCNET_SERIES))
LOG_PANELS = {"loss", "match distance (px²)", "learning rate"}
PERCENT_PANELS = {"validation rates (%)", "coarse precision (%)"}
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)))


@dataclass
class Run:
    """The records of one experiment's metrics.jsonl."""

    name: str
    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped_last_line: bool = False


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], bool]:
    """The records of a metrics.jsonl file.

    Returns:
        (records, whether an incomplete last line was left out).
    Raises:
        UsageError: naming the file and line, for a malformed line that is not the last.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: cannot be read as a metrics file ({e})") from None
    records: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if n == len(lines):  # a run killed while writing its last record
                return records, True
            raise UsageError(f"{p}:{n}: not a metrics record ({e})") from None
        records.append(rec)
    return records, False


def _value(rec: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    v: Any = rec
    for k in keys:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    try:
        v = float(v)  # non-finite values are written as strings ("nan", "inf")
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


MAX_EPOCH = 1e6  # x beyond it (e.g. an epoch of 1e18 in a damaged file) is not plotted


def _x_of(rec: dict[str, Any]) -> float | None:
    """The x of a record (see :func:`series`); None when it is not a finite number in
    [0, MAX_EPOCH]."""
    try:
        x = float(rec["x"]) if rec.get("kind") == "train" else float(rec.get("epoch", -1)) + 1
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    return x if math.isfinite(x) and 0 <= x <= MAX_EPOCH else None


def out_of_range(records: Sequence[dict[str, Any]]) -> int:
    """How many train / val records have no plottable x (see :func:`_x_of`)."""
    return sum(1 for r in records if r.get("kind") in ("train", "val") and _x_of(r) is None)


def series(
    records: Sequence[dict[str, Any]], kind: str, keys: tuple[str, ...], scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """(x, y) of one plotted line: x is the record's fractional epoch (``train``) or the epoch
    count after the validated epoch (``val``); points without a finite value are left out."""
    xs, ys = [], []
    for rec in records:
        if rec.get("kind") != kind:
            continue
        x = _x_of(rec)
        y = _value(rec, keys)
        if x is None or y is None:
            continue
        xs.append(float(x))
        ys.append(y * scale)
    return xs, ys


def find_runs(exp_dirs: Sequence[str | Path]) -> list[Run]:
    """The runs under the given folders (see the module docstring).

    Raises:
        UsageError: a folder that does not exist or holds no metrics.jsonl.
    """
    runs: list[Run] = []
    for d in exp_dirs:
        p = Path(d)
        if not p.is_dir():
            raise UsageError(f"experiment folder {p} does not exist")
        files = (
            [p / METRICS_FILE] if (p / METRICS_FILE).is_file() else sorted(p.rglob(METRICS_FILE))
        )
        if not files:
            raise UsageError(f"no {METRICS_FILE} in {p} or below it")
        for f in files:
            name = str(p) if f.parent == p else str(f.parent.relative_to(p.parent))
            runs.append(Run(name, f))
    for r in runs:
        r.records, r.skipped_last_line = read_metrics(r.path)
    return runs


def is_ncnet_run(run: Run) -> bool:
    """Whether `run` was written by ``python -m train_ncnet``."""
    return any(rec.get("stage") == "ncnet" for rec in run.records)


def series_for(runs: Sequence[Run]) -> tuple[tuple[str, str, str, tuple[str, ...], float], ...]:
    """:data:`SERIES` for Patch2Pix runs, :data:`NCNET_SERIES` for NCNet runs, both if mixed."""
    kinds = {is_ncnet_run(r) for r in runs}
    return (SERIES if False in kinds else ()) + (NCNET_SERIES if True in kinds else ())


def plot_runs(runs: Sequence[Run], dpi: float = 100):
    """The figure of :data:`PANELS` (Patch2Pix runs) and / or :data:`NCNET_PANELS` (NCNet
    runs) for `runs` (matplotlib Agg, not shown).

    Every line's label is ``<series>`` for one run, ``<run>: <series>`` for several.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_series = series_for(runs) or SERIES
    panels = tuple(dict.fromkeys(s[0] for s in all_series))
    ncols = 3
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), dpi=dpi, squeeze=False
    )
    ax_of = {title: axes.flat[k] for k, title in enumerate(panels)}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        style_k: dict[str, int] = {}
        for title, label, kind, keys, scale in all_series:
            xs, ys = series(run.records, kind, keys, scale)
            k = style_k.get(title, 0)
            style_k[title] = k + 1
            if not xs:
                continue
            name = label if len(runs) == 1 else f"{run.name}: {label}"
            color = colors[(k if len(runs) == 1 else i) % len(colors)]
            ax_of[title].plot(
                xs,
                ys,
                color=color,
                linestyle=LINESTYLES[k % len(LINESTYLES)],
                marker="o" if kind == "val" else None,
                markersize=3,
                label=name,
            )
    for title, ax in ax_of.items():
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            if title in LOG_PANELS and all(min(ln.get_ydata()) > 0 for ln in ax.lines):
                ax.set_yscale("log")
            if title in PERCENT_PANELS:
                ax.set_ylim(-3, 103)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if len(runs) == 1:
        fig.suptitle(runs[0].name, fontsize=9)
    fig.tight_layout()
    return fig


def build_parser():
    """The command's flags."""
    p = make_parser(MODULE, "Plot training runs from their metrics.jsonl (no server needed).")
    p.add_argument(
        "exp_dirs", nargs="+", metavar="EXP_DIR", help="experiment folder(s), or folders above them"
    )
    p.add_argument(
        "--out",
        default=None,
        help="figure file (default: EXP_DIR/run.png for one folder, else runs.png)",
    )
    p.add_argument(
        "--dpi", type=number(float, 10, 1000), default=100, help="figure resolution (10..1000)"
    )
    return p


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = find_runs(args.exp_dirs)
    if args.out:
        out = Path(args.out)
    elif len(args.exp_dirs) == 1:
        out = Path(args.exp_dirs[0]) / "run.png"
    else:
        out = Path("runs.png")
    fmt = out.suffix[1:].lower() or "png"
    from matplotlib.figure import Figure

    if fmt not in Figure().canvas.get_supported_filetypes():
        raise UsageError(
            f"--out {out}: '{out.suffix}' is not an image format matplotlib writes "
            "(use e.g. .png, .pdf, .svg)"
        )
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give the figure's file name")
    fig = plot_runs(runs, dpi=args.dpi)
    write_atomic(out, lambda f: fig.savefig(f, format=fmt))  # WriteError: one line
    for r in runs:
        if r.skipped_last_line:
            print(f"{r.path}: incomplete last line left out", file=sys.stderr)
        bad = out_of_range(r.records)
        if bad:
            print(
                f"{r.path}: {bad} record(s) with an epoch / x outside 0..{MAX_EPOCH:g} left out",
                file=sys.stderr,
            )
    print(f"figure of {len(runs)} run(s) written to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m utils.train.plot_run``; returns the exit code."""
    return run_command(MODULE, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
