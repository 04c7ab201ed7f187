"""``lmdeq eval`` without ``--data`` (issue 27 item 3): the data the checkpoint's train_config records, a relative path
taken relative to the current directory; when it cannot be read, one line naming the recorded path, where it came
from and the --data that evaluates the same images; and other images than the run recorded (their digest) are an
error unless --allow-data-change."""
import logging
from pathlib import Path

import pytest
import torch
from train_helpers import TinyDEQClassifier, write_image_folder

from lmdeq.app.train import TrainConfig, run_evaluation, run_training
from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.app.train.cli import main
from lmdeq.errors import DataError, DataNotFoundError
from lmdeq.files import file_sha256
from lmdeq.models import PUBLISHED

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED_FILE = ROOT / "weights" / "cifar10-small-lipschitz.pt"


def test_the_published_weights_without_their_data_name_what_to_pass(tmp_path, monkeypatch, capsys):
    """From a directory where the recorded ../shared/data/cifar10-train-jpeg.tar.gz is not: one line, no data read."""
    if not PUBLISHED_FILE.is_file():
        pytest.skip("the published weights are not in this checkout")
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", str(PUBLISHED_FILE), "--no-progress", "--cache-dir", "cache"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmdeq eval: error: data: --data not given"), lines
    for needle in (f"recorded in {PUBLISHED_FILE}'s train_config", "'../shared/data/cifar10-train-jpeg.tar.gz'",
                   f"relative to the current directory {tmp_path}) cannot be read: ../shared/data/cifar10-train-jpeg"
                   ".tar.gz does not exist;", "pass --data PATH/TO/cifar10-train-jpeg.tar.gz, your copy of the very "
                   "files the run was trained on (the published cifar10-small-lipschitz: the CIFAR-10 training split",
                   "drawn from that file list by seed 0", "would evaluate on other images"):
        assert needle in lines[0], needle


def _train(data, out, cache):
    run_training(TrainConfig(data=str(data), epochs=1, batch_size=5, eval_batch_size=7, val_fraction=0.25, seed=0),
                 device="cpu", out_dir=out, cache_dir=cache, progress=False,
                 model_factory=lambda _c: TinyDEQClassifier(), print_fn=lambda s: None)


def _eval(checkpoint, **kw):
    return run_evaluation(checkpoint, device="cpu", progress=False, model_factory=lambda _c: TinyDEQClassifier(), **kw)


@pytest.fixture
def relative_run(tmp_path, monkeypatch):
    """A run trained from ``tmp_path`` on the relative --data 'images'."""
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "images" / "train")
    _train("images", Path("run"), tmp_path / "cache")
    return tmp_path


def test_the_recorded_relative_path_is_read_from_the_current_directory(relative_run, monkeypatch):
    best = relative_run / "run" / "best.pt"
    assert load_checkpoint(best)["train_config"]["data"] == "images"
    reference = load_checkpoint(best)["record"]["val_acc"]
    assert _eval(best, cache_dir=relative_run / "cache")["acc"] == reference   # from where the run was trained
    (relative_run / "elsewhere").mkdir()
    monkeypatch.chdir(relative_run / "elsewhere")
    with pytest.raises(DataNotFoundError) as err:
        _eval(best, cache_dir=relative_run / "cache")
    message = str(err.value)
    assert f"recorded in {best}'s train_config (data = 'images', relative to the current directory " \
           f"{relative_run / 'elsewhere'})" in message
    assert "pass --data PATH/TO/images, your copy of the very files the run was trained on:" in message
    assert "published" not in message and "\n" not in message
    # --data names them from here
    assert _eval(best, data="../images", cache_dir=relative_run / "cache")["acc"] == reference


def test_other_images_than_the_run_recorded_are_refused_unless_allowed(relative_run, caplog):
    best, last = relative_run / "run" / "best.pt", relative_run / "run" / "last.pt"
    write_image_folder(relative_run / "other" / "train", seed=7)   # same count and classes, other pixels
    for checkpoint, split, what in ((best, "val", "validation"), (last, "train", "training")):
        with pytest.raises(DataError, match=f"the {what} images of other are not those {checkpoint}'s run "
                                            f"{what[:-1]}ed on .*data_digest.*'images'.*--allow-data-change"):
            _eval(checkpoint, data="other", split=split, cache_dir=relative_run / "cache")
    with caplog.at_level(logging.WARNING, logger="lmdeq.app.train"):
        result = _eval(best, data="other", allow_data_change=True, cache_dir=relative_run / "cache")
    assert result["n"] == 6 and "evaluating on other validation images" in caplog.text
    # every image of other data is no split of the run: nothing to compare
    assert _eval(best, data="other", split="all", cache_dir=relative_run / "cache")["n"] == 24


def test_a_published_checkpoint_is_checked_against_its_entry(relative_run, monkeypatch):
    """A model-only file without data_digest (as the published weights): its PUBLISHED entry (found by sha256)
    gives the digest, and the data description for the error."""
    ckpt = load_checkpoint(relative_run / "run" / "best.pt")
    digest = ckpt.pop("data_digest")
    torch.save(ckpt, relative_run / "published.pt")
    entry = {"file": "published.pt", "sha256": file_sha256(relative_run / "published.pt"), "data": "tiny images",
             "data_digest": digest}
    monkeypatch.setitem(PUBLISHED, "tiny-published", entry)
    write_image_folder(relative_run / "other" / "train", seed=7)
    with pytest.raises(DataError, match="are not those"):
        _eval(relative_run / "published.pt", data="other", cache_dir=relative_run / "cache")
    assert _eval(relative_run / "published.pt", cache_dir=relative_run / "cache")["n"] == 6
    (relative_run / "elsewhere").mkdir()
    monkeypatch.chdir(relative_run / "elsewhere")
    with pytest.raises(DataNotFoundError, match=r"trained on \(the published tiny-published: the tiny images\)"):
        _eval(relative_run / "published.pt", cache_dir=relative_run / "cache")
