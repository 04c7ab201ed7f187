"""Data-parallel training (issue 14): 2 gloo processes on a tiny ImageFolder train one run, sharded, with
rank-0-only outputs, equal to a single-process run with the same global batch; a resume under 2 processes
equals the uninterrupted run; the certified constraint state is identical on every rank after every step.

The ranks are forked processes with torchrun's environment (ddp_helpers.run_ranks), one intra-op thread
each; the last test runs the real ``torchrun ... -m lmdeq.app.cli train`` with an elastic restart. The model
is the tiny real Lipschitz MDEQ with the implicit backward (ddp_helpers.tiny_mdeq). Batch size 5 on 18
training images gives global batches of 5, 5, 5, 3: shards of 3 + 2 and, for the last one, 2 + 1, so the
loss weighting of unequal shards is exercised at every step.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_helpers import TINY_MDEQ, run_ranks, tiny_config, tiny_mdeq
from train_helpers import run_in_fork, write_image_folder

from lmdeq.app.train import TrainConfig, run_training
from lmdeq.app.train.checkpoint import load_checkpoint, seed_everything
from lmdeq.app.train.metrics import read_jsonl
from lmdeq.app.train.rundir import compare_runs, locked

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, STEPS_PER_EPOCH = 2, 4


def _cfg(data, **changes):
    return TrainConfig(data=str(data), epochs=EPOCHS, batch_size=5, eval_batch_size=4, val_fraction=0.25, seed=0,
                       lr=1e-2, **changes)


def _record_steps_and_writes(log_dir: Path, rank: int) -> None:
    """In this process: after every optimiser step append the certified bound (exact float) and a digest of
    every parameter and buffer (the norm estimates sigma_hat and power vectors included) to
    ``steps-<rank>.jsonl``; log the name of every run-directory file written to ``writes-<rank>.txt``."""
    import lmdeq.app.train.rundir as rundir
    import lmdeq.app.train.step as step
    from lmdeq.app.train.replicas import state_digests

    constraint, save, jsonl = step.apply_constraint, rundir.save_checkpoint, rundir.write_jsonl

    def apply_constraint(model):
        constraint(model)
        with open(log_dir / f"steps-{rank}.jsonl", "a") as fh:
            fh.write(json.dumps({"bound": float(model.lipschitz_bound()).hex(), "state": state_digests(model)}) + "\n")

    def logged(fn):
        def write(path, *args, **kwargs):
            with open(log_dir / f"writes-{rank}.txt", "a") as fh:
                fh.write(Path(path).name + "\n")
            return fn(path, *args, **kwargs)
        return write

    step.apply_constraint = apply_constraint
    rundir.save_checkpoint, rundir.write_jsonl = logged(save), logged(jsonl)


def _train_rank(rank, cfg, out, cache, log_dir=None, resume=None):
    if log_dir is not None:
        _record_steps_and_writes(log_dir, rank)
    run_training(cfg, device="cpu", out_dir=out, cache_dir=cache, progress=False, bound_every=2, resume=resume,
                 model_factory=tiny_mdeq, print_fn=lambda s: None)


def _train_single(cfg, out, cache):
    run_training(cfg, device="cpu", out_dir=out, cache_dir=cache, progress=False, bound_every=2,
                 model_factory=tiny_mdeq, print_fn=lambda s: None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(root, cfg): an uninterrupted 2-process run in root/two (with step and write logs in root/logs) and
    the single-process run with the same global batch in root/one."""
    root = tmp_path_factory.mktemp("ddp")
    write_image_folder(root / "data" / "train")
    cfg = _cfg(root / "data")
    (root / "logs").mkdir()
    assert run_ranks(_train_rank, 2, cfg, root / "two", root / "cache", root / "logs") == [0, 0]
    assert run_in_fork(_train_single, cfg, root / "one", root / "cache") == 0
    return root, cfg


def test_two_processes_train_one_run_with_rank0_outputs(runs):
    root, _ = runs
    assert sorted(p.name for p in (root / "two").iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
    records = read_jsonl(root / "two" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]  # exactly one line per epoch
    assert [r["step"] for r in records] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]  # global batches, not shards
    assert all(r["world_size"] == 2 for r in records)
    assert not (root / "logs" / "writes-1.txt").exists()  # rank 1 wrote nothing
    writes = (root / "logs" / "writes-0.txt").read_text().split()
    assert writes.count("last.pt") == EPOCHS and writes.count("metrics.jsonl") == EPOCHS  # once per epoch
    improved = [r["epoch"] for i, r in enumerate(records) if all(r["val_acc"] > q["val_acc"] for q in records[:i])]
    assert writes.count("best.pt") == len(improved) >= 1  # once per improving epoch
    last = load_checkpoint(root / "two" / "last.pt")
    assert last["world_size"] == 2 and last["step"] == EPOCHS * STEPS_PER_EPOCH


