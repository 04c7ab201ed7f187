"""--data <Name>:<root>: torchvision data sets on disk in torchvision's own layout (written here: no network),
their classes, channels and splits; a missing one is one clear line; and a preset trains on its own data."""
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch

from lmdeq.app.data.sources import load_source
from lmdeq.errors import DataUnavailableError


def _write_idx(path, array: np.ndarray) -> None:
    """torchvision's MNIST raw format: magic (0, 0, 8 = ubyte, ndim), big-endian int32 dims, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, array.ndim]) + struct.pack(">" + "i" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_mnist(root, name="MNIST", n_train=40, n_test=10, seed=0):
    g = np.random.default_rng(seed)
    raw = root / name / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = g.integers(0, 256, size=(n, 28, 28))
        images[:, :4, :4] = labels[:, None, None] * 25   # a learnable mark
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_mnist_and_fashion_mnist_by_name(tmp_path):
    for name in ("MNIST", "FashionMNIST"):
        write_mnist(tmp_path, name)
        src = load_source(f"{name.lower()}:{tmp_path}")
        assert src.train.images.shape == (40, 1, 28, 28) and src.train.images.dtype == torch.uint8
        assert src.test.images.shape == (10, 1, 28, 28) and len(src.train.classes) == 10
        assert src.train.labels.tolist()[:3] == [0, 1, 2]


def test_cifar100_by_name(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    base = tmp_path / "cifar-100-python"
    base.mkdir()
    g = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 5)):
        with open(base / split, "wb") as f:
            pickle.dump({"data": g.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n))}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    # torchvision checks its files' md5 sums: point them at the files written here
    monkeypatch.setattr(tvd.CIFAR100, "train_list", [["train", _md5(base / "train")]])
    monkeypatch.setattr(tvd.CIFAR100, "test_list", [["test", _md5(base / "test")]])
    monkeypatch.setattr(tvd.CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": _md5(base / "meta")})
    src = load_source(f"CIFAR100:{tmp_path}")
    assert src.train.images.shape == (20, 3, 32, 32) and len(src.train.classes) == 100
    assert src.test.labels.tolist() == list(range(5))


@pytest.mark.parametrize("name", ["CIFAR10", "cifar100", "SVHN", "mnist", "FashionMNIST", "STL10"])
def test_a_missing_data_set_is_one_line_saying_where_and_how(tmp_path, name):
    with pytest.raises(DataUnavailableError) as err:
        load_source(f"{name}:{tmp_path / 'nothing'}")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "nothing") in msg and "download=True" in msg
    assert "lmdeq never downloads it" in msg


def test_the_mnist_preset_trains_on_mnist(tmp_path):
    from lmdeq.app.train.config import TrainConfig
    from lmdeq.app.train.run import run_training

    write_mnist(tmp_path / "data")
    cfg = TrainConfig(preset="mnist-small", data=f"MNIST:{tmp_path / 'data'}", epochs=1, batch_size=10,
                      val_fraction=0.25, model_overrides={"channels": [8, 8], "head_channels": [4, 8],
                                                           "final_channels": 16, "num_groups": 4})
    result = run_training(cfg, device="cpu", out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                          print_fn=lambda s: None)
    assert result is not None
    from lmdeq.app.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["model_config"]["in_channels"] == 1 and ckpt["model_config"]["image_size"] == 28
    assert ckpt["lipschitz_bound"] < 1


def test_data_of_another_shape_than_the_preset_is_one_clear_error(tmp_path):
    from lmdeq.app.train.config import TrainConfig
    from lmdeq.app.train.run import run_training
    from lmdeq.errors import ConfigError

    write_mnist(tmp_path / "data")
    cfg = TrainConfig(preset="cifar10-small", data=f"MNIST:{tmp_path / 'data'}", epochs=1, batch_size=10)
    with pytest.raises(ConfigError, match="1-channel 28x28 images but the model takes 3-channel 32x32"):
        run_training(cfg, device="cpu", out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                     print_fn=lambda s: None)


def test_eval_export_bench_and_tta_work_with_another_preset(tmp_path, monkeypatch, capsys):
    """The whole CLI on a 1-channel 28x28 preset and its data: train, eval (re-deriving the images from the
    checkpoint), export, bench --weights, and the time-to-accuracy harness."""
    from lmdeq.app.cli import main
    from lmdeq.app.train.checkpoint import load_checkpoint

    monkeypatch.setenv("LMDEQ_CACHE", str(tmp_path / "cache"))
    write_mnist(tmp_path / "data", n_train=40, n_test=20)
    data = f"MNIST:{tmp_path / 'data'}"
    tiny = ["--set", "channels=[8,8]", "--set", "head_channels=[4,8]", "--set", "final_channels=16",
            "--set", "num_groups=4"]
    assert main(["train", "--preset", "mnist-small", "--data", data, "--epochs", "1", "--batch-size", "10",
                 "--out", str(tmp_path / "run"), "--no-progress", *tiny]) == 0
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "best.pt")]) == 0
    assert "acc" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data",
                 str(tmp_path / "nothing")]) == 2   # a clear error, not a traceback
    from lmdeq.app.train.export import export_weights

    info = export_weights(tmp_path / "run" / "best.pt", tmp_path / "w.pt")
    assert load_checkpoint(info["path"])["model_config"]["in_channels"] == 1
    assert main(["bench", "--quick", "--preset", "mnist-small", "--steps", "1", "--warmup", "0", "--methods", "lmdeq",
                 "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "bench")]) == 0
    sets = [a.replace("--set", "--model-set") for a in tiny]
    assert main(["bench", "tta", "--data", data, "--preset", "mnist-small", "--device", "cpu", "--epochs", "1",
                 "--batch", "10", "--evals-per-epoch", "1", "--methods", "lmdeq", "--variants", "",
                 "--out", str(tmp_path / "tta"), "--no-progress", *sets]) == 0
