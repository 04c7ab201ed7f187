"""The MDEQ cell f(z; x): per-branch residual blocks, then multiscale fusion and post-fusion.

State z = (z_0, ..., z_{n-1}), z_i of shape (B, C_i, r_i, r_i) with r_i = r_0 / 2^i; the injection
(from the input x) enters the highest-resolution branch only:

    b_i = block_i(z_i, injection if i == 0),    f_i(z) = post_i(sum_j m_ij F_ij(b_j)).

Certified bound (norm: the l2 norm of the concatenated state, ||z||^2 = sum_i ||z_i||^2, per sample).
With B_j = Lip(block_j), L_ij = m_ij Lip(F_ij) (L_ii = m_ii) and P_i = Lip(post_i),

    ||f_i(z) - f_i(z')|| <= P_i sum_j L_ij B_j ||z_j - z'_j||,

so for the n x n non-negative matrix K = diag(P) L diag(B)

    ||f(z) - f(z')|| <= ||K||_2 ||z - z'||,        lipschitz_bound() = ||K||_2,

which is never larger than max_i P_i * ||L||_2 * max_j B_j (the plain product of per-layer bounds).
Each factor comes from the layer's own ``lipschitz()`` (conv norm bounds min(cap, (1+margin) sigma_hat),
|gamma| caps, s, alpha, beta, fusion weights, upsampling factors, and dropout's 1/(1-p) in training
mode), so the bound holds for the current mode and dropout mask, given the conv-norm estimates.

Zero state: :meth:`MDEQCell.zero_state` makes the initial iterate z = 0 and remembers it; f evaluated at
exactly those tensors (same storage, never written since, not requiring grad) runs each block's
``forward_at_zero``, whose convolutions of the zero state are skipped and whose sample-independent part
is computed on one sample (residual_block.py): the same values as the full evaluation.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import List, Sequence

import torch
from torch import nn

from torch.nn import functional as F

from .capped import CappedConv2d
from .cell_options import CellOptions
from .composed import ChainNorm, ComposedNorm, linear_part
from .constraints import frozen_weights
from .fusion import DownsamplePath, MultiscaleFusion, UpsamplePath, norm_of_bound_matrix
from .lipschitz import BoundContext, lipschitz_bound, register_lipschitz_rule
from .normalization import MeanOnlyGroupNorm
from .residual_block import ResidualBlock

__all__ = ["MDEQCell"]


class MDEQCell(nn.Module):
    takes_input = True   # f(z, injection) (lmdeq.models.blocks)

    def __init__(self, channels: Sequence[int], resolution: int, options: CellOptions):
        super().__init__()
        self.channels = list(channels)
        self.resolutions = [resolution // 2 ** i for i in range(len(channels))]
        self.options = options
        self.blocks = nn.ModuleList(ResidualBlock(c, r, options) for c, r in zip(self.channels, self.resolutions))
        self.fusion = MultiscaleFusion(self.channels, self.resolutions, options)
        if options.lipschitz and options.bound == "composed":
            self.composed = composed_norms(self, options.sigma_margin)

    def state_shapes(self, batch: int):
        """Shapes of the state's branches: (B, C_i, r_i, r_i)."""
        return [(batch, c, r, r) for c, r in zip(self.channels, self.resolutions)]

    def zero_state(self, batch: int, dtype=torch.float32, device=None,
                   memory_format=torch.contiguous_format) -> List[torch.Tensor]:
        """Zeros of :meth:`state_shapes` (the initial iterate); the cell keeps them (the latest call's) so
        that f at exactly these tensors takes the zero-state path (see the module docstring)."""
        zeros = [torch.zeros(shape, dtype=dtype, device=device).contiguous(memory_format=memory_format)
                 for shape in self.state_shapes(batch)]
        self._zero_state = (zeros, [t._version for t in zeros])
        return list(zeros)

    def is_zero_state(self, z: Sequence[torch.Tensor]) -> bool:
        """Whether ``z`` is the latest :meth:`zero_state` (or views of it with the same shapes and strides),
        unmodified and not requiring grad."""
        kept = getattr(self, "_zero_state", None)
        if kept is None or len(z) != len(kept[0]):
            return False
        try:
            return all(isinstance(zi, torch.Tensor) and not zi.requires_grad and zi.data_ptr() == ref.data_ptr()
                       and zi.shape == ref.shape and zi.stride() == ref.stride() and zi.dtype == ref.dtype
                       and zi.device == ref.device and ref._version == version
                       for zi, ref, version in zip(z, *kept))
        except RuntimeError:   # tensors without storage (e.g. under function transforms)
            return False

    def reset_dropout(self, batch: int, device, dtype) -> None:
        """Draw this forward pass's dropout masks (one per block)."""
        for block, c in zip(self.blocks, self.channels):
            block.drop.reset_mask(batch, c, device, dtype)

    def dropout_masks(self) -> List[torch.Tensor]:
        """The masks of this forward pass's active dropout layers (block order)."""
        return [blk.drop.mask for blk in self.blocks if blk.drop.mask is not None]

    @contextmanager
    def swapped_dropout_masks(self, masks: Sequence[torch.Tensor]):
        """Within the block the active dropout layers use ``masks`` (same order as :meth:`dropout_masks`)."""
        active = [blk.drop for blk in self.blocks if blk.drop.mask is not None]
        if len(masks) != len(active):
            raise ValueError(f"expected {len(active)} dropout masks, got {len(masks)}")
        saved = [d.mask for d in active]
        try:
            for d, m in zip(active, masks):
                d.mask = m
            yield
        finally:
            for d, m in zip(active, saved):
                d.mask = m

    def forward(self, z: Sequence[torch.Tensor], injection: torch.Tensor) -> List[torch.Tensor]:
        block = (lambda blk: blk.forward_at_zero) if self.is_zero_state(z) else (lambda blk: blk)
        b = [block(blk)(zi, injection if i == 0 else None) for i, (blk, zi) in enumerate(zip(self.blocks, z))]
        return self.fusion(b)

    # -- constraints and the certified bound -----------------------------------------------------------
    def convs(self) -> List[CappedConv2d]:
        return [m for m in self.modules() if isinstance(m, CappedConv2d)]

    @contextmanager
    def frozen_weights(self):
        """Within the block every conv uses its effective weight computed once on entry (see
        CappedConv2d.frozen) and every mean-only GroupNorm its scaled gamma and beta computed once
        (MeanOnlyGroupNorm.frozen); gradients still reach the raw parameters through that one computation
        (:func:`lmdeq.models.constraints.frozen_weights`)."""
        with frozen_weights(self):
            yield

    def gamma_clipped_norms(self) -> List[MeanOnlyGroupNorm]:
        return [m for m in self.modules() if isinstance(m, MeanOnlyGroupNorm) and m.weight is not None]

    def bound_entries(self, bound=None) -> List[object]:
        """The entries of K = diag(P) L diag(B), row-major (python floats or 0-d tensors)."""
        bound = BoundContext(self) if bound is None else bound
        n = len(self.channels)
        block = [bound(blk) for blk in self.blocks]
        paths = self.fusion.path_bounds(bound)
        post = self.fusion.post_bounds(bound)
        return [0.0 if paths[i][j] is None else post[i] * paths[i][j] * block[j] for i in range(n) for j in range(n)]

    def bound_matrix(self) -> torch.Tensor:
        """K = diag(P) L diag(B) as a float64 CPU tensor (one device read-back)."""
        n = len(self.channels)
        entries = self.bound_entries()
        tensors = [e for e in entries if torch.is_tensor(e)]
        device = tensors[0].device if tensors else "cpu"
        flat = torch.stack([torch.as_tensor(e, dtype=torch.float64, device=device).detach() for e in entries])
        return flat.cpu().reshape(n, n)

    def lipschitz_bound(self) -> float:
        """||K||_2, an upper bound on Lip(f) in the l2 norm of the concatenated state (inf if unbounded):
        :func:`lmdeq.models.lipschitz_bound` of the cell (with ``bound='composed'``, :func:`composed_cell_bound`)."""
        return lipschitz_bound(self, allow_unbounded=True)

    def layerwise_bound(self) -> float:
        """||K||_2 from the per-layer bounds alone (what ``bound='layerwise'`` certifies), whatever the mode."""
        return norm_of_bound_matrix(self.bound_entries(), len(self.channels))


