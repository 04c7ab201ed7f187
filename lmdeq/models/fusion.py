"""Multiscale fusion of the MDEQ cell and the post-fusion layers, with their Lipschitz bounds.

Branch i has C_i channels at resolution r_i = r_0 / 2^i. For branches j != i a path F_ij maps branch j
to branch i:

* downsampling (j < i, k = i - j levels): k stride-2 3x3 convs, each followed by GroupNorm, with the
  activation between them:  Lip(F_ij) <= prod_t (c_t g_t) * s^(k - 1);
* upsampling (j > i, k = j - i levels): 1x1 conv, GroupNorm, nearest upsampling by 2^k. Nearest
  upsampling copies each value 2^k x 2^k times, so its l2 norm is 2^k:  Lip(F_ij) <= c g 2^k.

Fused input of branch i:  y_i = m_ii b_i + sum_{j != i} m_ij F_ij(b_j) with m = 1 everywhere for the
original MDEQ (plain sum) and, for the Lipschitz MDEQ, m_ii = 1 - beta, m_ij = beta w_ij with
w_ij = softmax_j(-p_ij) over j != i, p_ij = j - i for upsampling paths and 0 for downsampling.
Post-fusion:  f_i = GN_noaffine(conv1x1(act(y_i))),  Lip(post_i) <= s c g.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .cell_options import CellOptions
from .lipschitz import BoundContext, register_lipschitz_rule

__all__ = ["DownsamplePath", "UpsamplePath", "PostFusion", "MultiscaleFusion", "fusion_coefficients"]


class DownsamplePath(nn.Module):
    """Branch j -> branch i > j: chain of (stride-2 conv3x3, GN) with the activation in between."""

    def __init__(self, channels: Sequence[int], resolutions: Sequence[int], j: int, i: int, options: CellOptions):
        super().__init__()
        self.levels = i - j
        self.convs, self.norms, self.acts = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for t in range(self.levels):
            c_out = channels[i] if t == self.levels - 1 else channels[j]
            res = resolutions[j + t]
            self.convs.append(options.conv(channels[j], c_out, 3, stride=2, input_size=(res, res)))
            self.norms.append(options.norm(options.num_groups, c_out))
            if t < self.levels - 1:
                self.acts.append(options.act())

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """scale * F(x); scale and the activations' s are folded into the GroupNorms and convs."""
        for t in range(self.levels):
            last = t == self.levels - 1
            x = self.convs[t](x, scale=1.0 if t == 0 else self.acts[t - 1].s)
            x = self.norms[t](x, gamma_scale=scale, beta_scale=scale) if last else torch.relu_(self.norms[t](x))
        return x

    def lipschitz(self):
        """prod_t (c_t g_t) * s^(levels - 1)."""
        return _downsample_path(self, BoundContext(self))


class UpsamplePath(nn.Module):
    """Branch j -> branch i < j: conv1x1, GN, nearest upsampling by 2^(j - i)."""

    def __init__(self, channels: Sequence[int], j: int, i: int, options: CellOptions):
        super().__init__()
        self.levels = j - i
        self.conv = options.conv(channels[j], channels[i], 1)
        self.norm = options.norm(options.num_groups, channels[i])

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """scale * F(x), the scale folded into the GroupNorm."""
        y = self.norm(self.conv(x), gamma_scale=scale, beta_scale=scale)
        return F.interpolate(y, scale_factor=2 ** self.levels, mode="nearest")

    def lipschitz(self):
        """c g 2^levels (nearest upsampling by k has l2 norm k)."""
        return _upsample_path(self, BoundContext(self))


