"""The trained checkpoints the repository publishes (weights/, lmdeq.models.PUBLISHED, docs/results/training.md):
each file's sha256 is the one the docs state, it loads as a model-only checkpoint, builds the certified model
(L < 1) and agrees with its registry entry, and ``lmdeq eval --checkpoint`` evaluates it from another directory
(as on a fresh clone) on images of the checkpoint's classes."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmdeq.files import file_sha256
from lmdeq.models import PUBLISHED, mdeq
from lmdeq.app.train.checkpoint import load_checkpoint

from ..train.train_helpers import write_image_folder

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights" / PUBLISHED["cifar10-small-lipschitz"]["file"]   # the default of pretrained()
NAMES = sorted(PUBLISHED)


@pytest.mark.parametrize("name", NAMES)
def test_the_docs_state_the_published_files_sha256(name):
    file = ROOT / "weights" / PUBLISHED[name]["file"]
    page = (ROOT / "docs" / "results" / "training.md").read_text()
    stated = re.search(rf"weights/{re.escape(file.name)}`.*?sha256\s+`([0-9a-f]{{64}})`", page, re.S)
    assert stated, f"the docs' training results page names {file.name} and its sha256"
    assert stated[1] == file_sha256(file) == PUBLISHED[name]["sha256"]
    assert file.stat().st_size < 2 * 2 ** 20


@pytest.mark.parametrize("name", NAMES)
def test_the_published_weights_build_the_certified_model_of_their_entry(name):
    from lmdeq.models.presets import PRESET_DATA

    entry = PUBLISHED[name]
    ckpt = load_checkpoint(ROOT / "weights" / entry["file"])
    assert entry["preset"] == ckpt["model_config"]["preset"] and entry["val_acc"] == round(ckpt["best_val_acc"], 4)
    assert entry["epochs"] == ckpt["epoch"] and entry["schedule_epochs"] == ckpt["train_config"]["epochs"]
    assert tuple(entry["mean"]) == PRESET_DATA[entry["preset"]]["mean"]
    assert ckpt["kind"] == "best" and ckpt["model_config"]["lipschitz"]
    model = mdeq(**ckpt["model_config"]).eval()
    model.load_state_dict(ckpt["model_state"])
    assert round(model.lipschitz_bound(), 3) == entry["lipschitz_bound_eval"] < 1.0
    assert round(model.verified_lipschitz_bound(), 3) == entry["lipschitz_bound_eval_verified"]
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_lmdeq_eval_runs_on_the_published_weights_from_another_directory(tmp_path):
    ckpt = load_checkpoint(WEIGHTS)
    write_image_folder(tmp_path / "images" / "train", per_class=2, classes=list(ckpt["classes"]))
    out = subprocess.run([sys.executable, "-m", "lmdeq.app.cli", "eval", "--checkpoint", str(WEIGHTS), "--data",
                          str(tmp_path / "images"), "--split", "all", "--json", "--no-progress",
                          "--cache-dir", str(tmp_path / "cache")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n"] == 20 and 0.0 <= result["acc"] <= 1.0 and result["certified"], result


def test_pretrained_is_the_published_model_in_one_line(tmp_path, monkeypatch):
    """lmdeq.models.pretrained: the same model as the file built by hand, in eval mode; its registry entry agrees
    with the checkpoint; a damaged file, an unknown name and a missing file are clear errors."""
    from lmdeq.errors import CheckpointError, ConfigError
    from lmdeq.models import pretrained

    ckpt = load_checkpoint(WEIGHTS)
    model = pretrained("cifar10-small-lipschitz")
    assert not model.training
    by_hand = mdeq(**ckpt["model_config"]).eval()
    by_hand.load_state_dict(ckpt["model_state"])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), by_hand(x))
    damaged = tmp_path / "w.pt"
    damaged.write_bytes(WEIGHTS.read_bytes()[:-1] + b"x")
    with pytest.raises(CheckpointError, match="sha256 .* the file is damaged"):
        pretrained(path=damaged)
    with pytest.raises(ConfigError, match="unknown weights 'resnet'"):
        pretrained("resnet")
    monkeypatch.setattr("lmdeq.models.published._REPO_WEIGHTS", tmp_path / "none")
    with pytest.raises(CheckpointError, match="is not at .*pass path= or set LMDEQ_WEIGHTS"):
        pretrained()
    monkeypatch.setenv("LMDEQ_WEIGHTS", str(WEIGHTS.parent))
    assert pretrained().lipschitz_bound() < 1
