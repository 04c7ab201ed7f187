"""Contractions with known constants for solver tests.

``linear_contraction``: f(z) = L * Q z + b per sample, Q orthogonal, so ||J_f|| = L exactly and the
Picard residuals obey r_k = L^k r_0 with equality — the sharpest test of a-priori iteration counts.
``tanh_contraction``: f(z) = tanh(W z + x) with ||W||_2 = L, a nonlinear L-contraction.
"""
import math

import torch


def _orthogonal(n, generator, dtype):
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


def linear_contraction(shape, L, dtype=torch.float64, seed=0):
    """(f, z0) with z0 = 0 for a tensor state of ``shape`` (batch first)."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape[1:])
    Q = _orthogonal(n, g, dtype)
    b = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)

    def f(z):
        return (L * z.reshape(shape[0], n) @ Q.T).reshape(shape) + b

    return f, torch.zeros(shape, dtype=dtype)


def tanh_contraction(n, batch, L, dtype=torch.float64, seed=0):
    """(f, z0, W, x) for f(z) = tanh(z W^T + x) with ||W||_2 = L."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=torch.float64)
    W = (L * W / torch.linalg.matrix_norm(W, 2)).to(dtype)
    x = torch.randn(batch, n, generator=g, dtype=torch.float64).to(dtype)

    def f(z):
        return torch.tanh(z @ W.T + x)

    return f, torch.zeros(batch, n, dtype=dtype), W, x


def split_state(f_flat, sizes, shapes):
    """A list-state version of a flat (B, n) map: parts of the given shapes."""

    def f(zs):
        flat = torch.cat([z.reshape(z.shape[0], -1) for z in zs], dim=1)
        out = f_flat(flat)
        return [o.reshape(s) for o, s in zip(out.split(sizes, dim=1), shapes)]

    return f
