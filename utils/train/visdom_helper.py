"""Visdom plotting of the training metrics (docs/training.md §5).

Two plot sets, prefixes ``train`` and ``test``; each window ``<prefix>.<plot>`` holds one line
per legend of :data:`PLOTS`, plotted as the epoch-fractional x against the mean of the values
since the last plot (the caller passes those means). Lines with no value are not drawn. The
environment is saved on the server after each update. Without a host nothing is sent.

The per-epoch validation (docs/training.md §6) goes to the ``test`` set, x = the epoch count
after the validated epoch: the windows of :data:`VAL_PLOTS` (pose-error pass rates, mean /
median error, the selection rate that decides the best checkpoint, and the share of
coarse / fine / RANSAC-inlier matches per Sampson-distance bin), built from a validation
result by :func:`validation_means`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from utils.eval.measure import INLIER_DIST_BINS

PLOTS: dict[str, tuple[str, ...]] = {
    "pair_scores": ("pos", "neg"),
    "cls_ratios": ("mpos_gt", "mpos_pred", "fpos_gt", "fpos_pred"),
    "loss": ("pair", "nc", "cls_mid", "cls_fine", "epi_mid", "epi_fine"),
    "cls_mid": ("rec", "prec", "spec", "acc", "f1"),
    "cls_fine": ("rec", "prec", "spec", "acc", "f1"),
    "match_dist": (
        "cmid_gt",
        "mmid_gt",
        "mfid_gt",
        "ffid_gt",
        "cmid_pred",
        "mmid_pred",
        "mfid_pred",
        "ffid_pred",
    ),
    "mem": ("rss", "vms", "gpu_maloc", "gpu_mres"),
}
PREFIXES: tuple[str, ...] = ("train", "test")

# one legend per Sampson-distance bin (px²) of the validation histograms
DIST_LEGENDS: tuple[str, ...] = tuple(
    f"[{a:g},{b:g})" for a, b in zip(INLIER_DIST_BINS, INLIER_DIST_BINS[1:])
)
VAL_PLOTS: dict[str, tuple[str, ...]] = {
    "pose_err": ("mean", "median"),
    "pass_rates": tuple(f"{t}deg" for t in range(1, 11)),
    "sel_rate": ("rate",),
    "dist_coarse": DIST_LEGENDS,
    "dist_fine": DIST_LEGENDS,
    "dist_inlier": DIST_LEGENDS,
}
"""Windows ``test.<plot>`` of the per-epoch validation (one line per legend)."""


def validation_means(res: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """A validation result (``ImmatchValResult.as_dict()`` or its ``metrics.jsonl`` record)
    as ``{plot: {legend: value}}`` for the ``test`` windows of :data:`VAL_PLOTS`.

    Pass rates and histogram shares are in percent.
    """
    out: dict[str, dict[str, float]] = {
        "pose_err": {"mean": res.get("mean_err"), "median": res.get("median_err")},
        "pass_rates": {
            f"{int(k)}deg": 100.0 * float(v) for k, v in (res.get("pass_rates") or {}).items()
        },
        "sel_rate": {"rate": res.get("rate")},
    }
    for tag, hist in (res.get("dist_hist") or {}).items():
        out[f"dist_{tag}"] = {name: 100.0 * float(v) for name, v in zip(DIST_LEGENDS, hist)}
    return out


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class VisdomPlotter:
    """Sends the training plots of one environment to a Visdom server.

    Args:
        host: server host (e.g. ``localhost``); None disables everything.
        port: server port (int or numeric string); Visdom's 8097 when None.
        env: environment name (``ExperimentTags.visdom_env``).
        lprint: where warnings go (a failed connection disables the plotter once, with a
            message, and training continues).
    """

    # the windows and legends this plotter draws (a subclass may draw other ones)
    plots: Mapping[str, tuple[str, ...]] = PLOTS
    val_plots: Mapping[str, tuple[str, ...]] = VAL_PLOTS

    def __init__(
        self,
        host: str | None,
        port: int | str | None,
        env: str,
        lprint: Callable[[str], Any] = print,
    ) -> None:
        self.env = env
        self.lprint = lprint
        self.vis = None
        self._known: set[str] = set()
        if not host:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from visdom import Visdom

        server = host if "://" in host else f"http://{host}"
        try:
            self.vis = Visdom(
                server=server,
                port=int(port) if port is not None else 8097,
                env=env,
                raise_exceptions=True,
                use_incoming_socket=False,
            )
        except (ConnectionError, OSError) as e:
            self._disable(e)

    @property
    def enabled(self) -> bool:
        """Whether plots are sent."""
        return self.vis is not None

    def _disable(self, err: Exception) -> None:
        self.lprint(
            f"Visdom disabled: cannot reach the server ({err}); training goes on without plots."
        )
        self.vis = None

    def plot(self, prefix: str, x: float, means: Mapping[str, Mapping[str, float]]) -> list[str]:
        """Append one point per legend with a (finite) value, then save the environment.

        Args:
            prefix: 'train' or 'test'.
            x: fractional epoch.
            means: ``{plot: {legend: mean since the last plot}}``; plots and legends outside
                :data:`PLOTS` (and, for 'test', :data:`VAL_PLOTS`) are ignored.
        Returns:
            The names of the windows that received points (empty when disabled).
        """
        if self.vis is None:
            return []
        if prefix not in PREFIXES:
            raise ValueError(f"unknown plot prefix {prefix!r}, expected one of {PREFIXES}")
        updated = []
        plots = {**self.plots, **self.val_plots} if prefix == "test" else self.plots
        try:
            for plot, legends in plots.items():
                vals = means.get(plot, {})
                points = [(n, float(vals[n])) for n in legends if n in vals and _finite(vals[n])]
                if not points:
                    continue
                win = f"{prefix}.{plot}"
                for name, y in points:
                    self._append(win, name, float(x), y)
                updated.append(win)
            if updated:
                self.vis.save([self.env])
        except (ConnectionError, OSError) as e:
            self._disable(e)
            return []
        return updated

    def _append(self, win: str, name: str, x: float, y: float) -> None:
        X, Y = np.array([x]), np.array([y])
        if win not in self._known:
            if not self.vis.win_exists(win, env=self.env):
                self.vis.line(
                    Y=Y,
                    X=X,
                    win=win,
                    env=self.env,
                    opts={"title": win, "legend": [name], "showlegend": True, "xlabel": "epoch"},
                )
                self._known.add(win)
                return
            self._known.add(win)
        self.vis.line(Y=Y, X=X, win=win, env=self.env, update="append", name=name)
