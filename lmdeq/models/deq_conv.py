"""The MDEQ cell's convolution under its former name: ``DEQConv2d`` is :class:`lmdeq.models.CappedConv2d` (the
same class; see capped.py)."""
from .capped import CappedConv2d, _StateConv2d  # noqa: F401

DEQConv2d = CappedConv2d

__all__ = ["DEQConv2d", "CappedConv2d"]
