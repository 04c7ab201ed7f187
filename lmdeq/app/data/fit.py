"""Images fitted to a model's input: a channel count and a square size (``lmdeq train --channels / --image-size``).

Channels: 3 -> 1 is the ITU-R BT.601 luma that PIL's ``convert('L')`` computes, L = (299 R + 587 G + 114 B) /
1000 rounded to the nearest integer; 1 -> 3 repeats the channel. Size: bilinear resampling with antialiasing
(``torch.nn.functional.interpolate(..., mode='bilinear', antialias=True)``, as torchvision's Resize on tensors)
to size x size, rounded back to uint8 (a non-square image is stretched). Done once on the decoded images, in
chunks, so a 64x64 CIFAR run costs 4x the memory of the 32x32 one, never a per-epoch resize.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from .images import LabelledImages

__all__ = ["fit_images", "resize_images"]

_LUMA = (0.299, 0.587, 0.114)
_CHUNK = 2048


def _channels(x: torch.Tensor, channels: int, source: str) -> torch.Tensor:
    have = x.shape[1]
    if have == channels:
        return x
    if have == 3 and channels == 1:
        w = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
        return (x.float() * w).sum(dim=1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    raise ConfigError(f"--channels {channels}: {source} has {have}-channel images; lmdeq converts 3 -> 1 (luma) and "
                      "1 -> 3 (repeated) only")


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) resized to (N, C, size, size) (see the module docstring)."""
    if tuple(x.shape[2:]) == (size, size):
        return x
    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def fit_images(data: LabelledImages, channels: Optional[int] = None, size: Optional[int] = None,
               source: str = "the data") -> LabelledImages:
    """``data`` with ``channels`` channels and size x size images (see the module docstring); None keeps it."""
    if channels is None and size is None:
        return data
    parts = []
    for lo in range(0, len(data), _CHUNK):
        x = data.images[lo:lo + _CHUNK]
        if channels is not None:
            x = _channels(x, channels, source)
        if size is not None:
            x = resize_images(x, size)
        parts.append(x.contiguous())
    images = torch.cat(parts) if parts else data.images.new_zeros(
        (0, channels or data.images.shape[1], size or data.images.shape[2], size or data.images.shape[3]))
    return LabelledImages(images, data.labels, data.classes)
