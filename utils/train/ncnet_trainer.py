"""The training run behind ``python -m train_ncnet`` (NCNet's weak supervision).

The model is Patch2Pix's coarse stage exactly as in ``networks/`` (a :class:`Patch2Pix`
without regressors: ResNet-34 ``extract`` + ``ncn``, relocalisation with ``--ksize``), trained
with :func:`utils.train.weak_loss.weak_loss`. The extractor stays frozen and in eval mode
(BatchNorm uses its running statistics); ``--fe_finetune_params N`` makes the parameters of
its last N residual blocks trainable (still in eval mode; ``--fe_bn_train`` puts those
blocks' BatchNorm in train mode, for a random start). The negatives reuse the positives'
features (the rolled source features): in eval mode an image's features do not depend on
the batch, and in train mode the negative batch holds the same images, hence the same
batch statistics, so this equals NCNet's second forward pass at half the cost.

Experiment folder ``<result_model_dir>/<result_model_fn>/``:
- ``ncn_last.pth``, ``ncn_best.pth``: bare state_dicts (``OrderedDict`` with exactly the
  ``extract.*`` and ``ncn.*`` keys of the released ``ncn_ivd_5ep.pth``), for
  ``train_patch2pix --pretrain`` and ``load_model(path, method='nc')``;
- ``last_ckpt.pth``: the training state for ``--resume`` (dict: ``last_epoch``,
  ``best_val``, ``best_rule``, ``state_dict``, ``optim``);
- ``log.txt``, ``metrics.jsonl`` (records with ``"stage": "ncnet"``, drawn by
  ``python -m utils.train.plot_run``), ``config.json``.
All files are written atomically. Best weights: the highest coarse epipolar precision on the
held-out pairs when they carry geometry (pair files), else the lowest held-out weak loss.
"""

from __future__ import annotations

import math
import time
from argparse import Namespace
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from networks.patch2pix import Patch2Pix
from networks.utils import filter_coarse, sampson_dist
from utils.common.cli import UsageError
from utils.common.setup_helper import (
    CheckpointError,
    clean_stale_temporaries,
    load_checkpoint_safe,
    save_checkpoint_atomic,
    seed_all,
)
from utils.eval.model_helper import state_dict_of
from utils.train.experiment import (
    METRICS_NAME,
    ExperimentLog,
    save_config,
    truncate_metrics,
)
from utils.train.trainer import (
    DataItemError,
    ItemErrors,
    data_item_message,
    echo_above_progress,
    select_device,
)
from utils.train.visdom_helper import VisdomPlotter
from utils.train.weak_loss import negative_order, weak_loss

__all__ = [
    "NcnetTrainer",
    "build_coarse_model",
    "finetune_blocks",
    "ncnet_state_dict",
    "ncnet_step",
    "coarse_precision",
]

LAST_CKPT = "last_ckpt.pth"
LAST_WEIGHTS = "ncn_last.pth"
BEST_WEIGHTS = "ncn_best.pth"
TRAIN_CSV = "train_pairs.csv"
VAL_CSV = "val_pairs.csv"


class NcnetPlotter(VisdomPlotter):
    """Visdom windows of the NCNet stage."""

    plots = {"loss": ("weak",), "weak_score": ("pos", "neg"), "mem": ("rss", "vms")}
    val_plots = {"val_loss": ("weak",), "val_score": ("pos", "neg"), "coarse_prec": ("prec",)}


# ----------------------------------------------------------------------------- model
def finetune_blocks(extract: nn.Module) -> list[nn.Module]:
    """The extractor's residual blocks, last first: layer3 (6), layer2 (4), layer1 (3)."""
    blocks: list[nn.Module] = []
    for layer in (extract.layer3, extract.layer2, extract.layer1):
        blocks.extend(reversed(list(layer.children())))
    return blocks