class FusionNorm(ComposedNorm):
    """The linear part M of a cell's fusion with each branch's last GroupNorm folded in (two branches: every
    path is one linear (conv, GroupNorm[, upsampling]) step): u -> (sum_j m_ij A_ij G3_j u_j)_i with A_ii = I."""

    def __init__(self, cell: MDEQCell, margin: float):
        super().__init__()
        self.__dict__["cell"] = cell
        paths = [p for row in cell.fusion.paths for p in row if not isinstance(p, nn.Identity)]
        if any(getattr(p, "levels", 1) != 1 or isinstance(p, DownsamplePath) and len(p.convs) != 1 for p in paths):
            raise ValueError("FusionNorm: every fusion path must be one linear step (a two-branch cell)")
        members = [blk.gn3 for blk in cell.blocks] + [m for p in paths for m in p.modules()
                                                      if isinstance(m, (CappedConv2d, MeanOnlyGroupNorm))]
        shapes = [(1, c, r, r) for c, r in zip(cell.channels, cell.resolutions)]
        self._init_estimate(shapes, members, margin)

    def apply(self, us):
        cell = self.cell
        b = [linear_part(blk.gn3, u) for blk, u in zip(cell.blocks, us)]
        out = []
        for i, row in enumerate(cell.fusion.paths):
            y = b[i] * cell.fusion.coefficients[i][i]
            for j, path in enumerate(row):
                m = cell.fusion.coefficients[i][j]
                if j == i or m == 0.0:
                    continue
                if isinstance(path, UpsamplePath):
                    t = linear_part(path.norm, linear_part(path.conv, b[j]))
                    t = F.interpolate(t, scale_factor=2 ** path.levels, mode="nearest")
                else:
                    t = linear_part(path.norms[0], linear_part(path.convs[0], b[j]))
                y = y + m * t
            out.append(y)
        return out


