"""The explicit layers around the equilibrium of the MDEQ classifier (outside f; plain BatchNorm layers).

    logits = head(z*),   z* = f(z*; injection(stem(x))),   x of shape (B, in_channels, image_size, image_size)

* Input: a batch of square images (B, in_channels, S, S), floating point (:func:`check_images`); the model's
  ``in_channels`` and ``image_size`` settings (3 and 32 for CIFAR).
* Stem and injection: stem(x) = relu(bn(conv3x3(relu(bn(conv3x3(x)))))), in_channels -> C_0 channels; the first
  ``downsample`` of its two convolutions have stride 2 (MDEQ's DOWNSAMPLE_TIMES: 0 for CIFAR, which keeps
  32x32, 2 for ImageNet, 224 -> 56), so the state's highest resolution is S / 2^downsample; injection = relu(bn(conv1x1(stem(x)))) when there are more than 2 branches, else the stem
  output. The injection enters the highest-resolution branch only.
* HRNet-style classification head: per branch i a bottleneck block raises C_i to 4 h_i channels; starting at
  the highest resolution, a stride-2 conv3x3-BN-ReLU chain carries the running sum down one level at a time
  (y <- bottleneck_{i+1}(z_{i+1}) + down_i(y)); then a 1x1 conv to the final width, BN, ReLU, global average
  pooling and a linear classifier.
* Initialisation (MDEQ's, :func:`init_outer_weights`): conv weights and biases ~ N(0, 0.01), BatchNorm weight 1
  and bias 0. (The cell's convolutions initialise themselves, see capped.py.)
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, ConfigTypeError

__all__ = ["check_images", "make_stem", "make_injection", "Bottleneck", "ClassificationHead", "init_outer_weights",
           "state_resolution"]

BN_MOMENTUM = 0.1


# -- input -------------------------------------------------------------------------------------------------
def check_images(x, in_channels: int, image_size: int) -> None:
    """A clear error naming ``x`` unless it is a floating tensor of shape (B, in_channels, image_size,
    image_size) with B >= 1."""
    if not torch.is_tensor(x):
        raise ConfigTypeError(f"x must be a tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ConfigTypeError(f"x must have a floating dtype, got {x.dtype}")
    expected = (in_channels, image_size, image_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected or x.shape[0] < 1:
        what = ""
        if x.dim() == 4 and x.shape[1] != in_channels:
            what = f" (this model takes {in_channels}-channel images: its in_channels setting)"
        elif x.dim() == 4 and tuple(x.shape[2:]) != (image_size, image_size):
            what = f" (this model takes {image_size}x{image_size} images: its image_size setting)"
        raise ConfigError(f"x must have shape (B, {in_channels}, {image_size}, {image_size}) with B >= 1, "
                          f"got {tuple(x.shape)}{what}")


def state_resolution(image_size: int, downsample: int, branches: int) -> int:
    """The highest resolution of the state, image_size / 2^downsample, which the branches halve branches - 1
    times; a ConfigError naming the size unless every one of those halvings is exact."""
    factor = 2 ** (downsample + branches - 1)
    if image_size % factor:
        fits = [n for n in (image_size - image_size % factor, image_size - image_size % factor + factor) if n > 0]
        raise ConfigError(f"image_size {image_size} does not fit: the stem halves it {downsample} time(s) "
                          f"(downsample) and the {branches} branches {branches - 1} more time(s), so it must be a "
                          f"multiple of {factor} (e.g. {' or '.join(map(str, fits))}); resize the images or change "
                          "downsample / the number of channels entries")
    return image_size // 2 ** downsample


# -- stem and injection ------------------------------------------------------------------------------------
def make_stem(in_channels: int, channels: int, downsample: int = 0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, stride=2 if downsample >= 1 else 1, padding=1, bias=False),
        nn.BatchNorm2d(channels, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, stride=2 if downsample >= 2 else 1, padding=1, bias=False),
        nn.BatchNorm2d(channels, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    )


def make_injection(channels: int, num_branches: int) -> nn.Module:
    if num_branches <= 2:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(channels, channels, 1, bias=False),
        nn.BatchNorm2d(channels, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    )


# -- classification head -----------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) with BN (no affine) and a projected residual."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM, affine=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM, affine=False)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out, momentum=BN_MOMENTUM, affine=False)
        self.relu = nn.ReLU(inplace=True)
        self.project = None
        if in_channels != out:
            self.project = nn.Sequential(nn.Conv2d(in_channels, out, 1, bias=False),
                                         nn.BatchNorm2d(out, momentum=BN_MOMENTUM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.project is None else self.project(x)
        return self.relu(out + residual)


class ClassificationHead(nn.Module):
    def __init__(self, channels: Sequence[int], head_channels: Sequence[int], final_channels: int,
                 num_classes: int):
        super().__init__()
        widths = [h * Bottleneck.expansion for h in head_channels]
        self.increase = nn.ModuleList(Bottleneck(c, h) for c, h in zip(channels, head_channels))
        self.downsample = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1, bias=True),
                          nn.BatchNorm2d(widths[i + 1], momentum=BN_MOMENTUM),
                          nn.ReLU(inplace=True))
            for i in range(len(channels) - 1))
        self.final = nn.Sequential(nn.Conv2d(widths[-1], final_channels, 1),
                                   nn.BatchNorm2d(final_channels, momentum=BN_MOMENTUM),
                                   nn.ReLU(inplace=True))
        self.classifier = nn.Linear(final_channels, num_classes)

    def forward(self, z: Sequence[torch.Tensor]) -> torch.Tensor:
        y = self.increase[0](z[0])
        for i, down in enumerate(self.downsample):
            y = self.increase[i + 1](z[i + 1]) + down(y)
        y = self.final(y)
        # Global average pooling as a sum and one division of the (B, C) result: the sum's backward is a
        # broadcast view, where the mean's would write a full-size gradient (in a layout that is slow to
        # combine with a channels_last activation on CPU).
        return self.classifier(y.sum(dim=(2, 3)) / (y.shape[2] * y.shape[3]))


# -- initialisation ----------------------------------------------------------------------------------------
def init_outer_weights(*modules: nn.Module) -> None:
    """Initialise every Conv2d and affine BatchNorm2d inside ``modules``, in order (the order of the random draws)."""
    for module in (m for root in modules for m in root.modules()):
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.normal_(module.bias, 0.0, 0.01)
        elif isinstance(module, nn.BatchNorm2d) and module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
