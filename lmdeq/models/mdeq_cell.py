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

from contextlib import ExitStack, contextmanager
from typing import List, Sequence

import torch
from torch import nn

from .cell_options import CellOptions
from .deq_conv import DEQConv2d
from .fusion import MultiscaleFusion
from .normalization import MeanOnlyGroupNorm
from .residual_block import ResidualBlock

__all__ = ["MDEQCell"]


class MDEQCell(nn.Module):
    def __init__(self, channels: Sequence[int], resolution: int, options: CellOptions):
        super().__init__()
        self.channels = list(channels)
        self.resolutions = [resolution // 2 ** i for i in range(len(channels))]
        self.options = options
        self.blocks = nn.ModuleList(ResidualBlock(c, r, options) for c, r in zip(self.channels, self.resolutions))
        self.fusion = MultiscaleFusion(self.channels, self.resolutions, options)

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
    def convs(self) -> List[DEQConv2d]:
        return [m for m in self.modules() if isinstance(m, DEQConv2d)]

    @contextmanager
    def frozen_weights(self):
        """Within the block every conv uses its effective weight computed once on entry (see
        DEQConv2d.frozen) and every mean-only GroupNorm its scaled gamma and beta computed once
        (MeanOnlyGroupNorm.frozen); gradients still reach the raw parameters through that one computation."""
        with ExitStack() as stack:
            for module in self.modules():
                if isinstance(module, (DEQConv2d, MeanOnlyGroupNorm)):
                    stack.enter_context(module.frozen())
            yield

    def gamma_clipped_norms(self) -> List[MeanOnlyGroupNorm]:
        return [m for m in self.modules() if isinstance(m, MeanOnlyGroupNorm) and m.weight is not None]

    def bound_matrix(self) -> torch.Tensor:
        """K = diag(P) L diag(B) as a float64 CPU tensor (one device read-back)."""
        n = len(self.channels)
        block = [blk.lipschitz() for blk in self.blocks]
        paths = self.fusion.path_bounds()
        post = self.fusion.post_bounds()
        entries = []
        for i in range(n):
            for j in range(n):
                entries.append(0.0 if paths[i][j] is None else post[i] * paths[i][j] * block[j])
        device = next(self.parameters()).device
        flat = torch.stack([torch.as_tensor(e, dtype=torch.float64, device=device).detach() for e in entries])
        return flat.cpu().reshape(n, n)

    def lipschitz_bound(self) -> float:
        """||K||_2, an upper bound on Lip(f) in the l2 norm of the concatenated state (inf if unbounded)."""
        k = self.bound_matrix()
        if not torch.isfinite(k).all():
            return float("inf")
        return float(torch.linalg.matrix_norm(k, ord=2))
