"""A short training run on a few thousand shared CIFAR-10 images beats chance on held-out images.

Uses the shared archive at ``<repo>/../shared/data/cifar10-train-jpeg.tar.gz`` (skipped when absent).
The archive is extracted and decoded into $LMDEQ_CACHE when that is set, else into a temporary cache.
"""
import os
from pathlib import Path

import pytest

from lmdeq.app.train import TrainConfig, run_training
from lmdeq.app.data.archive import default_cache_dir

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10-train-jpeg.tar.gz"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not DATA.is_file(), reason=f"shared CIFAR-10 archive not found at {DATA}")]


def test_short_lipschitz_mdeq_run_beats_chance(tmp_path_factory):
    cache = default_cache_dir() if os.environ.get("LMDEQ_CACHE") else tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=str(DATA), preset="cifar10-small", lipschitz=True, epochs=3, batch_size=32,
                      limit_train=2000, limit_val=500, seed=0)
    summary = run_training(cfg, device="cpu", out_dir=out, cache_dir=cache, progress=False)
    final = summary["final"]
    assert final["val_acc"] > 0.2, final  # chance is 0.10 on 10 balanced classes
    assert summary["certified"] and 0 < summary["lipschitz_bound"] < 1
    assert final["f_nstep"] > 0 and final["b_nstep"] > 0