def build_coarse_model(
    weights: dict[str, Tensor] | None,
    change_stride: bool,
    fe_finetune: int,
    device: torch.device,
    imagenet: bool | str = "download",
    lprint: Callable[[str], Any] = print,
) -> Patch2Pix:
    """A coarse-only Patch2Pix (``extract`` + ``ncn``) with NCNet's trainable parameters.

    Every extractor parameter is frozen except those of the last `fe_finetune` residual
    blocks (:func:`finetune_blocks`); the NCN is trainable.
    """
    config = Namespace(
        backbone="ResNet34",
        change_stride=change_stride,
        feat_idx=[0, 1, 2, 3],
        regressor_config=None,
        weights_dict=weights,
        imagenet_init=imagenet,
        device=device,
        lprint=lprint,
    )
    net = Patch2Pix(config)
    for p in net.extract.parameters():
        p.requires_grad_(False)
    for block in finetune_blocks(net.extract)[:fe_finetune]:
        for p in block.parameters():
            p.requires_grad_(True)
    return net


def ncnet_state_dict(net: Patch2Pix) -> OrderedDict[str, Tensor]:
    """The ``ncn_ivd_5ep.pth`` form: an OrderedDict of the ``extract.*`` and ``ncn.*`` entries.

    An ``OrderedDict`` (what ``Module.state_dict()`` returns), not a plain dict: the
    original's ``load_model(path, method='nc')`` reads a plain dict as a wrapper with a
    ``'state_dict'`` entry.
    """
    sd = net.state_dict()
    return OrderedDict(
        (k, v.detach().cpu().clone()) for k, v in sd.items() if k.startswith(("extract.", "ncn."))
    )


def ncnet_step(
    net: Patch2Pix, src: Tensor, tgt: Tensor, ksize: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, ...] | None]:
    """Weak loss of one batch of positive pairs (negatives: sources rolled by one).

    Args:
        src, tgt: (B, 3, H, W) normalised images, B >= 2.
    Returns:
        (loss, score_pos, score_neg, corr_pos, delta_pos): scalars and the positives'
        correlation (B, 1, h1, w1, h2, w2) with its relocalisation offsets.
    """
    f_src, f_tgt = net.extract(src), net.extract(tgt)
    corr_pos, delta_pos = net.corr_from_feats(f_src, f_tgt, ksize)
    corr_neg, _ = net.corr_from_feats(f_src[negative_order(src.shape[0], src.device)], f_tgt, ksize)
    loss, s_pos, s_neg = weak_loss(corr_pos, corr_neg)
    return loss, s_pos, s_neg, corr_pos, delta_pos


def coarse_precision(
    net: Patch2Pix,
    corr: Tensor,
    delta: tuple[Tensor, ...] | None,
    ksize: int,
    F: Tensor,
    thres: float,
) -> tuple[list[float], list[int]]:
    """Share of each pair's mutual coarse matches with Sampson distance below `thres` (px²).

    Args:
        corr, delta: the positives' correlation and offsets (:func:`ncnet_step`).
        F: (B, 3, 3) fundamental matrices at the network input size.
    Returns:
        (precision per pair, number of matches per pair).
    """
    matches, scores = net.cal_coarse_matches(corr, delta, ksize, net.upsample, center=True)
    kept, _ = filter_coarse(matches, scores, 0.0, mutual=True)
    precs, counts = [], []
    for m, Fi in zip(kept, F):
        m = m.to(torch.float64)
        d = sampson_dist(m[:, :2], m[:, 2:], Fi.to(m))
        precs.append(float((d < thres).to(torch.float64).mean()) if len(d) else 0.0)
        counts.append(len(d))
    return precs, counts


