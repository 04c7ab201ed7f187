"""Deprecated: the fixed-point update op's module is :mod:`lmdeq.ops.fixed_point_update` (the op's name); the ops
themselves are ``lmdeq.ops.fixed_point_update`` and ``lmdeq.ops.fixed_point_update_multi``."""
from ..deprecation import deprecated
from .fixed_point_update import fixed_point_update, fixed_point_update_multi

__all__ = ["fixed_point_update", "fixed_point_update_multi"]

deprecated("lmdeq.ops.fixed_point_step is deprecated: use lmdeq.ops.fixed_point_update and "
           "lmdeq.ops.fixed_point_update_multi")
