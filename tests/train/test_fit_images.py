"""Fitting images to a model's input (lmdeq.app.data.fit; lmdeq train --channels / --image-size): the luma of
PIL's convert('L'), the channel repeated, torchvision's antialiased bilinear resize; and a run that uses them."""
import numpy as np
import pytest
import torch
from PIL import Image

from lmdeq.app.data.fit import fit_images
from lmdeq.app.data.images import LabelledImages
from lmdeq.errors import ConfigError

from train_helpers import write_image_folder


def _images(n=5, c=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LabelledImages(torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8),
                          torch.arange(n) % 2, ("a", "b"))


def test_three_to_one_channel_is_pils_luma():
    data = _images()
    gray = fit_images(data, channels=1).images
    for img, got in zip(data.images, gray):
        want = np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).convert("L"))
        assert np.abs(got[0].numpy().astype(int) - want.astype(int)).max() <= 1   # PIL rounds in fixed point


def test_one_to_three_channels_repeats_and_sizes_resize():
    import torchvision.transforms.v2.functional as TF

    data = _images(c=1)
    rgb = fit_images(data, channels=3).images
    assert rgb.shape == (5, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 2]) and torch.equal(rgb[:, 1], data.images[:, 0])
    big = fit_images(_images(), size=64).images
    want = TF.resize(_images().images.float(), [64, 64], antialias=True).round().clamp(0, 255).to(torch.uint8)
    assert big.shape == (5, 3, 64, 64) and (big.int() - want.int()).abs().max() <= 1
    assert fit_images(data) is data and fit_images(_images(size=64), size=64).images.shape == (5, 3, 64, 64)


def test_unsupported_conversion_is_a_clear_error():
    with pytest.raises(ConfigError, match="--channels 1: the data has 4-channel images"):
        fit_images(_images(c=4), channels=1)


def test_a_one_channel_preset_trains_on_rgb_data_through_the_cli(tmp_path):
    from lmdeq.app.cli import main
    from lmdeq.app.train.checkpoint import load_checkpoint

    write_image_folder(tmp_path / "d" / "train", per_class=4, size=(32, 32))
    rc = main(["train", "--preset", "mnist-small", "--data", str(tmp_path / "d"), "--channels", "1",
               "--image-size", "28", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25",
               "--set", "num_classes=4", "--set", "channels=[8,8]", "--set", "head_channels=[4,8]",
               "--set", "final_channels=16", "--set", "num_groups=4", "--out", str(tmp_path / "run"),
               "--no-progress", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["train_config"]["channels"] == 1 and ckpt["train_config"]["image_size"] == 28
    assert ckpt["model_config"]["in_channels"] == 1


def test_a_folder_of_mixed_sizes_decodes_at_the_image_size(tmp_path):
    """ImageNet-style folders hold images of many sizes: refused without --image-size (naming the file and the
    flag), decoded at that size with it (each image resized as fit_images would; cached per size)."""
    from lmdeq.app.data.fit import resize_images
    from lmdeq.app.data.folder import load_image_folder
    from lmdeq.errors import DataError

    rng = np.random.default_rng(0)
    for name, (w, h) in (("a/0.png", (40, 30)), ("a/1.png", (32, 32)), ("b/0.png", (50, 64))):
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "d" / name)
    with pytest.raises(DataError, match="is 32x32, expected 40x30.*--image-size"):
        load_image_folder(tmp_path / "d", tmp_path / "cache")
    data = load_image_folder(tmp_path / "d", tmp_path / "cache", resize=24)
    assert data.images.shape == (3, 3, 24, 24) and data.labels.tolist() == [0, 0, 1]
    first = torch.from_numpy(np.asarray(Image.open(tmp_path / "d" / "a/0.png").convert("RGB")).copy()).permute(2, 0, 1)
    assert torch.equal(data.images[0], resize_images(first[None], 24)[0])
    assert load_image_folder(tmp_path / "d", tmp_path / "cache", resize=16).images.shape[-1] == 16   # own cache entry
    assert torch.equal(load_image_folder(tmp_path / "d", tmp_path / "cache", resize=24).images, data.images)
