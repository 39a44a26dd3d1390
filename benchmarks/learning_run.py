"""The whole training chain on generated data, evaluated on held-out scenes after every stage.

    python -m benchmarks.learning_run [--out output/learning_run] [--preset cpu|gpu|tiny]
        [--start auto|imagenet|random] [--device auto|cpu|cuda]

1. Data (no download): training scenes (``data_pairs.make_synthetic`` + pairs), one more
   scene of another seed whose pairs are the NCNet stage's held-out pairs, and the two test
   sets, rendered from scenes never used for training: a MegaDepth-1500-layout set
   (``data_pairs.synthetic.megadepth1500``: scenes "0015" and "0022" of their own kind) and a
   synthetic HPatches set (``utils.eval.make_hpatches_synthetic``).
2. ``untrained``: the model as initialised (random regressors; backbone random or ImageNet).
3. NCNet stage: ``python -m train_ncnet`` on the training pairs; evaluated as ``ncnet``
   (its weights + the same random regressors as ``untrained``).
4. Patch2Pix stage: ``python -m train_patch2pix --pretrain <NCNet weights>``; every epoch's
   checkpoint is evaluated (``patch2pix_ep<N>``).

Evaluation of each stage (``utils.eval.levels``: one network pass per pair, every level):
MegaDepth-1500 layout — pose AUC@5/10/20° (from the fine matches, as the benchmark), matches
per pair, epipolar precision of the coarse, mid, fine (and unfiltered fine) matches; HPatches
— MMA@1/3/5 px of the same levels. Written to ``<out>/results.json``, ``<out>/results.md``
(the table), ``<out>/curves.png`` (held-out metrics per stage) and the two training runs'
``plot_run`` figures (``<out>/ncnet_run.png``, ``<out>/patch2pix_run.png``).

Start: ``auto`` takes the ImageNet ResNet-34 weights when they are in the torch cache or can
be downloaded (the paper's start: NCNet with a frozen extractor), else a random extractor,
which the NCNet stage then fine-tunes (``--fe_finetune_params 13 --fe_bn_train``; the
reasons are measured in benchmarks/RESULTS.md, "Learning run").
"""

from __future__ import annotations

import json
import sys
import time
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.common.cli import UsageError, make_parser, run_command
from utils.common.setup_helper import write_atomic, write_text_atomic

MODULE = "benchmarks.learning_run"
PAIR_NAME = "megadepth_pairs.ov0.35_imrat1.5.pair500.excl_test.npy"

# Every knob of one preset. cpu: what fits 90 minutes on a 2-core machine (measured, see
# RESULTS.md); gpu: the paper's Patch2Pix setting; tiny: a smoke test of the whole chain.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(
        train_scenes=8,
        images_per_scene=12,
        size=(480, 320),
        ncnet_size=(240, 160),
        ncnet_batch=8,
        ncnet_lr=1e-3,
        ncnet_epochs=5,
        ncnet_iters=40,
        ncnet_val_pairs=48,
        ncnet_val_scenes=2,
        p2p_size=(320, 224),
        p2p_batch=1,
        p2p_ptmax=50,
        p2p_epochs=3,
        p2p_iters=120,
        p2p_freeze_feat=0,
        p2p_lr=5e-4,
        amp="bf16",
        val_pairs=5,
        val_imsize=320,
        eval_imsize=640,
        md1500_images=16,
        md1500_pairs=10,
        hpatches_seqs=2,
    ),
    "gpu": dict(
        train_scenes=16,
        images_per_scene=16,
        size=(640, 480),
        ncnet_size=(400, 400),
        ncnet_batch=16,
        ncnet_lr=5e-4,
        ncnet_epochs=5,
        ncnet_iters=100,
        ncnet_val_pairs=64,
        ncnet_val_scenes=2,
        p2p_size=(480, 320),
        p2p_freeze_feat=0,
        p2p_batch=4,
        p2p_ptmax=400,
        p2p_epochs=5,
        p2p_iters=150,
        p2p_lr=5e-4,
        amp="bf16",
        val_pairs=20,
        val_imsize=640,
        eval_imsize=640,
        md1500_images=16,
        md1500_pairs=10,
        hpatches_seqs=2,
    ),
    "tiny": dict(
        train_scenes=1,
        images_per_scene=4,
        size=(240, 160),
        ncnet_size=(96, 64),
        ncnet_batch=2,
        ncnet_lr=1e-3,
        ncnet_epochs=1,
        ncnet_iters=2,
        ncnet_val_pairs=2,
        ncnet_val_scenes=1,
        p2p_size=(96, 64),
        p2p_freeze_feat=0,
        p2p_batch=1,
        p2p_ptmax=4,
        p2p_epochs=1,
        p2p_iters=1,
        p2p_lr=5e-4,
        amp="off",
        val_pairs=1,
        val_imsize=160,
        eval_imsize=160,
        md1500_images=4,
        md1500_pairs=1,
        hpatches_seqs=1,
    ),
}


