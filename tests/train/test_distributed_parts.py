"""The parts of data-parallel training that need no process group: shard arithmetic, sharded batches,
torchrun's environment, the checks that name a bad setting, fault-point qualifiers."""
import signal

import pytest
import torch

from lmdeq.errors import ConfigError
from lmdeq.app.data.batches import check_shardable, train_batches
from lmdeq.app.data.batches import shard_bounds
from lmdeq.app.train.distributed import Dist, _backend, _rank_device, distributed, is_main_process, torchrun_env
from lmdeq.app.data.images import LabelledImages
from lmdeq.app.train.replicas import sync_batchnorm


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_partition_like_tensor_split(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    expected = [(int(c[0]), int(c[-1]) + 1) if c.numel() else None for c in torch.arange(n).tensor_split(world)]
    assert [b if b[1] > b[0] else None for b in bounds] == expected
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in rank order


def _images(n):
    g = torch.Generator().manual_seed(3)
    return LabelledImages(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                          torch.arange(n) % 3, ("a", "b", "c"))


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_of_each_batch_are_the_single_process_batch(world):
    data = _images(23)
    whole = list(train_batches(data, 7, seed=5, epoch=2, augment=True))
    shards = [list(train_batches(data, 7, seed=5, epoch=2, augment=True, shard=(r, world))) for r in range(world)]
    assert all(len(s) == len(whole) for s in shards)  # every rank takes part in every global step
    for k, (images, labels) in enumerate(whole):
        assert torch.equal(torch.cat([s[k][0] for s in shards]), images)  # augmentation included
        assert torch.equal(torch.cat([s[k][1] for s in shards]), labels)


def test_bad_shard_is_named():
    with pytest.raises(ValueError, match="shard must be"):
        train_batches(_images(4), 2, seed=0, epoch=1, shard=(2, 2))


def test_batches_too_small_for_the_processes_name_a_batch_size_that_works():
    check_shardable(18, 5, 2)  # batches 5, 5, 5, 3
    check_shardable(18, 5, 1)
    with pytest.raises(ConfigError, match=r"--batch-size 5 a batch of the epoch holds only 1 image.*--batch-size 4 or 6"):
        check_shardable(16, 5, 2)  # batches 5, 5, 5, 1
    with pytest.raises(ConfigError, match="holds only 3 image"):
        check_shardable(3, 8, 4)
    for b in (4, 6):
        check_shardable(16, b, 2)


def test_torchrun_environment():
    assert torchrun_env({}) is None
    assert torchrun_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (1, 4, 1)
    with pytest.raises(ConfigError, match=r"sets \['RANK'\] but not \['WORLD_SIZE', 'LOCAL_RANK'\]"):
        torchrun_env({"RANK": "0"})
    with pytest.raises(ConfigError, match="must be integers"):
        torchrun_env({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="0 <= RANK < WORLD_SIZE"):
        torchrun_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert is_main_process({}) and is_main_process({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert not is_main_process({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})


def test_one_process_needs_no_process_group():
    with distributed(torch.device("cpu"), environ={"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) as (d, dev):
        assert d == Dist() and not d.enabled and dev == torch.device("cpu")
        assert not torch.distributed.is_initialized()
        t = torch.ones(2)
        assert d.all_sum(t) is t and d.broadcast_object("x") == "x" and d.agree(lambda: 3) == 3
        assert d.from_main(lambda: 4) == 4 and d.staggered(lambda: 5) == 5
        with pytest.raises(KeyError):
            d.agree(lambda: {}["k"])


def test_settings_that_cannot_work_are_named():
    with pytest.raises(ConfigError, match="nccl needs CUDA devices"):
        _backend("nccl", torch.device("cpu"))
    with pytest.raises(ConfigError, match="dist_backend must be one of"):
        _backend("mpi2", torch.device("cpu"))
    assert _backend("auto", torch.device("cpu")) == "gloo" and _backend("auto", torch.device("cuda", 0)) == "nccl"
    with pytest.raises(ConfigError, match="cuda:1 names one GPU, but under torchrun every process"):
        _rank_device(torch.device("cuda", 1), 0)
    assert _rank_device(torch.device("cpu"), 3) == torch.device("cpu")
    with pytest.raises(ConfigError, match="--sync-bn: torch's SyncBatchNorm runs on CUDA devices only"):
        sync_batchnorm(torch.nn.BatchNorm2d(3), Dist(rank=0, world=2), torch.device("cpu"))
    bn = torch.nn.BatchNorm2d(3)
    assert sync_batchnorm(bn, Dist(), torch.device("cpu")) is bn  # one process: nothing to synchronise


def _kills(monkeypatch, spec, env, times=3):
    """How many times the process would have been SIGKILLed reaching the point 'step' ``times`` times."""
    from lmdeq.app import faults

    kills = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: kills.append(sig))
    monkeypatch.setattr(faults, "_seen", {})
    monkeypatch.setenv("LMDEQ_FAULT_AT", spec)
    for k in ("RANK", "TORCHELASTIC_RESTART_COUNT"):
        if k in env:
            monkeypatch.setenv(k, env[k])
        else:
            monkeypatch.delenv(k, raising=False)
    for _ in range(times):
        faults.fault_point("step")
    assert all(sig == signal.SIGKILL for sig in kills)
    return len(kills)


def test_fault_qualifiers_pick_the_rank_and_the_attempt(monkeypatch):
    assert _kills(monkeypatch, "step@2;rank=1", {"RANK": "1"}) == 1
    assert _kills(monkeypatch, "step@2;rank=1", {"RANK": "0"}) == 0
    assert _kills(monkeypatch, "step@2;rank=0", {}) == 1  # no RANK: a single process is rank 0
    assert _kills(monkeypatch, "step;attempt=0", {"TORCHELASTIC_RESTART_COUNT": "1"}) == 0
    assert _kills(monkeypatch, "step;attempt=1", {"TORCHELASTIC_RESTART_COUNT": "1"}) == 1
    assert _kills(monkeypatch, "epoch-end;rank=1", {"RANK": "1"}) == 0  # another point
    with pytest.raises(ValueError, match="unknown qualifier 'node=1'"):
        _kills(monkeypatch, "step;node=1", {})


def test_cli_flags():
    from lmdeq.app.cli import build_parser

    args = build_parser().parse_args(["train", "--dist-backend", "gloo", "--sync-bn"])
    assert args.dist_backend == "gloo" and args.sync_bn
    args = build_parser().parse_args(["eval", "--checkpoint", "x.pt"])
    assert args.dist_backend == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--dist-backend", "mpi"])