class PostFusion(nn.Module):
    """act, conv1x1, GroupNorm without affine (num_groups // 2 groups)."""

    def __init__(self, channels: int, options: CellOptions):
        super().__init__()
        self.act = options.act()
        self.conv = options.conv(channels, channels, 1, weight_norm=options.weight_norm)
        self.norm = options.norm(max(1, options.num_groups // 2), channels, affine=False)

    def forward(self, y: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``inplace=True``: y is a fresh tensor the caller gives up (the fused sum); the ReLU overwrites it."""
        y = torch.relu_(y) if inplace else torch.relu(y)
        return self.norm(self.conv(y, scale=self.act.s))   # conv(s relu y) = (s W) * relu y

    def lipschitz(self):
        """s c g."""
        return _post_fusion(self, BoundContext(self))


def fusion_coefficients(num_branches: int, lipschitz: bool, beta: float) -> List[List[float]]:
    """m_ij of y_i = sum_j m_ij F_ij(b_j): all 1 (original), else 1 - beta and beta softmax_j(-p_ij)."""
    n = num_branches
    if not lipschitz:
        return [[1.0] * n for _ in range(n)]
    m = [[0.0] * n for _ in range(n)]
    for i in range(n):
        others = [j for j in range(n) if j != i]
        logits = [-(j - i) if j > i else 0.0 for j in others]
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        total = sum(exps)
        m[i][i] = 1.0 - beta
        for j, e in zip(others, exps):
            m[i][j] = beta * e / total
    return m


class MultiscaleFusion(nn.Module):
    """f_i = post_i(sum_j m_ij F_ij(b_j)) with F_ii = identity; see the module docstring."""

    def __init__(self, channels: Sequence[int], resolutions: Sequence[int], options: CellOptions):
        super().__init__()
        n = len(channels)
        self.coefficients = fusion_coefficients(n, options.lipschitz, options.beta)
        self.paths = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j == i:
                    row.append(nn.Identity())
                elif j < i:
                    row.append(DownsamplePath(channels, resolutions, j, i, options))
                else:
                    row.append(UpsamplePath(channels, j, i, options))
            self.paths.append(row)
        self.post = nn.ModuleList(PostFusion(c, options) for c in channels)

    def forward(self, blocks: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        out = []
        for i, row in enumerate(self.paths):
            # m_ij folds into each path's last GroupNorm, m_ii into the add: one pass per term.
            y = None
            for j, path in enumerate(row):
                m = self.coefficients[i][j]
                if m != 0.0 and j != i:
                    term = path(blocks[j], scale=m)
                    y = term if y is None else y + term
            m_ii = self.coefficients[i][i]
            y = blocks[i] * m_ii if y is None else torch.add(y, blocks[i], alpha=m_ii)
            out.append(self.post[i](y, inplace=True))
        return out

    def path_bounds(self, bound=None) -> List[List[object]]:
        """L_ij = m_ij Lip(F_ij) (m_ii on the diagonal; None where m_ij = 0, i.e. no path); ``bound``: the
        :class:`~lmdeq.models.lipschitz.BoundContext` of an evaluation (default: a fresh one)."""
        bound = BoundContext(self) if bound is None else bound
        n = len(self.paths)
        bounds = [[None] * n for _ in range(n)]
        for i, row in enumerate(self.paths):
            for j, path in enumerate(row):
                m = self.coefficients[i][j]
                if m != 0.0:
                    bounds[i][j] = m if i == j else m * bound(path)
        return bounds

    def post_bounds(self, bound=None) -> List[object]:
        """P_i = Lip(post_i)."""
        bound = BoundContext(self) if bound is None else bound
        return [bound(p) for p in self.post]

    def lipschitz(self):
        """||diag(P) L||_2 (see :func:`_multiscale_fusion`)."""
        return _multiscale_fusion(self, BoundContext(self))


@register_lipschitz_rule(DownsamplePath)
def _downsample_path(m: DownsamplePath, bound):
    """prod_t (c_t g_t) * s^(levels - 1): a chain of (conv, GN) pairs with the activation between them."""
    value = 1.0
    for conv, norm in zip(m.convs, m.norms):
        value = value * bound(conv) * bound(norm)
    for act in m.acts:
        value = value * bound(act)
    return value


@register_lipschitz_rule(UpsamplePath)
def _upsample_path(m: UpsamplePath, bound):
    """c g 2^levels: conv, GN, then nearest upsampling by k = 2^levels (each value copied k^2 times: norm k)."""
    return bound(m.conv) * bound(m.norm) * 2.0 ** m.levels


@register_lipschitz_rule(PostFusion)
def _post_fusion(m: PostFusion, bound):
    """s c g: activation, conv, GroupNorm."""
    return bound(m.act) * bound(m.conv) * bound(m.norm)


def norm_of_bound_matrix(entries: List[object], n: int) -> float:
    """||E||_2 of the n x n non-negative matrix with these row-major entries (python floats or 0-d tensors),
    computed in float64 on the CPU (one device read-back); inf when an entry is not finite."""
    tensors = [e for e in entries if torch.is_tensor(e)]
    device = tensors[0].device if tensors else "cpu"
    flat = torch.stack([torch.as_tensor(e, dtype=torch.float64, device=device).detach() for e in entries])
    matrix = flat.cpu().reshape(n, n)
    if not torch.isfinite(matrix).all():
        return float("inf")
    return float(torch.linalg.matrix_norm(matrix, ord=2))


@register_lipschitz_rule(MultiscaleFusion)
def _multiscale_fusion(m: MultiscaleFusion, bound):
    """(b_0, ..., b_{n-1}) -> (post_i(sum_j m_ij F_ij(b_j)))_i in the l2 norm of the concatenation: with L_ij =
    m_ij Lip(F_ij) and P_i = Lip(post_i), ||f_i(b) - f_i(b')|| <= P_i sum_j L_ij ||b_j - b'_j||, so the bound is
    ||diag(P) L||_2 (the norm of a non-negative matrix is monotone in its entries)."""
    n = len(m.paths)
    paths, post = m.path_bounds(bound), m.post_bounds(bound)
    return norm_of_bound_matrix([0.0 if paths[i][j] is None else post[i] * paths[i][j] for i in range(n)
                                 for j in range(n)], n)
