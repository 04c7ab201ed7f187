"""benchmarks/time_to_accuracy.py runs end to end on a tiny ImageFolder: it trains the chosen methods
until the target validation accuracy, records wall-clock time, and keeps the runs when asked."""
import json

import pytest
import torch
from PIL import Image

from .scripts import load_script

SCRIPT = "benchmarks/time_to_accuracy.py"


@pytest.fixture
def tiny_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    root = tmp_path / "images"
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(4):
            pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def test_time_to_accuracy_runs_and_records(tiny_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMDEQ_CACHE", str(tmp_path / "cache"))
    tta = load_script(SCRIPT)
    out, runs = tmp_path / "results", tmp_path / "runs"
    rc = tta.main(["--data", str(tiny_folder), "--target", "0.0", "--epochs", "2", "--batch-size", "8",
                   "--val-fraction", "0.25", "--methods", "lmdeq", "--device", "cpu", "--no-progress",
                   "--out", str(out), "--save-runs", str(runs), "--tag=-tiny"])
    assert rc == 0
    (path,) = out.glob("time_to_accuracy-*.json")
    assert path.name.endswith("-tiny.json")
    result = json.loads(path.read_text())
    assert result["val_fraction"] == 0.25 and result["limit_train"] is None and result["epochs_max"] == 2
    (row,) = result["rows"]
    # target 0.0 is reached after the first epoch, with its measured time
    assert row["method"] == "lmdeq" and row["reached"] is True and row["epochs"] == 1
    assert row["seconds"] > 0 and row["history"][0]["val_acc"] is not None
    assert (runs / "lmdeq" / "last.pt").exists() and row["run_dir"] == str(runs / "lmdeq")
    assert "(c) lmdeq fast path" in capsys.readouterr().out


def test_time_to_accuracy_rejects_unknown_method(tiny_folder, tmp_path):
    tta = load_script(SCRIPT)
    with pytest.raises(SystemExit):
        tta.main(["--data", str(tiny_folder), "--methods", "fastest", "--out", str(tmp_path)])
