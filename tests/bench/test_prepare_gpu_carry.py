"""scripts/prepare_gpu_carry.py: a class-balanced, reproducible subset of a CIFAR-style JPEG archive that
lmdeq's data loader reads like the full archive."""
import io
import tarfile

import pytest
import torch
from PIL import Image

from .scripts import load_script

SCRIPT = "scripts/prepare_gpu_carry.py"


@pytest.fixture
def archive(tmp_path):
    """train/<class>/<i>.jpg for 3 classes with 4, 3 and 5 images, written in shuffled order."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "source.tar.gz"
    counts = {"cat": 4, "dog": 3, "ship": 5}
    names = [f"train/{c}/{i:04d}.jpg" for c, n in counts.items() for i in range(n)]
    order = torch.randperm(len(names), generator=g).tolist()
    with tarfile.open(path, "w:gz") as tar:
        for d in ["train/"] + [f"train/{c}/" for c in counts]:
            info = tarfile.TarInfo(d.rstrip("/"))
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for k in order:
            buf = io.BytesIO()
            pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(buf, format="JPEG")
            info = tarfile.TarInfo(names[k])
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    return path


def test_subset_takes_the_first_images_of_each_class(archive, tmp_path):
    script = load_script(SCRIPT)
    out = tmp_path / "carry" / "subset.tar.gz"
    with pytest.raises(SystemExit):   # --out in a missing folder: an argparse error before any work
        script.main(["--source", str(archive), "--per-class", "2", "--out", str(out)])
    out.parent.mkdir()
    assert script.main(["--source", str(archive), "--per-class", "2", "--out", str(out)]) == 0
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names == ["train/cat/0000.jpg", "train/cat/0001.jpg", "train/dog/0000.jpg", "train/dog/0001.jpg",
                     "train/ship/0000.jpg", "train/ship/0001.jpg"]
    assert not list(out.parent.glob("*.part"))


def test_subset_is_read_by_the_training_data_loader(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("LMDEQ_CACHE", str(tmp_path / "cache"))
    from lmdeq.app.data.sources import load_source

    script = load_script(SCRIPT)
    out = tmp_path / "subset.tar.gz"
    assert script.write_subset(archive, out, 3) == 9
    images = load_source(str(out)).train
    assert images.classes == ("cat", "dog", "ship") and len(images) == 9
    assert sorted(images.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_subset_rejects_more_images_than_a_class_has(archive, tmp_path):
    script = load_script(SCRIPT)
    with pytest.raises(ValueError, match=r"per_class=4 exceeds the images of classes \{'dog': 3\}"):
        script.write_subset(archive, tmp_path / "x.tar.gz", 4)
    with pytest.raises(SystemExit):
        script.main(["--source", str(archive), "--per-class", "0", "--out", str(tmp_path / "y.tar.gz")])
    with pytest.raises(SystemExit):
        script.main(["--source", str(tmp_path / "missing.tar.gz")])


def test_subset_members_ignores_directories_and_needs_class_folders():
    script = load_script(SCRIPT)
    assert script.subset_members(["train/", "train/a/", "train/a/1.jpg", "train/a/0.jpg"], 1) == ["train/a/0.jpg"]
    with pytest.raises(ValueError, match="no <split>/<class>/<image> members"):
        script.subset_members(["flat.jpg"], 1)
