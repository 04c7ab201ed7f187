"""Input stem and injection of the MDEQ classifier (outside f; plain BatchNorm layers).

stem(x) = relu(bn(conv3x3(relu(bn(conv3x3(x)))))), 3 -> C_0 channels, stride 1 (CIFAR keeps 32x32);
injection = relu(bn(conv1x1(stem(x)))) when there are more than 2 branches, else the stem output.
The injection enters the highest-resolution branch only.
"""
from __future__ import annotations

from torch import nn

__all__ = ["make_stem", "make_injection"]

BN_MOMENTUM = 0.1


def make_stem(in_channels: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
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
