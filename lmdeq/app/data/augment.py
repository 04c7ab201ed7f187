"""Batched CIFAR augmentation on uint8 tensors and the normalisation applied on the device.

Random crop with zero padding p followed by a horizontal flip, for a batch at once:
``out[b, :, i, j] = P[b, :, oy_b + i, ox_b + j']`` where ``P`` is the image padded by p on every side,
``(oy_b, ox_b)`` in ``[0, 2p]^2`` and ``j' = W - 1 - j`` when sample b is flipped, else ``j``
(the same result as torchvision's RandomCrop(padding=p) then RandomHorizontalFlip).
Normalisation: ``x = (u / 255 - mean) / std`` per channel; :func:`preset_defaults` gives a preset's statistics
and augmentation (:data:`lmdeq.models.presets.PRESET_DATA`; the CIFAR-10 statistics the Lipschitz-MDEQ authors use
for the CIFAR-10 presets).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F

from ...models.presets import PRESET_DATA

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class DataDefaults:
    """A preset's normalisation statistics and augmentation (random crop with ``padding``, flip when ``flip``)."""

    mean: Tuple[float, ...] = CIFAR10_MEAN
    std: Tuple[float, ...] = CIFAR10_STD
    padding: int = 4
    flip: bool = True


def preset_defaults(preset: str | None) -> DataDefaults:
    """The data defaults of ``preset`` (CIFAR-10's for a model that is not one of the presets)."""
    spec = PRESET_DATA.get(preset) if isinstance(preset, str) else None
    if spec is None:
        return DataDefaults()
    return DataDefaults(tuple(spec["mean"]), tuple(spec["std"]), spec["crop_padding"], spec["flip"])


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop every image of ``images`` (B, C, H, W) at ``offsets`` (B, 2) = (row, col) in its padded
    copy and mirror those with ``flips`` (B,) set. Returns a contiguous (B, C, H, W) tensor."""
    b, _, h, w = images.shape
    if offsets.shape != (b, 2) or flips.shape != (b,):
        raise ValueError(f"offsets must be ({b}, 2) and flips ({b},), "
                         f"got {tuple(offsets.shape)} and {tuple(flips.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if offsets.numel() and (int(offsets.min()) < 0 or int(offsets.max()) > 2 * padding):
        raise ValueError(f"offsets must lie in [0, {2 * padding}]")
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    rows = offsets[:, :1] + torch.arange(h)  # (B, H)
    cols = torch.arange(w).expand(b, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[:, 1:]  # (B, W)
    out = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def normalize(images: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, C, H, W) -> ``dtype``, ``(u / 255 - mean) / std`` per channel, on images' device."""
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    m = torch.tensor(mean, dtype=dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=dtype, device=images.device).view(1, -1, 1, 1)
    return (images.to(dtype) / 255.0 - m) / s