def composed_norms(cell: MDEQCell, margin: float) -> nn.ModuleDict:
    """The composed norms of a cell (``bound='composed'``): per block j, conv1 then gn1 (``in{j}``) and conv2 then
    gn2 (``out{j}``, used while dropout is inactive); for a two-branch cell, the fusion (``fusion``)."""
    norms = nn.ModuleDict()
    for j, (blk, c, r) in enumerate(zip(cell.blocks, cell.channels, cell.resolutions)):
        norms[f"in{j}"] = ChainNorm([blk.conv1, blk.gn1], (1, c, r, r), margin)
        norms[f"out{j}"] = ChainNorm([blk.conv2, blk.gn2], (1, blk.conv2.in_channels, r, r), margin)
    if len(cell.channels) == 2:
        norms["fusion"] = FusionNorm(cell, margin)
    return norms


def _fresh(norms, name):
    """The composed norm ``name`` when it holds a current estimate, else None."""
    norm = norms[name] if name in norms else None
    return norm if norm is not None and not norm.estimate_is_stale() else None


def _min(a, b):
    """min of two bounds (python floats or 0-d tensors), a 0-d tensor on b's device when b is one."""
    if not torch.is_tensor(b):
        return min(a, b) if not torch.is_tensor(a) else torch.clamp_max(a, b)
    return torch.minimum(torch.as_tensor(a, dtype=b.dtype, device=b.device), b)


def composed_cell_bound(cell: MDEQCell, bound) -> float:
    """The cell's bound with its composed norms (``bound='composed'``), never above the layerwise ||K||_2.

    Per block j, the chain z_j -> u_j = s relu(a_res z_j + a_f v_j(z_j)) (u_j: the block's output before its last
    GroupNorm gn3, whose linear part G3_j the fusion bound takes) is bounded by Bt_j = s (a_res + a_f inner_j) with
    inner_j = min(c2 g2, ||G2 C2||) s min(c1 g1, ||G1 C1||) (the composed norms, each (1 + margin) sigma_hat; the
    second only while dropout is inactive, since a dropout mask sits between conv2 and gn2 in training). Then
    (1) K' = diag(P) L diag(g3 Bt) as in the layerwise bound, ||K'||_2 (every entry is a product of per-branch
    bounds: module docstring), and (2) for a two-branch cell, y = M u + c with M the fusion's linear part (G3
    folded in, FusionNorm) and f_i = post_i(y_i): ||f(z) - f(z')|| <= max_i P_i ||M|| ||u - u'|| <= max_i P_i ||M||
    max_j Bt_j ||z - z'||. The bound is min((1), (2))."""
    norms = cell.composed
    n = len(cell.channels)
    bt, full = [], []
    for j, blk in enumerate(cell.blocks):
        c1g1 = bound(blk.conv1) * bound(blk.gn1)
        chain = _fresh(norms, f"in{j}")
        if chain is not None:
            c1g1 = _min(c1g1, chain.bound())
        chain = _fresh(norms, f"out{j}")
        if blk.drop.active() or chain is None:
            c2g2 = bound(blk.gn2) * bound(blk.drop) * bound(blk.conv2)
        else:
            c2g2 = _min(bound(blk.conv2) * bound(blk.gn2), chain.bound())
        b = bound(blk.act3) * (blk.a_res + blk.a_f * (c2g2 * bound(blk.act1) * c1g1))
        bt.append(b)
        full.append(bound(blk.gn3) * b)
    paths, post = cell.fusion.path_bounds(bound), cell.fusion.post_bounds(bound)
    entries = [0.0 if paths[i][j] is None else post[i] * paths[i][j] * full[j] for i in range(n) for j in range(n)]
    layered = norm_of_bound_matrix(entries, n)
    fusion = _fresh(norms, "fusion")
    if fusion is None:
        return layered
    parts = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=fusion.sigma.device).detach()
                         for v in post + bt + [fusion.bound()]]).cpu()
    whole = float(parts[:n].max() * parts[-1] * parts[n:2 * n].max())
    return min(layered, whole)


@register_lipschitz_rule(MDEQCell)
def _mdeq_cell(cell: MDEQCell, bound):
    """||K||_2 with K = diag(P) L diag(B) (module docstring): per-branch block bounds B_j, fusion path bounds
    L_ij = m_ij Lip(F_ij) and post-fusion bounds P_i; with ``bound='composed'`` (outside the worst-case evaluation
    of a budget) the tighter :func:`composed_cell_bound`."""
    if hasattr(cell, "composed") and not bound.worst_case and not bound.leaf_values:
        return composed_cell_bound(cell, bound)
    return norm_of_bound_matrix(cell.bound_entries(bound), len(cell.channels))
