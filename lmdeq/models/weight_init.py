"""The MDEQ initialisation of the layers outside f (stem, injection, head): conv weights and biases
~ N(0, 0.01), BatchNorm weight 1 and bias 0. (The cell's convolutions initialise themselves, see deq_conv.py.)"""
from __future__ import annotations

from torch import nn

__all__ = ["init_outer_weights"]


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