def _flat(state):
    return torch.cat([v.double().flatten() for v in state.values() if v.is_floating_point()])


def test_final_weights_equal_the_single_process_run(runs):
    root, cfg = runs
    two = load_checkpoint(root / "two" / "last.pt")
    one = load_checkpoint(root / "one" / "last.pt")
    assert two["model_state"].keys() == one["model_state"].keys()
    seed_everything(cfg.seed)
    init = _flat(tiny_mdeq().state_dict())
    a, b = _flat(two["model_state"]), _flat(one["model_state"])
    moved = (b - init).norm()
    assert moved > 1.0  # Adam moved the 21k parameters by ~lr = 1e-2 per step: equal updates mean something
    assert float((a - b).norm() / moved) < 1e-5  # the update of the 2-process run is the 1-process update
    assert float((a - b).norm() / b.norm()) < 1e-5
    for r2, r1 in zip(read_jsonl(root / "two" / "metrics.jsonl"), read_jsonl(root / "one" / "metrics.jsonl")):
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)  # global-batch loss, not rank 0's
        assert r2["train_acc"] == r1["train_acc"] and r2["val_acc"] == r1["val_acc"]  # sharded eval, summed counts
        assert r2["val_loss"] == pytest.approx(r1["val_loss"], rel=1e-5)
        assert r2["f_nstep"] == r1["f_nstep"] and r2["b_nstep"] == r1["b_nstep"]
        assert r2["lipschitz_bound"] == pytest.approx(r1["lipschitz_bound"], rel=1e-5)


def test_certified_state_identical_on_every_rank_after_every_step(runs):
    root, _ = runs
    steps = [read_jsonl(root / "logs" / f"steps-{r}.jsonl") for r in (0, 1)]
    assert len(steps[0]) == len(steps[1]) == EPOCHS * STEPS_PER_EPOCH
    for t, (s0, s1) in enumerate(zip(*steps), start=1):
        assert s0["bound"] == s1["bound"], f"step {t}: certified bound differs between the ranks"
        differ = [k for k in s0["state"] if s0["state"][k] != s1["state"][k]]
        assert differ == [], f"step {t}: rank 1 differs from rank 0 in {differ}"
    assert any("sigma" in k for k in steps[0][0]["state"])  # the norm estimates are among the compared tensors
    assert len({s["bound"] for s in steps[0]}) > 1  # the bound moved with the weights


@pytest.mark.parametrize("fault", ["step@6;rank=1",        # rank 1 dies in the middle of epoch 2
                                   "last.pt:partial@2"])   # rank 0 dies half-way through writing epoch 2
def test_resume_under_two_processes_equals_the_uninterrupted_run(runs, fault):
    root, cfg = runs
    out = root / ("resumed-" + fault.split("@")[0].replace(":", "_"))
    codes = run_ranks(_train_rank, 2, cfg, out, root / "cache", fault=fault)
    assert -9 in codes  # killed at the fault point (the other rank stopped, as torchrun stops it)
    assert len(read_jsonl(out / "metrics.jsonl")) == 1  # epoch 1 committed, epoch 2 not
    assert run_ranks(_train_rank, 2, cfg, out, root / "cache", None, out / "last.pt") == [0, 0]
    assert compare_runs(root / "two", out) == []


def _fail_rank(rank, cfg, out, cache, errors):
    try:
        _train_rank(rank, cfg, out, cache)
    except Exception as err:  # noqa: BLE001 - the test reads what each rank raised
        (errors / f"{rank}.txt").write_text(f"{type(err).__name__}: {err}")
        raise SystemExit(2)


