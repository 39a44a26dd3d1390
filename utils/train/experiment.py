"""Experiment directory naming (docs/training.md §4), the log file and the metrics file.

Tags follow the original's formatting: values print as Python prints them (the default
``--weight_epi`` is the integer list [1, 1], hence ``wepi1-1``; ``--weight_cls`` is the float
10.0, hence ``wcls10.0``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from argparse import Namespace
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from networks.optim import parse_lr_decay
from utils.common.setup_helper import write_text_atomic

__all__ = ["ExperimentLog", "ExperimentTags", "make_tags", "save_config", "truncate_metrics"]

LOG_NAME = "log.txt"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
LAST_CKPT = "last_ckpt.pth"
BEST_CKPT = "immatch_best_ckpt.pth"


def _join(values: Sequence[Any], sep: str = "") -> str:
    return sep.join(str(v) for v in values)


@dataclass(frozen=True)
class ExperimentTags:
    """The tags of one experiment (all strings)."""

    data_tag: str
    odir_tag: str
    feat_tag: str
    thres_tag: str
    train_tag: str
    regress_tag: str

    @property
    def exp_tag(self) -> str:
        """``{feat_tag}{thres_tag}{train_tag}``, e.g. ``ks2fe0123ep50-5cls50-5_wcls10.0...``."""
        return f"{self.feat_tag}{self.thres_tag}{self.train_tag}"

    @property
    def visdom_env(self) -> str:
        """``{odir_tag}.{feat_tag}_{thres_tag}{train_tag}_{regress_tag}``."""
        return (
            f"{self.odir_tag}.{self.feat_tag}_{self.thres_tag}{self.train_tag}_{self.regress_tag}"
        )

    def exp_dir(self, out_dir: str | Path) -> Path:
        """``<out_dir>/<odir_tag>/<exp_tag>/<regress_tag>``."""
        return Path(out_dir) / self.odir_tag / self.exp_tag / self.regress_tag


def make_tags(args: Namespace) -> ExperimentTags:
    """Tags from the training flags (docs/training.md §4).

    Args:
        args: the parsed flags (match_npy, prefix, freeze_feat, change_stride, pretrain,
            ksize, feat_idx, epi_dthres, cls_dthres, weight_cls, weight_epi, lr_init,
            weight_decay, lr_decay, feat_comb, ptmax, conv_kers, conv_dims, conv_strs,
            fc_dims, psize, panc, shared).
    Raises:
        ValueError: for a malformed ``--lr_decay``.
    """
    data_tag = "Mega." + (
        str(args.match_npy)
        .replace("megadepth_pairs.", "")
        .replace("_imrat1.5", "")
        .replace(".npy", "")
    )
    odir_tag = f"{args.prefix}.{data_tag}" if args.prefix else data_tag
    odir_tag += f".freeze{args.freeze_feat}"
    if args.change_stride:
        odir_tag += ".cs"
    if args.pretrain:
        odir_tag += ".pretrain"

    feat_tag = f"ks{args.ksize}fe{_join(args.feat_idx)}"
    thres_tag = f"ep{_join(args.epi_dthres, '-')}cls{_join(args.cls_dthres, '-')}"
    train_tag = f"_wcls{args.weight_cls}wepi{_join(args.weight_epi, '-')}.lr{args.lr_init}"
    if args.weight_decay:
        train_tag += f"wd{args.weight_decay}"
    decay = parse_lr_decay(args.lr_decay)
    if decay is not None:
        kind, factor, steps = decay
        train_tag += f"{'lrst' if kind == 'step' else 'lrms'}{factor}-{steps[0]}"

    regress_tag = (
        f"{args.feat_comb}{args.ptmax}_conv{_join(args.conv_kers)}"
        f"dim{_join(args.conv_dims, '-')}str{_join(args.conv_strs, '-')}"
        f"fc{_join(args.fc_dims, '-')}_psz{_join(args.psize, '-')}a{args.panc}"
    )
    if args.shared:
        regress_tag += ".shared"
    return ExperimentTags(data_tag, odir_tag, feat_tag, thres_tag, train_tag, regress_tag)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Namespace):
        return {k: _jsonable(v) for k, v in vars(value).items()}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return str(value)


def save_config(args: Namespace, exp_dir: Path) -> Path:
    """Write the resolved configuration to ``<exp_dir>/config.json`` and return its path."""
    path = Path(exp_dir) / CONFIG_NAME
    return write_text_atomic(path, json.dumps(_jsonable(args), indent=2, sort_keys=True) + "\n")


def truncate_metrics(path: str | Path, start_epoch: int) -> int:
    """Drop the records of epochs >= `start_epoch` from a metrics.jsonl (atomically), so that
    a resumed run, which re-runs its start epoch, leaves no duplicate rows. Records without
    an epoch are kept; a line that is not JSON (cut by a kill mid-write) is dropped.

    Returns:
        the number of lines dropped (0 when the file does not exist).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept: list[str] = []
    dropped = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        epoch = rec.get("epoch") if isinstance(rec, dict) else None
        if isinstance(epoch, (int, float)) and epoch >= start_epoch:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        write_text_atomic(path, "".join(f"{x}\n" for x in kept))
    return dropped


class ExperimentLog:
    """Line log (``log.txt``) and JSON-lines metrics (``metrics.jsonl``) of an experiment.

    Both files are opened in append mode, so a resumed run continues them. Every log line is
    also echoed to ``echo`` (stdout by default; None for silence).
    """

    def __init__(self, exp_dir: str | Path, echo: Callable[[str], Any] | None = print) -> None:
        self.exp_dir = Path(exp_dir)
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.exp_dir / LOG_NAME
        self.metrics_path = self.exp_dir / METRICS_NAME
        self._echo = echo
        self._log: TextIO = self.log_path.open("a", encoding="utf-8")
        self._metrics: TextIO = self.metrics_path.open("a", encoding="utf-8")

    def __call__(self, msg: str) -> None:
        """Append one (possibly multi-line) message to log.txt and echo it."""
        self._log.write(msg + "\n")
        self._log.flush()
        if self._echo is not None:
            self._echo(msg)

    def metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON object (one line) to metrics.jsonl; adds a ``time`` field."""
        rec = {"time": round(time.time(), 3), **_jsonable(dict(record))}
        self._metrics.write(json.dumps(rec, sort_keys=False) + "\n")
        self._metrics.flush()

    def log_config(self, args: Namespace) -> None:
        """Write the full configuration, one ``name: value`` per line."""
        lines = [f"Command: {' '.join(sys.argv)}", ">>>>>> Configuration"]
        lines += [f"  {k}: {v}" for k, v in sorted(vars(args).items())]
        self("\n".join(lines))

    def close(self) -> None:
        """Close both files."""
        for f in (self._log, self._metrics):
            if not f.closed:
                f.close()

    def __enter__(self) -> ExperimentLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