# ----------------------------------------------------------------------------- data
def make_data(root: Path, p: dict[str, Any], seed: int, log=print) -> dict[str, Path]:
    """Render (or reuse) the training, NCNet-held-out and test sets under `root`."""
    from data_pairs import make_synthetic, prep_megadepth_training_pairs
    from data_pairs.synthetic.megadepth1500 import write_megadepth1500
    from utils.eval.make_hpatches_synthetic import make_synthetic_hpatches

    w, h = p["size"]
    paths = {
        "train": root / "train",
        "ncnet_val": root / "ncnet_val",
        "md1500": root / "megadepth1500",
        "hpatches": root / "hpatches",
    }
    common = ["--width", str(w), "--height", str(h), "--supersample", "1"]
    common += ["--portrait_every", "0"]
    for key, scenes, first_id, extra_seed, val in (
        ("train", p["train_scenes"], 9000, 0, 1),
        ("ncnet_val", p["ncnet_val_scenes"], 9500, 1000, 0),
    ):
        base = paths[key]
        if not (base / "pairs" / PAIR_NAME).is_file():
            log(f"rendering {scenes} scene(s) into {base}")
            argv = ["--out", str(base), "--scenes", str(scenes), "--seed", str(seed + extra_seed)]
            argv += ["--images_per_scene", str(p["images_per_scene"]), "--val_scenes", str(val)]
            argv += ["--first_scene_id", str(first_id), *common]
            if make_synthetic.main(argv) != 0:
                raise UsageError(f"rendering {base} failed")
            argv = ["--base_dir", str(base / "MegaDepth_undistort"), "--save_dir"]
            if prep_megadepth_training_pairs.main([*argv, str(base / "pairs")]) != 0:
                raise UsageError(f"pair generation for {base} failed")
    if not (paths["md1500"] / "megadepth_test_1500_scene_info").is_dir():
        log(f"rendering the MegaDepth-1500-layout test set into {paths['md1500']}")
        write_megadepth1500(
            paths["md1500"],
            pairs_per_file=p["md1500_pairs"],
            seed=seed,
            n_images=p["md1500_images"],
            log=log,
        )
    if not paths["hpatches"].is_dir():
        log(f"writing the synthetic HPatches set into {paths['hpatches']}")
        make_synthetic_hpatches(paths["hpatches"], p["hpatches_seqs"], seed=seed)
    return paths


# ----------------------------------------------------------------------------- evaluation
def evaluate(net, paths: dict[str, Path], imsize: int, io_thres: float = 0.5) -> dict[str, Any]:
    """Held-out metrics of every level (see the module docstring)."""
    from utils.eval.hpatches import evaluate_hpatches
    from utils.eval.levels import LevelMatchers
    from utils.eval.megadepth1500 import evaluate_megadepth1500

    lm = LevelMatchers(net, imsize=imsize, io_thres=io_thres)
    t0 = time.time()
    out: dict[str, Any] = {"md1500": {}, "hpatches": {}}
    info = paths["md1500"] / "megadepth_test_1500_scene_info"
    for level in ("fine", "coarse", "mid", "fine_all"):
        s = evaluate_megadepth1500(info, paths["md1500"], lm.matcher(level), progress=False)
        s = s["summary"]
        out["md1500"][level] = {
            "auc": s["auc"],
            "matches": s["mean_matches"],
            "precision": s["precision"],
            "n_pairs": s["n_pairs"],
        }
        h = evaluate_hpatches(paths["hpatches"], lm.matcher(level), progress=False)["summary"]
        out["hpatches"][level] = {
            "mma": {k: h["all"]["mma"][k] for k in ("1", "3", "5")},
            "matches": h["all"]["mean_matches"],
            "n_pairs": h["all"]["n_pairs"],
        }
    out["seconds"] = round(time.time() - t0, 1)
    return out


