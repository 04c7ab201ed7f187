"""Hyperparameters shared by the layers of the MDEQ cell f, and the factories that apply them.

``lipschitz=False`` is the original MDEQ: ReLU, standard GroupNorm, plain residual add, fusion as a
plain sum, no norm cap. ``lipschitz=True`` applies Sato & Iiduka's knobs: s * ReLU, mean-only GroupNorm
with |gamma| <= gamma_max, residual (1 - alpha) z + alpha F(z), fusion (1 - beta) own + beta * sum_j
w_ij F_ij(other), and the operator-norm cap ``conv_cap`` on every convolution of f; ``bound='composed'`` adds the
composed-norm estimates of the cell (mdeq_cell.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from .cell_parts import ScaledReLU
from .capped import CappedConv2d
from .normalization import group_norm

__all__ = ["CellOptions"]


@dataclass(frozen=True)
class CellOptions:
    lipschitz: bool
    expansion: int
    num_groups: int
    dropout: float
    weight_norm: bool
    s: float = 1.0
    gamma_max: float = 1.0
    alpha: float = 0.5
    beta: float = 0.3
    conv_cap: float | None = None
    sigma_margin: float = 0.0
    bound: str = "layerwise"

    @classmethod
    def from_config(cls, cfg: dict) -> "CellOptions":
        """The options of a resolved model config: the paper's knobs for the Lipschitz variant, whose convs are
        capped inside f only with ``constraint='certified'`` ('released' caps after the step, 'none' never)."""
        lipschitz = cfg["lipschitz"]
        knobs = {k: cfg[k] for k in ("s", "gamma_max", "alpha", "beta", "conv_cap", "sigma_margin") if lipschitz}
        if lipschitz:
            knobs["bound"] = cfg.get("bound", "layerwise")
        if lipschitz and cfg["constraint"] != "certified":
            knobs["conv_cap"] = None
        return cls(lipschitz=lipschitz, expansion=cfg["expansion"], num_groups=cfg["num_groups"],
                   dropout=cfg["dropout"], weight_norm=cfg["weight_norm"], **knobs)

    def residual_coefficients(self):
        """(a_res, a_f) in b = a_res z + a_f F(z): (1, 1) originally, (1 - alpha, alpha) Lipschitz."""
        return (1.0 - self.alpha, self.alpha) if self.lipschitz else (1.0, 1.0)

    def conv(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, input_size=None,
             weight_norm: bool = False) -> CappedConv2d:
        """A convolution of f; capped (on the given input size) in the Lipschitz variant."""
        cap = self.conv_cap if self.lipschitz else None
        return CappedConv2d(c_in, c_out, kernel_size, stride=stride, input_size=input_size,
                         weight_norm=weight_norm, cap=cap, margin=self.sigma_margin)

    def norm(self, num_groups: int, channels: int, affine: bool = True):
        return group_norm(self.lipschitz, num_groups, channels, affine=affine, gamma_max=self.gamma_max)

    def act(self) -> ScaledReLU:
        return ScaledReLU(self.s if self.lipschitz else 1.0)