# ----------------------------------------------------------------------------- data
def build_datasets(args: Namespace) -> tuple[Dataset, Dataset | None, str]:
    """Training / held-out datasets and a description (UsageError for missing inputs)."""
    from utils.datasets.dataset_ncnet import CsvPairDataset, pair_file_dataset

    w, h = args.image_size
    try:
        if args.pair_file:
            for flag, path in (
                ("--pair_file", args.pair_file),
                ("--val_pair_file", args.val_pair_file),
            ):
                if path and not Path(path).is_file():
                    raise UsageError(f"{flag} {path}: file not found")
            train = pair_file_dataset(args.data_root, args.pair_file, w, h)
            val = (
                pair_file_dataset(args.val_data_root or args.data_root, args.val_pair_file, w, h)
                if args.val_pair_file
                else None
            )
            desc = f"pair file {args.pair_file}" + (
                f", held out {args.val_pair_file}" if val is not None else ""
            )
        else:
            csv_dir = Path(args.dataset_csv_path)
            train_csv = csv_dir / TRAIN_CSV
            if not train_csv.is_file():
                raise UsageError(
                    f"--dataset_csv_path {csv_dir}: no {TRAIN_CSV} (NCNet's IVD pair lists; or "
                    "train on a Patch2Pix pair file with --pair_file)"
                )
            if not Path(args.dataset_image_path).is_dir():
                raise UsageError(
                    f"--dataset_image_path {args.dataset_image_path}: folder not found"
                )
            train = CsvPairDataset(train_csv, args.dataset_image_path, w, h)
            val_csv = csv_dir / VAL_CSV
            val = (
                CsvPairDataset(val_csv, args.dataset_image_path, w, h)
                if val_csv.is_file()
                else None
            )
            desc = f"CSV {train_csv}" + (f", held out {val_csv}" if val is not None else "")
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    if len(train) < 2:
        raise UsageError(f"{desc}: {len(train)} training pair(s); the weak loss needs at least 2")
    if args.val_max_pairs and val is not None and len(val) > args.val_max_pairs:
        # spread over the file (pair files list one scene after the other)
        step = len(val) / args.val_max_pairs
        val = torch.utils.data.Subset(val, [int(k * step) for k in range(args.val_max_pairs)])
    # a missing / unreadable image is a one-line error naming it (also from loader workers)
    return ItemErrors(train), (ItemErrors(val) if val is not None else None), desc


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in ("src_im", "pos_im")}
    if all("F" in it for it in items):
        out["F"] = torch.stack([torch.as_tensor(it["F"], dtype=torch.float64) for it in items])
    return out