def diagnose(net, paths: dict[str, Path], imsize: int, io_thres: float = 0.5) -> dict[str, Any]:
    """The regressors alone on the MegaDepth-1500-layout set: ground-truth matches snapped to
    the coarse grid (``utils.eval.levels.OracleCoarseLevels``), refined, scored per level."""
    from utils.eval.levels import OracleCoarseLevels
    from utils.eval.megadepth1500 import evaluate_megadepth1500, load_pairs, oracle_matcher

    info = paths["md1500"] / "megadepth_test_1500_scene_info"
    gt = oracle_matcher(load_pairs(info, paths["md1500"]))
    lm = OracleCoarseLevels(gt, net, imsize=imsize, io_thres=io_thres)
    t0 = time.time()
    out: dict[str, Any] = {}
    for level in ("fine", "coarse", "mid", "fine_all"):
        s = evaluate_megadepth1500(info, paths["md1500"], lm.matcher(level), progress=False)
        s = s["summary"]
        out[level] = {"auc": s["auc"], "matches": s["mean_matches"], "precision": s["precision"]}
    out["seconds"] = round(time.time() - t0, 1)
    return out


def diagnosis_table(diag: dict[str, dict[str, Any]]) -> str:
    """Markdown table of :func:`diagnose` per model."""
    lines = [
        "| regressors of | AUC@5 | AUC@10 | AUC@20 | matches | prec coarse (snapped GT) "
        "| prec mid | prec fine | prec fine_all |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in diag.items():
        auc = d["fine"]["auc"]
        lines.append(
            f"| {name} | {100 * auc['5']:.1f} | {100 * auc['10']:.1f} | {100 * auc['20']:.1f} "
            f"| {d['fine']['matches']:.0f} | "
            + " | ".join(f"{100 * d[lv]['precision']:.1f}" for lv in LEVEL_ORDER)
            + " |"
        )
    return "\n".join(lines)


LEVEL_ORDER = ("coarse", "mid", "fine", "fine_all")


def untrained_model(weights: dict | None, imagenet: bool, device: torch.device, seed: int):
    """Patch2Pix in the paper's configuration, regressors from `seed` (the same for every
    stage that has not trained them), backbone ImageNet or random, `weights` on top."""
    from networks.patch2pix import Patch2Pix
    from utils.train.cli import build_parser
    from utils.train.trainer import regressor_config

    args = build_parser().parse_args([])  # the paper's regressor configuration (defaults)
    args.panc = 1  # anchors are a training device only
    torch.manual_seed(seed)
    cfg = Namespace(
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=regressor_config(args),
        weights_dict=weights,
        imagenet_init=imagenet,
        device=device,
        lprint=lambda *_a: None,
    )
    return Patch2Pix(cfg).eval()


# ----------------------------------------------------------------------------- report
def headline(res: dict[str, Any]) -> dict[str, float]:
    """The numbers of one stage's table row (percent)."""
    md, hp = res["md1500"], res["hpatches"]
    row = {f"AUC@{t}": 100 * md["fine"]["auc"][t] for t in ("5", "10", "20")}
    row["matches"] = md["fine"]["matches"]
    for lv in ("coarse", "mid", "fine", "fine_all"):
        row[f"prec {lv}"] = 100 * md[lv]["precision"]
    for lv in ("coarse", "mid", "fine"):
        for t in ("1", "3", "5"):
            row[f"MMA@{t} {lv}"] = 100 * hp[lv]["mma"][t]
    return row


def table(stages: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Markdown table of the stages' headline numbers."""
    cols = list(headline(stages[0][1]))
    lines = ["| stage | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, res in stages:
        row = headline(res)
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)


def plot_curves(stages: Sequence[tuple[str, dict[str, Any]]], path: Path) -> None:
    """Held-out metrics per stage: pose AUC, epipolar precision and MMA@3 per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in stages]
    rows = [headline(r) for _, r in stages]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    panels = (
        ("MegaDepth-1500 layout: pose AUC (%)", ["AUC@5", "AUC@10", "AUC@20"]),
        ("epipolar precision (%)", ["prec coarse", "prec mid", "prec fine", "prec fine_all"]),
        ("HPatches MMA@3px (%)", ["MMA@3 coarse", "MMA@3 mid", "MMA@3 fine"]),
    )
    for ax, (title, keys) in zip(axes, panels):
        for k in keys:
            ax.plot(x, [r[k] for r in rows], marker="o", label=k)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("held-out scenes after each training stage")
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=90))


# ----------------------------------------------------------------------------- the run
def resolve_start(start: str, log=print) -> bool:
    """True for the ImageNet start, False for a random extractor."""
    if start == "random":
        return False
    from networks.resnet import download_imagenet_weights, find_imagenet_weights

    if find_imagenet_weights() is not None:
        return True
    try:
        download_imagenet_weights()
        return True
    except Exception as e:  # offline: say so and start from a random extractor
        if start == "imagenet":
            raise UsageError(f"--start imagenet: {' '.join(str(e).split())}") from None
        log(
            f"ImageNet ResNet-34 weights unavailable ({' '.join(str(e).split())[:160]}): "
            "random extractor, fine-tuned in the NCNet stage"
        )
        return False


def build_parser():
    """The command's flags."""
    ap = make_parser(
        MODULE,
        "Train the chain NCNet -> Patch2Pix on generated data and "
        "evaluate every stage on held-out scenes.",
    )
    ap.add_argument("--out", default="output/learning_run", help="output folder")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="sizes and steps")
    ap.add_argument("--start", choices=["auto", "imagenet", "random"], default="auto")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data and the runs")
    ap.add_argument("--workers", type=int, default=1, help="data-loader workers")
    ap.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override knobs of the preset (e.g. p2p_freeze_feat=87; sizes as W,H); the "
        "resolved values are recorded in results.json",
    )
    ap.add_argument(
        "--ncnet_from",
        default=None,
        metavar="DIR",
        help="reuse the data and the NCNet stage of an earlier run in DIR (its 'untrained' "
        "and 'ncnet' results are copied, marked as such): only the Patch2Pix stage runs. "
        "Every knob that is not a Patch2Pix-stage one (p2p_*, amp, val_*) must equal DIR's",
    )
    ap.add_argument(
        "--diagnose_only",
        action="store_true",
        help="only the regressors-alone diagnosis of an existing run in --out (ground-truth "
        "coarse matches refined by the NCNet-stage and the last Patch2Pix checkpoint)",
    )
    return ap


