"""A trained model users can use: lmdeq.app.train.export turns a training checkpoint (best.pt) into a small
model-only checkpoint that ``lmdeq eval --checkpoint`` loads in a fresh process from another directory
(as on a fresh clone) and ``lmdeq bench --weights`` accepts, computing exactly the trained function."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmdeq.app.bench import speedup
from lmdeq.errors import CheckpointError
from lmdeq.models import mdeq
from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.app.train.config import TrainConfig
from lmdeq.files import file_sha256
from lmdeq.app.train.export import export_weights, main as export_main
from lmdeq.app.train.run import run_training

from ..train.train_helpers import write_image_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of the real cifar10-small Lipschitz preset on 6 of 10 images (2 steps)."""
    tmp = tmp_path_factory.mktemp("weights")
    # the 10 classes of the real preset's head (the benchmark's models are 10-way)
    folder = write_image_folder(tmp / "images" / "train", per_class=1, classes=[f"c{i}" for i in range(10)])
    cfg = TrainConfig(preset="cifar10-small", data=str(tmp / "images"), val_fraction=0.4, epochs=1, batch_size=3)
    run_training(cfg, device="cpu", out_dir=tmp / "run", cache_dir=tmp / "cache", progress=False,
                 print_fn=lambda m: None)
    return tmp, folder


def test_export_is_small_model_only_and_the_same_function(trained, capsys):
    tmp, _ = trained
    src, dst = tmp / "run" / "best.pt", tmp / "exported.pt"
    assert export_main([str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert file_sha256(dst) in printed and "bytes" in printed
    full, small = load_checkpoint(src), load_checkpoint(dst)
    assert small["kind"] == "best" and not {"optimizer", "scheduler", "rng"} & set(small)
    assert small["best_val_acc"] == full["best_val_acc"] and small["epoch"] == full["epoch"] == 1
    assert dst.stat().st_size < 2 * 2 ** 20
    last = tmp / "from-last.pt"   # the run's last.pt (with optimiser state) exports its best epoch, smaller
    export_weights(tmp / "run" / "last.pt", last)
    assert last.stat().st_size < 0.6 * (tmp / "run" / "last.pt").stat().st_size
    assert all(torch.equal(a, b) for a, b in zip(load_checkpoint(last)["model_state"].values(),
                                                 small["model_state"].values()))
    a, b = mdeq(**full["model_config"]).eval(), mdeq(**small["model_config"]).eval()
    a.load_state_dict(full["model_state"])
    b.load_state_dict(small["model_state"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert b.lipschitz_bound() == a.lipschitz_bound() < 1.0
    with pytest.raises(CheckpointError, match="source checkpoint itself"):
        export_weights(dst, dst)


def test_lmdeq_eval_loads_it_in_a_fresh_process_elsewhere(trained):
    tmp, folder = trained
    dst = tmp / "fresh.pt"
    export_weights(tmp / "run" / "best.pt", dst)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LMDEQ_CACHE": str(tmp / "cache2")}
    out = subprocess.run([sys.executable, "-m", "lmdeq.app.cli", "eval", "--checkpoint", str(dst), "--data",
                          str(folder.parent), "--json", "--no-progress"], cwd=tmp, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    full = load_checkpoint(tmp / "run" / "best.pt")
    assert result["acc"] == full["best_val_acc"] and result["certified"] is True
    assert result["lipschitz_bound_verified"] == full["record"]["lipschitz_bound_eval_verified"]


def test_lmdeq_bench_accepts_it_as_trained_weights(trained):
    tmp, _ = trained
    dst = tmp / "bench.pt"
    export_weights(tmp / "run" / "best.pt", dst)
    result = speedup.run(preset="cifar10-small", batch=2, steps=1, warmup=0, weights=[str(dst)], methods=("lmdeq",),
                         out_dir=None, log=lambda m: None)
    trained_rows = [r for r in result["rows"] if r["weights"] == "trained"]
    assert len(trained_rows) == 1 and trained_rows[0]["weights_source"] == str(dst)


def test_training_curve_for_the_readme(trained, capsys):
    from .scripts import load_script

    tmp, _ = trained
    plot = load_script("benchmarks/plot_training_curve.py")
    assert plot.main([str(tmp / "run" / "metrics.jsonl"), "--label", "(c)", "--out", str(tmp / "curve")]) == 0
    assert (tmp / "curve.png").stat().st_size > 0
    table = (tmp / "curve.md").read_text()
    assert table.startswith("| epoch |") and len(table.strip().splitlines()) == 3   # header, rule, epoch 1
    record = json.loads((tmp / "run" / "metrics.jsonl").read_text().splitlines()[0])
    header, _, row = table.strip().splitlines()
    assert header.rstrip(" |").endswith("verified L (inference)")
    assert row.rstrip(" |").endswith(f"{record['lipschitz_bound_eval_verified']:.4f}")


def test_bench_takes_a_checkpoint_trained_with_other_shapes(tmp_path):
    """A run trained with --set channels=... (a documented use) keeps its shapes in lmdeq bench --weights."""
    tiny = dict(channels=[8, 8], expansion=2, num_groups=4, head_channels=[2, 4], final_channels=16)
    cfg = TrainConfig(preset="cifar10-small", data=str(tmp_path / "images"), val_fraction=0.4, epochs=1,
                      batch_size=3)
    write_image_folder(tmp_path / "images" / "train", per_class=1, classes=[f"c{i}" for i in range(10)])
    run_training(cfg, device="cpu", out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                 print_fn=lambda m: None, model_factory=lambda _c: mdeq("cifar10-small", **tiny))
    result = speedup.run(batch=2, steps=1, warmup=0, weights=[str(tmp_path / "run" / "best.pt")],
                         methods=("authors", "lmdeq"), out_dir=None, log=lambda m: None)
    trained = [r for r in result["rows"] if r["weights"] == "trained"]
    assert {r["method"] for r in trained} == {"authors", "lmdeq"}
    assert all(r["weights_source"].endswith("best.pt") for r in trained)
