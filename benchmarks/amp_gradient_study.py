"""Study: where the direction error of the bf16 regressor gradients comes from (issue 8).

    python -m benchmarks.amp_gradient_study            # CPU, 2 threads, ~5 minutes

The batch is the recorded ``train_step`` batch of tests/test_amp.py (testvectors.md: the
rule weights, the regressor config of ``model_eval`` with panc 8, ptmax 0, one pair). The
backbone and the coarse stage run once in float32 (they run in float32 under ``--amp`` too);
every variant then runs both regressor levels, the loss (float32) and the backward, and its
regressor gradients are compared with the float32 ones: cosine per tensor, for every *live*
tensor (float32 gradient norm > 1e-2, as the test defines it).

Variants of the regressor's arithmetic (the output layer is float32 in every variant):

- ``bf16``: ``torch.autocast`` over the regressors with the layout of networks/regressor.py
  at the time of the run (whatever that file does);
- ``bf16-old``: the layout of the code when the study was written, spelt out layer by
  layer: conv/linear under autocast and their bf16 outputs going through BatchNorm / ReLU /
  max-pool in bf16 (so the backward of the BatchNorm, whose gradient is a difference of
  nearly cancelling terms, runs in bf16 too); equal to ``bf16`` while the code is unchanged;
- ``bf16-bnf32``: conv/linear under autocast, their outputs cast to float32 at once:
  BatchNorm, ReLU and max-pool run in float32 (hypothesis 1);
- ``emul-ops``: every conv/linear input and weight rounded to bf16 (the operands autocast
  gives the kernel), arithmetic and every gradient in float32 (hypothesis 2: if this is much
  better than ``bf16-bnf32``, the bf16 gradients between layers matter);
- ``emul-acts``: only the conv/linear inputs rounded, weights exact, float32 otherwise;
- ``emul-weights``: only the conv/linear weights rounded to bf16, float32 compute (the
  "noise floor" claimed in an earlier session);
- ``emul-split3``: bf16x3, three bf16 products per conv/linear (≈ 16 mantissa bits):
  what near-float32 accuracy from bf16 pieces gives;
- ``perturb-1e-6`` / ``-1e-4`` / ``-1e-3``: float32, conv/linear weights times
  (1 + s·N(0, 1)) (is the gradient chaotic, and at which scale do decisions flip?);
- ``…+pin`` (end to end): the fine patch positions and fine Sampson memberships of the
  float32 run forced; ``…+poolpin`` (isolated): the max-pool takes the float32 run's
  positions.

(The bf16x3 numbers recorded in RESULTS.md were taken with the linear bias added twice in
the split; every such layer feeds a BatchNorm, which removes a constant per channel, so
they stand.)

Roundings use a straight-through function (identity backward), so that a rounded weight's
gradient is the gradient at the rounded point and every gradient stays float32.

Two measures per variant:

- *end to end*: the whole regressor + loss path; discrete decisions may flip between the
  variant's forward and the float32 one, which the script counts: fine-level patch
  positions (the integer part of a mid match, ``sample_patch_pairs``), max-pool
  argmaxes (row × channel, both levels) and the fine Sampson-threshold memberships
  (``mdist < cls_dthres[1]``, which is also the fine epipolar row set here);
- *isolated*: every regressor chunk replayed on the float32 run's inputs with the float32
  run's upstream gradient (dL/d output), so only the regressor's own arithmetic differs
  (max-pool argmax flips remain, patch positions and thresholds cannot flip).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

import networks.patch2pix as p2p
from networks.patch2pix import Patch2Pix
from networks.regressor import FeatRegressNet
from networks.utils import sample_patch_pairs, sampson_dist
from utils.train.losses import LossConfig, batch_loss

REPO = Path(__file__).resolve().parents[1]
TESTVECTORS = REPO.parent / "shared" / "testvectors" / "patch2pix_reference.pt"
LIVE_NORM = 1e-2


class RoundBF16(torch.autograd.Function):
    """Round to bf16 and back in the forward; identity in the backward (float32 gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ARG004
        return x.to(torch.bfloat16).to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # noqa: ARG004
        return g


def _rnd(x: Tensor) -> Tensor:
    return RoundBF16.apply(x)


def _lin(m: nn.Module, x: Tensor, w: Tensor, bias: bool = True) -> Tensor:
    """The conv / linear `m` with weight `w` (and its own bias unless `bias` is False) on
    `x`."""
    b = m.bias if bias else None
    if isinstance(m, nn.Conv2d):
        return nnf.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
    return nnf.linear(x, w, b)


def _perturbed(w: Tensor, scale: float) -> Tensor:
    g = torch.Generator().manual_seed(int(w.numel()) * 7 + w.dim())
    return w * (1 + scale * torch.randn(w.shape, generator=g, dtype=w.dtype))


def _split3(m: nn.Module, x: Tensor) -> Tensor:
    """bf16x3: (x_hi + x_lo)·(w_hi + w_lo) without the lo·lo product, every piece a bf16
    number (three bf16 products with float32 accumulation give ~16 bits of mantissa)."""
    xh, wh = _rnd(x), _rnd(m.weight)
    xl, wl = _rnd(x - xh), _rnd(m.weight - wh)
    return _lin(m, xh, wh) + _lin(m, xl, wh, bias=False) + _lin(m, xh, wl, bias=False)


# variant -> (amp on, function applied to each conv/linear: (module, input) -> output)
LinFn = Callable[[nn.Module, Tensor], Tensor]
VARIANTS: dict[str, tuple[bool, LinFn | None]] = {
    "fp32": (False, lambda m, x: m(x)),
    "bf16": (True, None),  # FeatRegressNet.forward as it is in networks/regressor.py
    "bf16-old": (True, lambda m, x: m(x)),
    "bf16-bnf32": (True, lambda m, x: m(x).float()),
    "emul-ops": (False, lambda m, x: _lin(m, _rnd(x), _rnd(m.weight))),
    "emul-acts": (False, lambda m, x: _lin(m, _rnd(x), m.weight)),
    "emul-weights": (False, lambda m, x: _lin(m, x, _rnd(m.weight))),
    "emul-split3": (False, _split3),
    "perturb-1e-6": (False, lambda m, x: _lin(m, x, _perturbed(m.weight, 1e-6))),
    "perturb-1e-4": (False, lambda m, x: _lin(m, x, _perturbed(m.weight, 1e-4))),
    "perturb-1e-3": (False, lambda m, x: _lin(m, x, _perturbed(m.weight, 1e-3))),
}
# variants run end to end with the fine patch positions and the fine Sampson memberships of
# the float32 run ("pinned"): what is left is the regressors' own error and max-pool flips
PINNED = ("bf16", "emul-weights")
# variants replayed in isolation with the max-pool positions of the float32 run
POOL_PINNED = ("bf16-old", "emul-ops", "emul-weights")


def layered_forward(
    self: FeatRegressNet, x: Tensor, lin: LinFn, pool_idx: Tensor | None = None
) -> Tensor:
    """FeatRegressNet.forward ('pre' layout) with `lin` for every conv/linear but the last;
    `pool_idx` (N, C): the max-pool takes these spatial positions instead of its argmax."""
    assert self.feat_comb == "pre"
    h = x
    for m in self.conv:
        h = lin(m, h) if isinstance(m, nn.Conv2d) else m(h)
    if pool_idx is None:
        h = self.pool(h).flatten(1)
    else:
        h = h.flatten(2).gather(2, pool_idx.unsqueeze(-1)).squeeze(-1)
    for m in self.fc[:-1]:
        h = lin(m, h) if isinstance(m, nn.Linear) else m(h)
    with torch.autocast(h.device.type, enabled=False):
        return self.fc[-1](h.float())


class Recorder:
    """Forward hooks on both regressors: chunk inputs, outputs (for their gradients) and
    the max-pool argmaxes."""

    def __init__(self, net: Patch2Pix, keep_grads: bool) -> None:
        self.chunks: dict[str, list[tuple[Tensor, Tensor]]] = {"mid": [], "fine": []}
        self.argmax: dict[str, list[Tensor]] = {"mid": [], "fine": []}
        self.handles = []
        for lvl, reg in (("mid", net.regress_mid), ("fine", net.regress_fine)):
            self.handles.append(reg.register_forward_hook(self._reg_hook(lvl, keep_grads)))
            self.handles.append(reg.pool.register_forward_hook(self._pool_hook(lvl)))

    def _reg_hook(self, lvl: str, keep_grads: bool):
        def hook(_m, inputs, out):
            if keep_grads:
                out.retain_grad()
            self.chunks[lvl].append((inputs[0].detach(), out))

        return hook

    def _pool_hook(self, lvl: str):
        def hook(_m, inputs, _out):
            self.argmax[lvl].append(inputs[0].detach().flatten(2).argmax(-1))

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def build(refvec: dict) -> tuple[Patch2Pix, dict, LossConfig]:
    """The training model with the rule weights and the one-pair recorded batch."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import rule_state_dict  # the weight rule of testvectors.md

    ts = refvec["train_step"]
    a = ts["args"]
    rc = dict(refvec["model_eval"]["regressor_config"], panc=a["panc"])
    optim = Namespace(
        opt="adam",
        lr_init=5e-4,
        weight_decay=0,
        lr_decay=None,
        optimizer_dict=None,
        lr_scheduler_dict=None,
    )
    cfg = Namespace(
        device="cpu",
        training=False,
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=Namespace(**rc),
        regr_batch=1200,
        weights_dict=None,
        imagenet_init=False,
        freeze_feat=87,
        start_epoch=0,
        optim_config=optim,
    )
    net = Patch2Pix(cfg)
    net.load_state_dict(rule_state_dict(net))
    net.train()
    loss_cfg = LossConfig(
        cls_dthres=tuple(a["cls_dthres"]),
        epi_dthres=tuple(a["epi_dthres"]),
        weight_cls=a["weight_cls"],
        weight_epi=tuple(a["weight_epi"]),
    )
    batch = {
        "src_im": ts["src_im"][:1],
        "pos_im": ts["pos_im"][:1],
        "F": ts["F"][:1],
        "ksize": a["ksize"],
        "ptmax": a["ptmax"],
        "loss_pair": ts["loss_pair"],
    }
    return net, batch, loss_cfg


def coarse_stage(net: Patch2Pix, batch: dict) -> tuple:
    """Backbone + coarse matches in float32, once (forward_train's steps before regression)."""
    from networks.utils import filter_coarse

    with torch.no_grad():
        corr4d, delta4d, f1, f2 = net.forward(
            batch["src_im"], batch["pos_im"], batch["ksize"], return_feats=True
        )
        coarse, scores = net.cal_coarse_matches(corr4d, delta4d, batch["ksize"], net.upsample, True)
        if net.panc > 1 and batch["ptmax"] > 0:
            coarse, _ = filter_coarse(coarse, scores, 0.0, mutual=True, ptmax=batch["ptmax"])
        coarse = net.shift_to_anchors(coarse)
    return [f.detach() for f in f1], [f.detach() for f in f2], coarse


def regressor_params(net: Patch2Pix) -> dict[str, nn.Parameter]:
    return {
        k: p for k, p in net.named_parameters() if k.startswith(("regress_mid.", "regress_fine."))
    }


def run_variant(
    net: Patch2Pix,
    name: str,
    feats,
    batch: dict,
    loss_cfg: LossConfig,
    keep_grads: bool = False,
    pin: dict | None = None,
) -> dict:
    """Regressors + loss + backward with variant `name`; gradients, terms and decisions.

    `pin`: the ``calls`` of the float32 run; the fine patch positions (the matches given to
    ``sample_patch_pairs``) and the mid Sampson distances' values (their gradients
    stay the variant's) are replaced by the float32 run's.
    """
    amp_on, lin = VARIANTS[name]
    f1, f2, coarse = feats
    params = regressor_params(net)
    for p in net.parameters():
        p.grad = None
    calls: dict[str, list[Tensor]] = {"sel": [], "dist": []}

    def select(fa, fb, ib, imatches, *a, **kw):
        calls["sel"].append(imatches.detach().clone())
        if pin is not None:
            imatches = pin["sel"][len(calls["sel"]) - 1]
        return sample_patch_pairs(fa, fb, ib, imatches, *a, **kw)

    def dist_fn(x1: Tensor, x2: Tensor, F: Tensor) -> Tensor:
        d = sampson_dist(x1, x2, F)
        calls["dist"].append(d.detach().clone())
        i = len(calls["dist"]) - 1
        if pin is not None and i % 3 == 1:  # cdist, mdist, fdist per pair
            d = d - d.detach() + pin["dist"][i]
        return d

    orig = FeatRegressNet.forward
    if lin is not None:
        FeatRegressNet.forward = lambda self, x: layered_forward(self, x, lin)
    p2p.sample_patch_pairs = select
    rec = Recorder(net, keep_grads)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp_on):
            mid, mid_p, fine, fine_p = net.regress_levels(f1, f2, coarse)
        out = batch_loss(coarse, mid, mid_p, fine, fine_p, batch["F"], loss_cfg, dist_fn)
        out.loss.backward()
    finally:
        FeatRegressNet.forward = orig
        p2p.sample_patch_pairs = sample_patch_pairs
        rec.remove()
    return {
        "grads": {k: p.grad.detach().clone() for k, p in params.items()},
        "terms": {k: float(v.sum()) for k, v in out.terms().items()},
        "mid_int": torch.cat([m.detach() for m in mid]).long(),
        "fine_gt": torch.cat(out.fine_gt),
        "argmax": {lvl: torch.cat(v) for lvl, v in rec.argmax.items()},
        "chunks": rec.chunks,
        "calls": calls,
    }


def isolated_grads(
    net: Patch2Pix, name: str, ref: dict, pin_pool: bool = False
) -> tuple[dict[str, Tensor], int]:
    """Replay every chunk of the float32 run through variant `name` with the float32 run's
    upstream gradients: the regressor gradients summed over the chunks, and the number of
    max-pool argmaxes that differ from the float32 run's (`pin_pool`: the max-pool takes
    the float32 run's positions)."""
    amp_on, lin = VARIANTS[name]
    params = regressor_params(net)
    for p in params.values():
        p.grad = None
    flips = 0
    for lvl, reg in (("mid", net.regress_mid), ("fine", net.regress_fine)):
        argmax: list[Tensor] = []
        hook = reg.pool.register_forward_hook(
            lambda _m, i, _o, acc=argmax: acc.append(i[0].detach().flatten(2).argmax(-1))
        )
        try:
            sizes = [len(x) for x, _ in ref["chunks"][lvl]]
            for (x, out), idx in zip(
                ref["chunks"][lvl], ref["argmax"][lvl].split(sizes), strict=True
            ):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp_on):
                    if pin_pool:
                        assert lin is not None
                        y = layered_forward(reg, x, lin, idx)
                    else:
                        y = reg(x) if lin is None else layered_forward(reg, x, lin)
                y.float().backward(out.grad)
        finally:
            hook.remove()
        if argmax:  # (the pinned max-pool records nothing)
            flips += int((torch.cat(argmax) != ref["argmax"][lvl]).sum())
    return {k: p.grad.detach().clone() for k, p in params.items()}, flips


