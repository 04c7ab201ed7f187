"""Plain-PyTorch reference implementations of lmdeq's ops: the source of truth.

Every kernel (Triton in ``lmdeq/kernels/``, C++/CUDA in ``csrc/``) is tested against these functions.
They accept any floating dtype; reductions accumulate in float32 (float64 for float64 inputs), the rule of
:func:`lmdeq.numerics.acc_dtype` (re-exported here with ``conv_transpose_output_padding``).
Norms are per sample: a sample is everything but the leading batch dimension.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..numerics import NORM_EPS, acc_dtype, conv_transpose_output_padding

__all__ = ["acc_dtype", "conv_transpose_output_padding", "fixed_point_update", "fixed_point_update_multi",
           "anderson_gram_row", "anderson_mix", "power_iteration_matrices", "conv_power_iteration"]


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as (B, n): one row per sample (also for B = 0)."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def fixed_point_update(z: torch.Tensor, fz: torch.Tensor, tau: float):
    """Damped fixed-point (Krasnoselskii-Mann) step with per-sample residual norms.

    z_next = (1 - tau) z + tau f(z);  res_norm[b] = ||f(z)_b - z_b||_2;  fz_norm[b] = ||f(z)_b||_2.
    Returns (z_next in z's dtype, res_norm (B,), fz_norm (B,)) with norms in the accumulation dtype.
    """
    acc = acc_dtype(z.dtype)
    za, fa = z.to(acc), fz.to(acc)
    z_next = ((1.0 - tau) * za + tau * fa).to(z.dtype)
    res = _rows(fa - za).norm(dim=1)
    fzn = _rows(fa).norm(dim=1)
    return z_next, res, fzn


def fixed_point_update_multi(zs, fzs, tau: float):
    """Multi-tensor form of :func:`fixed_point_update` for a list state (e.g. MDEQ branches).

    Norms run over the whole multi-resolution state: res_norm[b]^2 = sum_i ||f_i(z)_b - z_i,b||^2.
    Returns (list of z_next, res_norm (B,), fz_norm (B,)).
    """
    outs, res2, fz2 = [], 0.0, 0.0
    for z, fz in zip(zs, fzs):
        zn, r, f = fixed_point_update(z, fz, tau)
        outs.append(zn)
        res2 = res2 + r.square()
        fz2 = fz2 + f.square()
    return outs, res2.sqrt(), fz2.sqrt()


def anderson_gram_row(X: torch.Tensor, Fh: torch.Tensor, k: int) -> torch.Tensor:
    """Row k of the Gram matrix of Anderson residuals G_j = F_j - X_j.

    X, Fh: history buffers (B, m, n). Returns H[b, j] = <G_k, G_j> for j < m, shape (B, m),
    in the accumulation dtype.
    """
    acc = acc_dtype(X.dtype)
    G = Fh.to(acc) - X.to(acc)
    return torch.einsum("bjn,bn->bj", G, G[:, k])


def anderson_mix(X: torch.Tensor, Fh: torch.Tensor, alpha: torch.Tensor, tau: float) -> torch.Tensor:
    """Anderson mixing x_next[b] = sum_i alpha[b, i] ((1 - tau) X[b, i] + tau F[b, i]).

    X, Fh: (B, m, n); alpha: (B, m). Returns (B, n) in X's dtype.
    """
    acc = acc_dtype(X.dtype)
    mixed = (1.0 - tau) * X.to(acc) + tau * Fh.to(acc)
    return torch.einsum("bm,bmn->bn", alpha.to(acc), mixed).to(X.dtype)


def power_iteration_matrices(weights, us, n_iter: int = 1):
    """Power iteration on a list of matrices W_l (out_l, in_l), persistent left vectors u_l (out_l,).

    Each iteration: v = W^T u / ||W^T u||, u = W v / ||W v||. Returns (sigmas (L,), new us) with
    sigma_l = u_l^T W_l v_l, the Rayleigh estimate of the largest singular value.
    """
    sigmas, new_us = [], []
    for W, u in zip(weights, us):
        W2 = W.reshape(W.shape[0], -1)
        for _ in range(n_iter):
            v = F.normalize(W2.t() @ u, dim=0, eps=NORM_EPS)
            u = F.normalize(W2 @ v, dim=0, eps=NORM_EPS)
        sigmas.append(torch.dot(u, W2 @ v))
        new_us.append(u)
    return torch.stack(sigmas), new_us


def conv_power_iteration(weights, vs, strides, paddings, n_iter: int = 1):
    """Power iteration on convolution operators A_l x = conv2d(x, W_l, stride_l, padding_l).

    vs[l] has the shape of one input (1, C_in, H, W) of layer l (persistent, warm-started).
    Each iteration: v <- A^T A v / ||A^T A v|| (A^T is conv_transpose2d with the output padding that
    restores v's size). Returns (sigmas (L,), new vs) with sigma_l = ||A_l v_l|| for unit v_l, a lower
    estimate of the operator norm ||A_l||_2 that increases to it as iterations accumulate.
    """
    sigmas, new_vs = [], []
    for W, v, s, p in zip(weights, vs, strides, paddings):
        v = v / v.norm().clamp_min(NORM_EPS)
        for _ in range(n_iter):
            u = F.conv2d(v, W, stride=s, padding=p)
            out_pad = conv_transpose_output_padding(v.shape[-2:], u.shape[-2:], W.shape[-2:], s, p)
            w = F.conv_transpose2d(u, W, stride=s, padding=p, output_padding=out_pad)
            v = w / w.norm().clamp_min(NORM_EPS)
        sigmas.append(F.conv2d(v, W, stride=s, padding=p).norm())
        new_vs.append(v)
    return torch.stack(sigmas), new_vs

