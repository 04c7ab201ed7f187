"""The input the MDEQ classifiers take: a batch of CIFAR-sized RGB images (B, 3, 32, 32), floating point."""
from __future__ import annotations

import torch

from ..errors import ConfigError, ConfigTypeError

__all__ = ["IMAGE_SIZE", "IN_CHANNELS", "check_images"]

IMAGE_SIZE = 32
IN_CHANNELS = 3


def check_images(x) -> None:
    """A clear error naming ``x`` unless it is a floating tensor of shape (B, 3, 32, 32) with B >= 1."""
    if not torch.is_tensor(x):
        raise ConfigTypeError(f"x must be a tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ConfigTypeError(f"x must have a floating dtype, got {x.dtype}")
    expected = (IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected or x.shape[0] < 1:
        raise ConfigError(f"x must have shape (B, {IN_CHANNELS}, {IMAGE_SIZE}, {IMAGE_SIZE}) with B >= 1, "
                          f"got {tuple(x.shape)}")
