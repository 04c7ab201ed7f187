"""Helpers for the data-parallel training tests: start W ranks of a function as forked processes with
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), one intra-op thread each,
and the tiny real MDEQ with the implicit backward whose forward pass treats every sample independently
(BatchNorm kept in evaluation mode, no dropout, a fixed a-priori iteration count), so that a W-process
run and a single-process run with the same global batch compute the same function."""
import multiprocessing
import os
import socket
import time

import torch

# --set keys of the command line (solve_mode: the flat spelling lmdeq.app.flat_solves turns into solver objects)
TINY_MDEQ = dict(channels=[8, 8], head_channels=[4, 8], final_channels=32, num_groups=4, dropout=0.0,
                 solve_mode="apriori", num_classes=4)


def tiny_config(**overrides) -> dict:
    """mdeq()'s keyword arguments of TINY_MDEQ (and ``overrides``), as ``lmdeq train --set`` builds them."""
    from lmdeq.app.flat_solves import model_arguments

    return model_arguments("cifar10-small", True, {**TINY_MDEQ, **overrides})


def frozen_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every BatchNorm layer kept in evaluation mode (running statistics, which stay at
    their initial values), whatever ``model.train()`` is called with."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.train = lambda mode=True, m=m: m
    return model


def tiny_mdeq(_cfg=None, **overrides):
    from lmdeq.models import mdeq

    return frozen_batchnorm(mdeq("cifar10-small", **tiny_config(**overrides)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_like_env(rank: int, world: int, port: int, fault: str | None = None) -> dict:
    env = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if fault is not None:
        env["LMDEQ_FAULT_AT"] = fault
    return env


def run_ranks(fn, world: int, *args, fault: str | None = None, timeout: float = 120) -> list[int]:
    """Run ``fn(rank, *args)`` in ``world`` forked processes that form one torchrun-like job; returns their
    exit codes in rank order (-9: killed at the fault point). When one rank fails, the others are stopped
    after a short grace period, as torchrun does."""
    port = free_port()

    def child(rank):
        os.environ.pop("LMDEQ_FAULT_AT", None)
        os.environ.update(torchrun_like_env(rank, world, port, fault))
        torch.set_num_threads(1)
        fn(rank, *args)

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=child, args=(r,)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    failed_at = None
    while any(p.is_alive() for p in procs):
        if time.monotonic() > deadline:
            break
        if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() > failed_at + 5:
            break
        time.sleep(0.05)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    if time.monotonic() > deadline:
        raise TimeoutError(f"{fn.__name__} did not finish within {timeout}s")
    return [p.exitcode for p in procs]
