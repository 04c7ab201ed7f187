"""An in-memory labelled image set: uint8 images (N, C, H, W) with int64 labels and class names.

Decoding once into one uint8 tensor keeps every later epoch cheap (50,000 CIFAR images are 150 MB).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LabelledImages:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64, values in [0, len(classes))
    classes: tuple[str, ...]

    def __post_init__(self):
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise TypeError("images must be a uint8 tensor of shape (N, C, H, W)")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise TypeError("labels must be an int64 tensor of shape (N,)")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"labels has {self.labels.shape[0]} entries but images has {self.images.shape[0]}")
        if not self.classes:
            raise ValueError("classes must name at least one class")
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)})")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> "LabelledImages":
        """The images at ``index`` (a 1-D int64 tensor), as a contiguous copy."""
        return LabelledImages(self.images[index].contiguous(), self.labels[index].contiguous(), self.classes)

    def digest(self) -> str:
        """A digest of the exact images, labels and class names (equal digests: the same data set)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((tuple(self.images.shape), self.classes)).encode())
        h.update(self.images.contiguous().numpy().data)
        h.update(self.labels.contiguous().numpy().data)
        return h.hexdigest()