def cosines(g: dict[str, Tensor], g32: dict[str, Tensor], live: list[str]) -> dict[str, float]:
    return {
        k: float(nnf.cosine_similarity(g[k].flatten().double(), g32[k].flatten().double(), dim=0))
        for k in live
    }


def short(k: str) -> str:
    return k.replace("regress_", "").replace(".weight", ".w").replace(".bias", ".b")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        default=[v for v in VARIANTS if v != "fp32"],
        choices=[v for v in VARIANTS if v != "fp32"],
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    refvec = torch.load(TESTVECTORS, weights_only=True)
    net, batch, loss_cfg = build(refvec)
    base = copy.deepcopy(net.state_dict())
    feats = coarse_stage(net, batch)
    net.load_state_dict(base)  # the coarse stage's BatchNorm running stats moved
    ref = run_variant(net, "fp32", feats, batch, loss_cfg, keep_grads=True)
    rel = abs(ref["terms"]["loss"] - float(batch["loss_pair"])) / float(batch["loss_pair"])
    print(
        f"fp32 loss {ref['terms']['loss']:.6g} (recorded {float(batch['loss_pair']):.6g}, "
        f"rel {rel:.1e}); rows mid {len(ref['mid_int'])}, "
        f"chunks {len(ref['chunks']['mid'])}+{len(ref['chunks']['fine'])}"
    )
    g32 = ref["grads"]
    live = [k for k, g in g32.items() if float(g.norm()) > LIVE_NORM]
    dead = [k for k in g32 if k not in live]
    print(
        f"live tensors: {len(live)} of {len(g32)}; dead (norm <= {LIVE_NORM}): "
        + ", ".join(f"{short(k)} {float(g32[k].norm()):.1e}" for k in dead)
    )
    # replaying the float32 chunks in float32 must give the float32 gradients
    err = 0.0
    for pin_pool in (False, True):
        g_iso32, _ = isolated_grads(net, "fp32", ref, pin_pool)
        err = max(err, *(float((g_iso32[k] - g32[k]).norm() / g32[k].norm()) for k in live))
    print(f"isolated replay check (fp32 vs fp32 run): max rel diff {err:.1e}")

    e2e: dict[str, dict[str, float]] = {}
    iso: dict[str, dict[str, float]] = {}
    rows = []
    runs = [(v, False) for v in args.variants] + [(v, True) for v in PINNED if v in args.variants]
    n_pool = {lvl: ref["argmax"][lvl].numel() for lvl in ("mid", "fine")}
    for name, pinned in runs:
        col = name + ("+pin" if pinned else "")
        net.load_state_dict(base)
        r = run_variant(net, name, feats, batch, loss_cfg, pin=ref["calls"] if pinned else None)
        e2e[col] = cosines(r["grads"], g32, live)
        iso_flips = None
        if not pinned:
            g_iso, iso_flips = isolated_grads(net, name, ref)
            iso[col] = cosines(g_iso, g32, live)
        terms = max(
            abs(r["terms"][k] - ref["terms"][k]) / abs(ref["terms"][k])
            for k in ("cls_mid", "cls_fine", "epi_mid", "epi_fine", "loss")
        )
        n = len(ref["mid_int"])
        pos = "pinned" if pinned else f"{int((r['mid_int'] != ref['mid_int']).any(1).sum())} / {n}"
        thr = "pinned" if pinned else str(int((r["fine_gt"] != ref["fine_gt"]).sum()))
        am = {lvl: int((r["argmax"][lvl] != ref["argmax"][lvl]).sum()) for lvl in ("mid", "fine")}
        rows.append((col, terms, pos, thr, am, iso_flips))
        if name in POOL_PINNED and not pinned:
            iso[name + "+poolpin"] = cosines(isolated_grads(net, name, ref, True)[0], g32, live)

    print(
        f"\nflips against fp32 ({time.time() - t0:.0f} s so far; {int(ref['fine_gt'].sum())} "
        f"fine positives of {len(ref['fine_gt'])} rows, {n_pool['mid']} max-pool outputs "
        "per level)"
    )
    print(
        "| variant | max rel. loss-term diff | fine patch positions moved | fine Sampson "
        "memberships flipped | max-pool argmax flips mid / fine | isolated |"
    )
    print("|---|---|---|---|---|---|")
    for col, terms, pos, thr, am, iso_flips in rows:
        print(
            f"| {col} | {terms:.2%} | {pos} | {thr} | {am['mid']} / {am['fine']} | "
            f"{'—' if iso_flips is None else iso_flips} |"
        )
    for title, table in (
        ("end to end", e2e),
        ("isolated (fp32 inputs and upstream gradients, chunk by chunk)", iso),
    ):
        cols = list(table)
        print(f"\ncosine with the fp32 gradient, {title}")
        print("| tensor | norm fp32 | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for k in live:
            print(
                f"| {short(k)} | {float(g32[k].norm()):.2g} | "
                + " | ".join(f"{table[v][k]:.4f}" for v in cols)
                + " |"
            )
        print(
            "| **min** | | " + " | ".join(f"**{min(table[v].values()):.4f}**" for v in cols) + " |"
        )
    print(f"\n({time.time() - t0:.0f} s, torch {torch.__version__}, {args.threads} threads)")
    assert math.isfinite(rel)


if __name__ == "__main__":
    main()
