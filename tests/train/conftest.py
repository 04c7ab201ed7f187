"""Fixtures for the training tests (the helpers live in train_helpers.py)."""
import pytest
from train_helpers import TinyDEQClassifier, write_image_folder


@pytest.fixture
def tiny_model_cls():
    return TinyDEQClassifier


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "folder" / "train")