def test_a_rank_that_fails_alone_stops_every_rank_with_one_error(runs, tmp_path):
    """Rank 0 cannot lock the run directory (another process trains into it): rank 0 raises the lock error,
    rank 1 a PeerFailedError naming it; neither waits for the other."""
    root, cfg = runs
    out = tmp_path / "busy"
    with locked(out):
        codes = run_ranks(_fail_rank, 2, cfg, out, root / "cache", tmp_path, timeout=60)
    assert codes == [2, 2]
    assert (tmp_path / "0.txt").read_text().startswith("RunLockedError: out:")
    assert (tmp_path / "1.txt").read_text().startswith("PeerFailedError: rank 0 failed (RunLockedError: out:")


def _mismatched_data_rank(rank, cfg, out, cache, errors):
    _fail_rank(rank, cfg.replace(limit_train=12) if rank == 1 else cfg, out, cache, errors)


def test_ranks_must_read_the_same_data(runs, tmp_path):
    root, cfg = runs
    codes = run_ranks(_mismatched_data_rank, 2, cfg, tmp_path / "run", root / "cache", tmp_path, timeout=60)
    assert codes == [2, 2]
    for r in (0, 1):
        assert "rank 1's training images differ from rank 0's" in (tmp_path / f"{r}.txt").read_text()
    assert not (tmp_path / "run").exists()  # nothing committed: the directory the lock made is gone


def test_torchrun_cli_elastic_restart_resumes_from_last_pt(runs, tmp_path):
    """``torchrun --nproc-per-node=2 --max-restarts=1 -m lmdeq.app.cli train ...`` with rank 1 killed in epoch 2 of
    the first attempt: torchrun restarts both workers, they continue from last.pt, and the run ends exactly
    like an uninterrupted 2-process run (train-mode BatchNorm and dropout here: per-rank state)."""
    from lmdeq.app.cli import build_parser
    from lmdeq.app.train.cli import config_from_args

    root, _ = runs
    sets = [a for k, v in TINY_MDEQ.items() if k != "dropout"
            for a in ("--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}")]
    argv = ["train", "--data", str(root / "data"), "--cache-dir", str(root / "cache"), "--epochs", str(EPOCHS),
            "--batch-size", "5", "--eval-batch-size", "4", "--val-fraction", "0.25", "--lr", "0.01",
            "--no-progress", "--device", "cpu", *sets]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LMDEQ_FAULT_AT": "step@6;rank=1;attempt=0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=1",
           "-m", "lmdeq.app.cli", *argv, "--out", str(tmp_path / "elastic")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "restarted by torchrun (restart 1" in output and "resuming from" in output
    assert output.count("epoch 1/2:") == 1 and output.count("epoch 2/2:") == 1  # rank 0 prints, once per epoch
    records = read_jsonl(tmp_path / "elastic" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]

    cfg = config_from_args(build_parser().parse_args(argv))
    assert "dropout" not in cfg.model_overrides  # the preset's dropout 0.25: rank 1's RNG must resume exactly

    def reference(rank):
        run_training(cfg, device="cpu", out_dir=tmp_path / "reference", cache_dir=root / "cache", progress=False,
                     print_fn=lambda s: None)

    assert run_ranks(reference, 2) == [0, 0]
    assert compare_runs(tmp_path / "reference", tmp_path / "elastic") == []


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_nccl_with_sync_bn_equal_one_gpu(tmp_path):
    """On 2 GPUs (nccl), --sync-bn normalises over the global batch, so even training-mode BatchNorm gives the
    single-GPU run's weights (to GPU rounding: cuDNN and SyncBatchNorm reduce in other orders)."""
    write_image_folder(tmp_path / "data" / "train")
    sets = [a for k, v in {**TINY_MDEQ, "cuda_graphs": False}.items()
            for a in ("--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}")]
    argv = ["-m", "lmdeq.app.cli", "train", "--data", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"),
            "--epochs", "2", "--batch-size", "6", "--val-fraction", "0.25", "--lr", "0.01", "--no-progress",
            "--device", "cuda", *sets]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for cmd in ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *argv,
                 "--sync-bn", "--out", str(tmp_path / "two")], [sys.executable, *argv, "--out", str(tmp_path / "one")]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from lmdeq.models import mdeq

    seed_everything(0)
    init = _flat(mdeq("cifar10-small", **tiny_config(cuda_graphs=False)).state_dict())
    a = _flat(load_checkpoint(tmp_path / "two" / "last.pt")["model_state"])
    b = _flat(load_checkpoint(tmp_path / "one" / "last.pt")["model_state"])
    assert float((a - b).norm() / (b - init).norm()) < 1e-4
