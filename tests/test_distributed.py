"""Data-parallel training on CPU with gloo and 2 processes (utils/train/distributed.py).

- two DDP steps (with --grad_ckpt's checkpointed chunks) give the parameters of one process
  that averages the two processes' gradients (without checkpointing);
- under torchrun only rank 0 writes files (one log, one checkpoint in the single-model
  format), and --resume works;
- a process that crashes makes the other stop with one line within the timeout instead of
  hanging;
- --batch must divide over the processes.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
import traceback
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from utils.train.distributed import DistInfo, dist_env, local_batch

REPO = Path(__file__).resolve().parents[1]
RC = dict(
    conv_dims=[8, 8],
    conv_kers=[3, 3],
    conv_strs=[2, 1],
    fc_dims=[8, 8],
    feat_comb="pre",
    psize=[16, 16],
    pshift=8,
    panc=8,
    shared=False,
)
# SGD (momentum 0.9): the weights are linear in the gradients, so a tight tolerance means
# something. (Adam's first steps are ~lr·sign(grad): on the biases before a BatchNorm, whose
# true gradient is 0, float rounding noise alone decides the sign.)
OPTIM = Namespace(
    opt="sgd",
    lr_init=1e-2,
    weight_decay=0,
    lr_decay=None,
    optimizer_dict=None,
    lr_scheduler_dict=None,
)
F_RECT = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def make_net():
    from networks.patch2pix import Patch2Pix

    torch.manual_seed(0)
    cfg = Namespace(
        device="cpu",
        training=True,
        backbone="ResNet34",
        change_stride=True,
        feat_idx=[0, 1, 2, 3],
        regressor_config=Namespace(**RC),
        regr_batch=100,
        weights_dict=None,
        imagenet_init=False,
        freeze_feat=87,
        start_epoch=0,
        optim_config=OPTIM,
    )
    return Patch2Pix(cfg).train()


def batches(rank: int, step: int) -> dict:
    """Pair `rank` of step `step`: a random image and itself shifted 16 px (F_RECT holds)."""
    g = torch.Generator().manual_seed(100 * step + rank)
    im = torch.randn(1, 3, 64, 96, generator=g)
    return {"src_im": im, "pos_im": torch.roll(im, 16, dims=3), "F": F_RECT[None]}


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    from utils.train.distributed import init_process_group, wrap_model
    from utils.train.losses import LossConfig
    from utils.train.trainer import train_step

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = DistInfo(rank, world, rank)
    init_process_group(info, torch.device("cpu"), 60)
    net = make_net()
    net.grad_ckpt = True  # checkpointed chunks under DDP: same step as the reference without
    fwd = wrap_model(net, info, torch.device("cpu"))
    for step in range(2):
        train_step(net, batches(rank, step), LossConfig(), 2, 0, forward=fwd)
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, out)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process_averaging_their_gradients(tmp_path, free_port):
    out = tmp_path / "rank0.pt"
    mp.start_processes(
        _ddp_worker, args=(2, free_port, str(out)), nprocs=2, join=True, start_method="spawn"
    )
    ddp = torch.load(out, weights_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same summation order in every kernel
    try:
        net, start, trained = reference_steps()
    finally:
        torch.set_num_threads(threads)
    sd = net.state_dict()
    moved = [n for n in trained if n.startswith("regress") and not torch.equal(sd[n], start[n])]
    assert len(moved) > 10  # the regressors did train
    for n in trained:
        torch.testing.assert_close(
            ddp[n], sd[n], rtol=1e-6, atol=1e-9, msg=lambda m, n=n: f"{n}: {m}"
        )
    # and not like either process alone: the two ranks' batches differ
    diff = (ddp["regress_fine.fc.6.weight"] - start["regress_fine.fc.6.weight"]).abs().max()
    assert diff > 1e-4


def reference_steps():
    """One process, two steps, each with the mean of the two ranks' gradients."""
    from utils.train.losses import LossConfig, batch_loss

    net = make_net()
    start = copy.deepcopy(net.state_dict())
    trained = [n for n, p in net.named_parameters() if p.requires_grad]
    for step in range(2):
        grads = []
        for rank in range(2):
            b = batches(rank, step)
            net.optimizer.zero_grad(set_to_none=True)
            res = batch_loss(
                *net.forward_train(b["src_im"], b["pos_im"], ksize=2, ptmax=0), b["F"], LossConfig()
            )
            res.loss.backward()
            grads.append(
                {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
            )
        for n, p in net.named_parameters():
            if n in grads[0]:
                p.grad = (grads[0][n] + grads[1][n]) / 2
        net.optimizer.step()
    return net, start, trained


def _crash_worker(rank: int, world: int, port: int, out: str) -> None:
    from utils.train.distributed import (
        collective_error,
        init_process_group,
        is_collective_failure,
        wrap_model,
    )
    from utils.train.losses import LossConfig
    from utils.train.trainer import train_step

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = DistInfo(rank, world, rank)
    init_process_group(info, torch.device("cpu"), 10)
    net = make_net()
    fwd = wrap_model(net, info, torch.device("cpu"))
    if rank == 1:
        os._exit(3)  # a crash: no clean-up, no message to the others
    t0 = time.time()
    try:
        for step in range(3):
            train_step(net, batches(rank, step), LossConfig(), 2, 0, forward=fwd)
        msg = "no error"
    except Exception as e:  # noqa: BLE001 - the test records what rank 0 saw
        msg = (
            str(collective_error(e, info, 10))
            if is_collective_failure(e)
            else "unexpected: " + traceback.format_exc()
        )
    Path(out).write_text(f"{time.time() - t0:.1f}\n{msg}")
    os._exit(1)


@pytest.mark.slow
def test_a_crashed_rank_stops_the_other_within_the_timeout(tmp_path, free_port):
    out = tmp_path / "rank0.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_crash_worker, args=(r, 2, free_port, str(out))) for r in range(2)]
    t0 = time.time()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not alive, "a process hung"
    assert [p.exitcode for p in procs] == [1, 3]
    waited, msg = out.read_text().split("\n", 1)
    assert msg.startswith(
        "rank 0/2: another process crashed, left or did not answer within --dist_timeout 10 s"
    ), msg
    assert "\n" not in msg.strip()
    assert float(waited) < 30 and time.time() - t0 < 120


def test_batch_must_divide_over_the_processes():
    assert local_batch(4, DistInfo(0, 2, 0)) == 2 and local_batch(3, DistInfo(0, 1, 0)) == 3
    from utils.common.cli import UsageError

    with pytest.raises(
        UsageError,
        match=r"^--batch 3 is the global batch and must divide evenly "
        r"over the 2 processes of torchrun",
    ):
        local_batch(3, DistInfo(1, 2, 1))
    assert dist_env({}) == DistInfo(0, 1, 0)
    assert dist_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistInfo(1, 4, 1)
    with pytest.raises(UsageError, match="bad torchrun environment"):
        dist_env({"RANK": "2", "WORLD_SIZE": "2"})


# ----------------------------------------------------------------------------- torchrun CLI
TINY = (
    "--change_stride --conv_dims 8 8 --fc_dims 8 8 --ptmax 20 --batch 2 --train_size 160 96 "
    "--max_iters_per_epoch 2 --plot_counts 1 --val_imsize 160 --val_sample_max 2 "
    "--workers 0 --no_progress --device cpu --random_backbone --dist_timeout 120"
).split()


def torchrun(args: list[str], port: int) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        "train_patch2pix",
        *args,
    ]
    return subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_torchrun_rank0_writes_and_resume_works(train_data, tmp_path, free_port):
    from utils.common.setup_helper import load_checkpoint_safe
    from utils.train.cli import parse_args
    from utils.train.experiment import make_tags

    args = [
        "--data_root",
        str(train_data / "data"),
        "--pair_root",
        str(train_data / "pairs"),
        "-o",
        str(tmp_path / "out"),
        *TINY,
        "--epochs",
        "1",
    ]
    proc = torchrun(args, free_port)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = parse_args(args)
    exp = make_tags(a).exp_dir(a.out_dir)
    log = (exp / "log.txt").read_text()
    assert log.count("Trainable parameters") == 1  # one writer
    assert "torchrun: 2 processes, 1 pairs each per step (--batch 2 global)" in log
    assert log.count(">>Val immatch") == 1  # rank 0 validated, once
    ckpt = load_checkpoint_safe(exp / "last_ckpt.pth")
    assert ckpt["last_epoch"] == 0
    keys = list(ckpt["state_dict"])
    assert "regress_mid.conv.0.weight" in keys and not any(
        k.startswith(("module.", "net.")) for k in keys
    )  # the single-model format
    files = sorted(p.name for p in exp.iterdir())
    assert files.count("log.txt") == 1 and not any(".tmp" in f for f in files), files

    proc = torchrun([*args[:-2], "--epochs", "2", "--resume"], free_port)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (exp / "log.txt").read_text()
    assert log.count(">>>>>> Resuming at epoch 1") == 1
    ckpt2 = load_checkpoint_safe(exp / "last_ckpt.pth")
    assert ckpt2["last_epoch"] == 1
    assert not torch.equal(
        ckpt2["state_dict"]["regress_fine.fc.6.weight"],
        ckpt["state_dict"]["regress_fine.fc.6.weight"],
    )


@pytest.mark.slow
def test_torchrun_batch_that_does_not_divide_is_one_line(train_data, tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    args = [
        "--data_root",
        str(train_data / "data"),
        "--pair_root",
        str(train_data / "pairs"),
        "-o",
        str(tmp_path / "out"),
        *TINY,
        "--batch",
        "3",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "train_patch2pix", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "train_patch2pix: error: --batch 3 is the global batch and must divide evenly over the 2 "
        "processes of torchrun (e.g. --batch 2)"
    ]
    assert not (tmp_path / "out").exists()