# Knobs that only the Patch2Pix stage reads: a run reusing another's NCNet stage
# (--ncnet_from) may change these and nothing else.
P2P_STAGE_KNOBS = ("amp", "val_pairs", "val_imsize")


def resolve_params(preset: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The preset's knobs with ``KEY=VALUE`` overrides, each parsed as the preset's type
    (sizes as ``W,H``); an unknown key or a bad value is a one-line error naming --set."""
    p = dict(PRESETS[preset])
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in p:
            raise UsageError(
                f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(p))}"
            )
        old = p[key]
        try:
            if isinstance(old, tuple):
                value: Any = tuple(int(v) for v in text.split(","))
                if len(value) != len(old):
                    raise ValueError
            elif isinstance(old, bool):
                raise ValueError
            else:
                value = type(old)(text)
        except ValueError:
            raise UsageError(f"--set {item!r}: {key} takes a value like {old!r}") from None
        p[key] = value
    return p


def reused_stages(src: Path, p: dict[str, Any]) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """The 'untrained' and 'ncnet' results of the run in `src` and whether it started from
    ImageNet, checked to share every knob that is not a Patch2Pix-stage one with `p` (else,
    like a missing or foreign results.json, a one-line error)."""
    path = src / "results.json"
    weights = src / "ncnet" / "ncn_best.pth"
    if not path.is_file() or not weights.is_file():
        raise UsageError(f"--ncnet_from {src}: no results.json / ncnet/ncn_best.pth there")
    try:
        old = json.loads(path.read_text())
        params = old["config"]["params"]
        theirs = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        stages = [(name, dict(old["stages"][name])) for name in ("untrained", "ncnet")]
        imagenet = bool(old["config"]["imagenet_start"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(
            f"--ncnet_from {src}: {path.name} is not a learning-run record "
            f"({type(e).__name__}: {e})"
        ) from None
    differ = [
        k
        for k in sorted(set(p) | set(theirs))
        if not (k.startswith("p2p_") or k in P2P_STAGE_KNOBS) and p.get(k) != theirs.get(k)
    ]
    if differ:
        raise UsageError(
            f"--ncnet_from {src}: knobs other than the Patch2Pix stage's differ: "
            + ", ".join(f"{k} {theirs.get(k)!r} there, {p.get(k)!r} here" for k in differ)
        )
    return [(name, dict(res, copied_from=str(src))) for name, res in stages], imagenet


def run_diagnosis(
    out: Path, p: dict[str, Any], device: torch.device, seed: int, log, src: Path | None = None
) -> None:
    """:func:`diagnose` for the untrained regressors and the last Patch2Pix checkpoint;
    written to ``<out>/diagnosis.json`` and ``<out>/diagnosis.md``. The data and NCNet
    stage are `src`'s (--ncnet_from) when given, else `out`'s."""
    from utils.common.setup_helper import load_checkpoint_safe
    from utils.eval.model_helper import load_model

    base = src or out
    paths = {"md1500": base / "data" / "megadepth1500"}
    exp = next((out / "patch2pix").rglob("last_ckpt.pth")).parent
    last = exp / f"ckpt_ep{p['p2p_epochs']}.pth"
    sd = dict(load_checkpoint_safe(base / "ncnet" / "ncn_best.pth"))
    models = {
        "untrained (NCNet stage)": untrained_model(sd, False, device, seed),
        f"trained ({last.name})": load_model(last, device=device, lprint=lambda *_a: None),
    }
    diag = {}
    for name, net in models.items():
        diag[name] = diagnose(net, paths, p["eval_imsize"])
        log(f"diagnosis, {name}: " + diagnosis_table({name: diag[name]}).splitlines()[-1])
    write_text_atomic(out / "diagnosis.json", json.dumps(diag, indent=1) + "\n")
    write_text_atomic(out / "diagnosis.md", diagnosis_table(diag) + "\n")


def _main(argv: Sequence[str] | None = None) -> int:
    import train_ncnet
    import train_patch2pix
    from utils.train.plot_run import find_runs, plot_runs

    args = build_parser().parse_args(argv)
    p = resolve_params(args.preset, args.set)
    src = Path(args.ncnet_from) if args.ncnet_from else None
    reused, reused_imagenet = reused_stages(src, p) if src is not None else ([], False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    times: dict[str, float] = {}

    def log(msg: str) -> None:
        print(f"[learning_run {time.time() - t_start:7.0f} s] {msg}", flush=True)

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    if args.diagnose_only:
        run_diagnosis(out, p, device, args.seed, log, src)
        return 0
    imagenet = resolve_start(args.start, log)
    if src is not None:
        imagenet = reused_imagenet  # the earlier run's start decides the Patch2Pix stage's
    t = time.time()
    paths = make_data((src or out) / "data", p, args.seed, log=lambda m: log(str(m)))
    times["data"] = time.time() - t
    results_path = out / "results.json"
    stages: list[tuple[str, dict[str, Any]]] = []
    config = {
        "preset": args.preset,
        "params": p,
        "imagenet_start": imagenet,
        "device": str(device),
        "seed": args.seed,
        "argv": list(argv or sys.argv[1:]),
        "ncnet_from": None if src is None else str(src),
    }

    def record(name: str, res: dict[str, Any]) -> None:
        stages.append((name, res))
        h = headline(res)
        log(
            f"{name}: AUC@5/10/20 {h['AUC@5']:.1f}/{h['AUC@10']:.1f}/{h['AUC@20']:.1f}, "
            f"precision coarse/mid/fine {h['prec coarse']:.1f}/{h['prec mid']:.1f}/"
            f"{h['prec fine']:.1f} %, MMA@3 coarse/mid/fine {h['MMA@3 coarse']:.1f}/"
            f"{h['MMA@3 mid']:.1f}/{h['MMA@3 fine']:.1f} % ({res['seconds']:.0f} s)"
        )
        write_text_atomic(
            results_path,
            json.dumps({"config": config, "times": times, "stages": dict(stages)}, indent=1) + "\n",
        )
        write_text_atomic(out / "results.md", table(stages) + "\n")
        plot_curves(stages, out / "curves.png")

    if src is not None:  # --ncnet_from: the earlier run's data, NCNet weights and results
        for name, res in reused:
            record(name, res)
        ncn_weights = src / "ncnet" / "ncn_best.pth"
        log(f"reusing the NCNet stage of {src}")
    else:
        t = time.time()
        record(
            "untrained",
            evaluate(untrained_model(None, imagenet, device, args.seed), paths, p["eval_imsize"]),
        )
        times["eval_untrained"] = time.time() - t

        # NCNet stage
        w, h = p["ncnet_size"]
        ncnet_argv = [
            "--pair_file",
            str(paths["train"] / "pairs" / PAIR_NAME),
            "--val_pair_file",
            str(paths["ncnet_val"] / "pairs" / PAIR_NAME),
            "--data_root",
            str(paths["train"]),
            "--val_data_root",
            str(paths["ncnet_val"]),
            "--image_size",
            str(w),
            str(h),
            "--batch_size",
            str(p["ncnet_batch"]),
            "--lr",
            str(p["ncnet_lr"]),
            "--num_epochs",
            str(p["ncnet_epochs"]),
            "--max_iters_per_epoch",
            str(p["ncnet_iters"]),
            "--val_max_pairs",
            str(p["ncnet_val_pairs"]),
            "--seed",
            str(args.seed + 1),
            "--result_model_dir",
            str(out),
            "--result_model_fn",
            "ncnet",
            "--device",
            args.device,
            "--workers",
            str(args.workers),
            "--no_progress",
        ]
        if not imagenet:
            ncnet_argv += ["--random_backbone", "--fe_finetune_params", "13", "--fe_bn_train"]
        log("python -m train_ncnet " + " ".join(ncnet_argv))
        t = time.time()
        if train_ncnet.main(ncnet_argv) != 0:
            raise UsageError("the NCNet stage failed (see its log above)")
        times["train_ncnet"] = time.time() - t
        ncn_weights = out / "ncnet" / "ncn_best.pth"
        from utils.common.setup_helper import load_checkpoint_safe

        t = time.time()
        sd = dict(load_checkpoint_safe(ncn_weights))
        record(
            "ncnet",
            evaluate(untrained_model(sd, False, device, args.seed), paths, p["eval_imsize"]),
        )
        times["eval_ncnet"] = time.time() - t

    # Patch2Pix stage
    w, h = p["p2p_size"]
    p2p_argv = [
        "--data_root",
        str(paths["train"]),
        "--pair_root",
        str(paths["train"] / "pairs"),
        "-o",
        str(out / "patch2pix"),
        "--pretrain",
        str(ncn_weights),
        "--freeze_feat",
        str(87 if imagenet else p["p2p_freeze_feat"]),
        "--change_stride",
        "--panc",
        "8",
        "--batch",
        str(p["p2p_batch"]),
        "--ptmax",
        str(p["p2p_ptmax"]),
        "--train_size",
        str(w),
        str(h),
        "--epochs",
        str(p["p2p_epochs"]),
        "--max_iters_per_epoch",
        str(p["p2p_iters"]),
        "-lr",
        str(p["p2p_lr"]),
        "--amp",
        p["amp"],
        "--save_step",
        "1",
        "--val_imsize",
        str(p["val_imsize"]),
        "--val_sample_max",
        str(p["val_pairs"]),
        "--plot_counts",
        "4",
        "--seed",
        str(args.seed + 2),
        "--device",
        args.device,
        "--workers",
        str(args.workers),
        "--no_progress",
    ]
    if device.type == "cpu" and p["amp"] == "fp16":
        p2p_argv[p2p_argv.index("--amp") + 1] = "bf16"
    log("python -m train_patch2pix " + " ".join(p2p_argv))
    t = time.time()
    if train_patch2pix.main(p2p_argv) != 0:
        raise UsageError("the Patch2Pix stage failed (see its log above)")
    times["train_patch2pix"] = time.time() - t
    from utils.eval.model_helper import load_model

    exp = next((out / "patch2pix").rglob("last_ckpt.pth")).parent
    for ep in range(p["p2p_epochs"]):
        t = time.time()
        net = load_model(exp / f"ckpt_ep{ep + 1}.pth", device=device, lprint=lambda *_a: None)
        record(f"patch2pix_ep{ep + 1}", evaluate(net, paths, p["eval_imsize"]))
        times[f"eval_patch2pix_ep{ep + 1}"] = time.time() - t

    for run_dir, name in (((src or out) / "ncnet", "ncnet_run.png"), (exp, "patch2pix_run.png")):
        fig = plot_runs(find_runs([run_dir]), dpi=80)
        write_atomic(out / name, lambda f, fig=fig: fig.savefig(f, format="png"))
    t = time.time()
    run_diagnosis(out, p, device, args.seed, log, src)
    times["diagnosis"] = time.time() - t
    times["total"] = time.time() - t_start
    record_final = {"config": config, "times": times, "stages": dict(stages)}
    write_text_atomic(results_path, json.dumps(record_final, indent=1) + "\n")
    log(f"done in {times['total'] / 60:.1f} min: {results_path}\n" + table(stages))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.learning_run``."""
    return run_command(MODULE, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