# ----------------------------------------------------------------------------- the run
class NcnetTrainer:
    """Runs the epochs of one NCNet-stage experiment.

    Args:
        args: parsed and checked flags (:mod:`utils.train.ncnet_cli`).
        echo: where log lines are echoed besides log.txt (None: silent).
    """

    def __init__(self, args: Namespace, echo: Callable[[str], Any] | None = echo_above_progress):
        self.args = args
        self.device = select_device(args)
        self.exp_dir = Path(args.result_model_dir) / args.result_model_fn
        # user errors before anything is written
        self.train_ds, self.val_ds, data_desc = build_datasets(args)
        self.has_geometry = bool(args.pair_file)
        weights, self.state = self._start_state()
        if weights is None and not args.random_backbone:
            from networks.resnet import download_imagenet_weights, find_imagenet_weights

            if find_imagenet_weights() is None:
                (echo or print)("ImageNet ResNet-34 weights not in the torch cache: downloading")
                download_imagenet_weights()
        # a run killed while writing a checkpoint leaves write_atomic's temporary file; a
        # resumed run re-runs its start epoch: drop that epoch's (partial) records
        stale = clean_stale_temporaries(self.exp_dir)
        dropped = (
            truncate_metrics(self.exp_dir / METRICS_NAME, self.state["start_epoch"])
            if args.resume
            else 0
        )
        self.log = ExperimentLog(self.exp_dir, echo=echo)
        try:
            if args.resume:
                self.log(f"\n>>>>>> Resuming at epoch {self.state['start_epoch']}")
            if dropped or stale:
                self.log(
                    f"{METRICS_NAME}: dropped {dropped} record(s) of re-run epochs; removed "
                    f"{len(stale)} stale temporary file(s)"
                )
            self.log.log_config(args)
            save_config(args, self.exp_dir)
            seed_all(args.seed + self.state["start_epoch"])
            self.net = build_coarse_model(
                weights,
                not args.no_change_stride,
                args.fe_finetune_params,
                self.device,
                imagenet=False if args.random_backbone else "download",
                lprint=self.log,
            )
            params = [p for p in self.net.parameters() if p.requires_grad]
            self.optimizer = torch.optim.Adam(params, lr=args.lr)
            if self.state.get("optim"):
                try:
                    self.optimizer.load_state_dict(self.state["optim"])
                except (ValueError, KeyError) as e:
                    raise UsageError(f"--resume: optimiser state does not fit: {e}") from None
            self.best_rule = "coarse_prec" if self.has_geometry else "val_loss"
            self.log(
                f"Experiment dir: {self.exp_dir}\nDevice: {self.device}; data: "
                f"{len(self.train_ds)} training pairs ({data_desc}), "
                f"{len(self.val_ds) if self.val_ds is not None else 0} held-out; size "
                f"{args.image_size[0]}x{args.image_size[1]}; start: {self.state['source']}\n"
                f"Trainable parameters: {sum(p.numel() for p in params)} "
                f"(ncn + last {args.fe_finetune_params} extractor blocks); best weights by "
                f"{self.best_rule}"
            )
            self.vis = NcnetPlotter(
                args.visdom_host, args.visdom_port, f"ncnet.{args.result_model_fn}", lprint=self.log
            )
        except BaseException:
            self.log.close()
            raise

    # -------------------------------------------------------------- set-up helpers
    def _start_state(self) -> tuple[dict[str, Tensor] | None, dict[str, Any]]:
        args = self.args
        state: dict[str, Any] = {"start_epoch": 0, "best_val": None, "source": "", "optim": None}
        if args.resume:
            path = self.exp_dir / LAST_CKPT
            if not path.is_file():
                raise UsageError(f"--resume: no {LAST_CKPT} in {self.exp_dir}")
            try:
                ckpt = load_checkpoint_safe(path)
            except CheckpointError as e:
                raise UsageError(f"--resume: {e}") from None
            if not isinstance(ckpt, dict) or not {"state_dict", "last_epoch"} <= set(ckpt):
                raise UsageError(f"--resume: {path} is not a train_ncnet checkpoint")
            state.update(
                start_epoch=int(ckpt["last_epoch"]) + 1,
                best_val=ckpt.get("best_val"),
                optim=ckpt.get("optim"),
                source=f"resume {path} (last epoch {ckpt['last_epoch']})",
            )
            return dict(ckpt["state_dict"]), state
        if args.checkpoint:
            try:
                weights = dict(
                    state_dict_of(load_checkpoint_safe(args.checkpoint), args.checkpoint)
                )
            except CheckpointError as e:
                raise UsageError(f"--checkpoint: {e}") from None
            weights = {k: v for k, v in weights.items() if k.startswith(("extract.", "ncn."))}
            if not weights:
                raise UsageError(f"--checkpoint {args.checkpoint}: no extract.* / ncn.* weights")
            state["source"] = f"checkpoint {args.checkpoint}"
            return weights, state
        state["source"] = (
            "random extractor (--random_backbone)" if args.random_backbone else "ImageNet ResNet-34"
        )
        return None, state

    def _loader(self, ds: Dataset, train: bool, epoch: int) -> DataLoader:
        gen = torch.Generator()
        gen.manual_seed(self.args.seed * 1000 + epoch)
        return DataLoader(
            ds,
            batch_size=self.args.batch_size,
            shuffle=True,  # held-out pairs: the same order every time (epoch 0's generator)
            drop_last=train,  # a training batch of one pair has no negative
            num_workers=self.args.workers,
            generator=gen,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )

    @torch.no_grad()
    def recalibrate_bn(self, epoch: int) -> None:
        """With ``--fe_bn_train``: recompute the fine-tuned blocks' BatchNorm running
        statistics as plain averages over ``--bn_recalib_batches`` training batches.

        Train-mode BatchNorm follows the weights as they change, its momentum-averaged
        running statistics lag behind; evaluation (here and in every later use of the
        weights) normalises with the running statistics, so they are made to fit the final
        weights ("precise BN") before each validation and save.
        """
        args = self.args
        if not args.fe_bn_train or not args.bn_recalib_batches:
            return
        bns = [
            m
            for block in finetune_blocks(self.net.extract)[: args.fe_finetune_params]
            for m in block.modules()
            if isinstance(m, nn.BatchNorm2d)
        ]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        self._train_mode()
        it = iter(self._loader(self.train_ds, True, 10_000 + epoch))
        for _ in range(min(args.bn_recalib_batches, len(self.train_ds) // args.batch_size)):
            try:
                batch = next(it)
            except DataItemError as e:
                raise UsageError(data_item_message(e)) from None
            self.net.extract(torch.cat([batch["src_im"], batch["pos_im"]]).to(self.device))
        for m, mom in zip(bns, saved):
            m.momentum = mom

    def _train_mode(self) -> None:
        self.net.train()
        self.net.extract.eval()  # NCNet: frozen statistics, also for fine-tuned blocks
        if self.args.fe_bn_train:
            for block in finetune_blocks(self.net.extract)[: self.args.fe_finetune_params]:
                block.train()

    # -------------------------------------------------------------- epochs
    def run(self) -> None:
        """Train from the start epoch to ``--num_epochs`` (exclusive)."""
        args = self.args
        try:
            start = self.state["start_epoch"]
            if start >= args.num_epochs:
                self.log(f"Nothing to do: epoch {start} >= --num_epochs {args.num_epochs}")
                return
            if start == 0 and self.val_ds is not None:
                self.recalibrate_bn(-1)
                self.validate(-1)  # the start, for the curves
            for epoch in range(start, args.num_epochs):
                self.train_epoch(epoch)
                self.recalibrate_bn(epoch)
                val = self.validate(epoch) if self.val_ds is not None else None
                self.save(epoch, val)
        finally:
            self.log.close()

    def train_epoch(self, epoch: int) -> None:
        """One pass over the training pairs (or ``--max_iters_per_epoch`` steps)."""
        from tqdm import tqdm

        args = self.args
        self._train_mode()
        loader = self._loader(self.train_ds, True, epoch)
        n_iters = len(loader)
        if args.max_iters_per_epoch:
            n_iters = min(n_iters, args.max_iters_per_epoch)
        interval = max(1, n_iters // args.plot_counts)
        acc: dict[str, float] = {"weak": 0.0, "pos": 0.0, "neg": 0.0}
        n_acc, t0 = 0, time.time()
        self.log(f"\n>>>>>> Epoch {epoch} ({n_iters} steps, lr {args.lr:g})")
        bar = tqdm(total=n_iters, desc=f"epoch {epoch}", disable=args.no_progress, leave=False)
        it = iter(loader)
        for i in range(n_iters):
            try:
                batch = next(it)
            except DataItemError as e:
                raise UsageError(data_item_message(e)) from None
            src = batch["src_im"].to(self.device, non_blocking=True)
            tgt = batch["pos_im"].to(self.device, non_blocking=True)
            loss, s_pos, s_neg, corr, delta = ncnet_step(self.net, src, tgt, args.ksize)
            if not torch.isfinite(loss):
                raise UsageError(
                    f"epoch {epoch} step {i}: the weak loss is {loss.item()} (lower --lr?)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            acc["weak"] += loss.item()
            acc["pos"] += s_pos.item()
            acc["neg"] += s_neg.item()
            if "F" in batch:  # the training batch's coarse precision (train-mode features)
                with torch.no_grad():
                    p, _ = coarse_precision(
                        self.net,
                        corr.detach(),
                        delta,
                        args.ksize,
                        batch["F"].to(self.device),
                        args.val_epi_thres,
                    )
                acc["prec"] = acc.get("prec", 0.0) + sum(p) / len(p)
            n_acc += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if (i + 1) % interval == 0 or i + 1 == n_iters:
                m = {k: v / n_acc for k, v in acc.items()}
                x = epoch + (i + 1) / n_iters
                prec = f", coarse precision {100 * m['prec']:.1f} %" if "prec" in m else ""
                self.log(
                    f"epoch {epoch} step {i + 1}/{n_iters}: weak loss {m['weak']:.4f} "
                    f"(pos {m['pos']:.4f}, neg {m['neg']:.4f}){prec}, "
                    f"{(time.time() - t0) / (i + 1):.2f} s/step"
                )
                rec = {
                    "kind": "train",
                    "stage": "ncnet",
                    "epoch": epoch,
                    "iter": i + 1,
                    "x": x,
                    "lr": args.lr,
                    "loss": {"weak": m["weak"]},
                    "score": {"pos": m["pos"], "neg": m["neg"]},
                }
                if "prec" in m:
                    rec["coarse_prec"] = m["prec"]
                self.log.metrics(rec)
                self.vis.plot(
                    "train",
                    x,
                    {"loss": {"weak": m["weak"]}, "weak_score": {"pos": m["pos"], "neg": m["neg"]}},
                )
                acc = {"weak": 0.0, "pos": 0.0, "neg": 0.0}
                n_acc = 0
        bar.close()
        self.log(f"epoch {epoch}: {time.time() - t0:.1f} s")

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, Any]:
        """Weak loss and scores on the held-out pairs; with geometry, coarse precision."""
        args = self.args
        self.net.eval()
        t0 = time.time()
        sums = {"weak": 0.0, "pos": 0.0, "neg": 0.0}
        n_batches, precs, counts = 0, [], []
        # a fixed shuffled order: pair files list a scene's pairs one after the other, so
        # in file order the rolled "negative" would mostly be another view of the same scene
        it = iter(self._loader(self.val_ds, False, 0))
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            except DataItemError as e:
                raise UsageError(f"held-out {data_item_message(e)}") from None
            src = batch["src_im"].to(self.device)
            tgt = batch["pos_im"].to(self.device)
            if src.shape[0] >= 2:
                loss, s_pos, s_neg, corr, delta = ncnet_step(self.net, src, tgt, args.ksize)
                sums["weak"] += float(loss)
                sums["pos"] += float(s_pos)
                sums["neg"] += float(s_neg)
                n_batches += 1
            else:
                corr, delta = self.net.forward(src, tgt, args.ksize)
            if "F" in batch:
                p, c = coarse_precision(
                    self.net,
                    corr,
                    delta,
                    args.ksize,
                    batch["F"].to(self.device),
                    args.val_epi_thres,
                )
                precs += p
                counts += c
        self._train_mode()
        res: dict[str, Any] = {"kind": "val", "stage": "ncnet", "epoch": epoch}
        if n_batches:
            res["loss"] = {"weak": sums["weak"] / n_batches}
            res["score"] = {"pos": sums["pos"] / n_batches, "neg": sums["neg"] / n_batches}
        if precs:
            res["coarse_prec"] = sum(precs) / len(precs)
            res["matches"] = sum(counts) / len(counts)
        res["num_pairs"] = len(self.val_ds)
        res["seconds"] = round(time.time() - t0, 2)
        line = f"held-out ({len(self.val_ds)} pairs) after epoch {epoch}:"
        if "loss" in res:
            line += (
                f" weak loss {res['loss']['weak']:.4f} (pos {res['score']['pos']:.4f}, "
                f"neg {res['score']['neg']:.4f})"
            )
        if "coarse_prec" in res:
            line += (
                f", coarse precision {100 * res['coarse_prec']:.1f} % (Sampson < "
                f"{args.val_epi_thres:g} px², {res['matches']:.0f} mutual matches per pair)"
            )
        self.log(line)
        self.log.metrics(res)
        self.vis.plot(
            "test",
            epoch + 1,
            {
                "val_loss": res.get("loss", {}),
                "val_score": res.get("score", {}),
                "coarse_prec": {"prec": 100 * res["coarse_prec"]} if "coarse_prec" in res else {},
            },
        )
        return res

    def _improved(self, val: dict[str, Any] | None) -> tuple[bool, float | None]:
        if val is None:
            return False, self.state.get("best_val")
        if self.best_rule == "coarse_prec":
            value = val.get("coarse_prec")
            better = lambda a, b: a > b  # noqa: E731
        else:
            value = (val.get("loss") or {}).get("weak")
            better = lambda a, b: a < b  # noqa: E731
        if value is None or not math.isfinite(value):
            return False, self.state.get("best_val")
        best = self.state.get("best_val")
        if best is None or better(value, best):
            return True, float(value)
        return False, best

    def save(self, epoch: int, val: dict[str, Any] | None) -> None:
        """Last weights and training state every epoch; best weights when improved."""
        improved, best = self._improved(val)
        weights = ncnet_state_dict(self.net)
        save_checkpoint_atomic(weights, self.exp_dir / LAST_WEIGHTS)
        if improved:
            save_checkpoint_atomic(weights, self.exp_dir / BEST_WEIGHTS)
            self.log(f"best {self.best_rule} so far ({best:.4f}): {BEST_WEIGHTS} updated")
        elif val is None:  # nothing held out: the best weights are the last ones
            save_checkpoint_atomic(weights, self.exp_dir / BEST_WEIGHTS)
        self.state["best_val"] = best
        save_checkpoint_atomic(
            {
                "last_epoch": int(epoch),
                "best_val": None if best is None else float(best),
                "best_rule": self.best_rule,
                "state_dict": weights,
                "optim": self.optimizer.state_dict(),
            },
            self.exp_dir / LAST_CKPT,
        )
        self.log.metrics(
            {"kind": "epoch", "stage": "ncnet", "epoch": epoch, "improved": bool(improved)}
        )
