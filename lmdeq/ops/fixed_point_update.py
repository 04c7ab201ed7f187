"""The fused fixed-point update, op 1 (single tensor and list state).

    z_next = (1 - tau) z + tau f(z),   res_norm[b] = ||f(z)_b - z_b||_2,   fz_norm[b] = ||f(z)_b||_2

in one pass that reads z and f(z) once and writes z_next once; for a list state (MDEQ branches) one
launch covers all tensors and the norms run over the whole state. Norms are fp32 (fp64 for fp64
inputs), reduced in a fixed order. Differentiable: the backward pass is the closed form
    dz  = (1 - tau) g - g_res (fz - z) / res
    dfz = tau g + g_res (fz - z) / res + g_fzn fz / fzn        (0 where a norm is 0).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError
from ..numerics import acc_dtype
from . import backends, reference, validation
from .dispatch import eager_fast_path
from .layout import sample_rows, with_layout_of

__all__ = ["fixed_point_update", "fixed_point_update_multi"]

_SINGLE = "lmdeq.ops.fixed_point_update"
_MULTI = "lmdeq.ops.fixed_point_update_multi"


def _check(op: str, zs: Sequence[Tensor], fzs: Sequence[Tensor], multi: bool) -> None:
    """Cheap all-good test of the arguments; on any failure, _explain raises the precise error."""
    if len(zs) == len(fzs) and zs and zs[0].dim() > 0 and zs[0].dtype in validation.FLOAT_DTYPES:
        dtype, device, batch = zs[0].dtype, zs[0].device, zs[0].shape[0]
        if all(z.dtype == dtype and fz.dtype == dtype and z.device == device and fz.device == device
               and z.shape == fz.shape and z.dim() > 0 and z.shape[0] == batch for z, fz in zip(zs, fzs)):
            return
    _explain(op, zs, fzs, multi)


def _explain(op: str, zs: Sequence[Tensor], fzs: Sequence[Tensor], multi: bool) -> None:
    validation.same_length(op, zs=zs, fzs=fzs)
    if not zs:
        raise ConfigError(f"{op}: argument 'zs' must hold at least one tensor")
    for i, (z, fz) in enumerate(zip(zs, fzs)):
        zname, fname = (f"zs[{i}]", f"fzs[{i}]") if multi else ("z", "fz")
        validation.float_tensor(op, zname, z)
        validation.float_tensor(op, fname, fz)
        if z.dim() < 1:
            raise ConfigError(f"{op}: argument '{zname}' must have a batch dimension, got a 0-d tensor")
        validation.same_dtype_device(op, fname, fz, zname, z)
        validation.same_shape(op, fname, fz, zname, z)
        if i > 0:
            validation.same_dtype_device(op, zname, z, "zs[0]", zs[0])
            if z.shape[0] != zs[0].shape[0]:
                raise ConfigError(f"{op}: argument '{zname}' has batch size {z.shape[0]} but 'zs[0]' has "
                                 f"{zs[0].shape[0]}")
    raise AssertionError(f"{op}: _check rejected arguments that _explain accepts")


def _run(zs: List[Tensor], fzs: List[Tensor], tau: float) -> Tuple[List[Tensor], Tensor, Tensor]:
    backend = backends.choose(zs[0].device)
    if backend in ("cpu", "cuda"):  # the C++ op lays its inputs out itself, as sample_rows does
        outs, res, fzn = torch.ops.lmdeq_C.fixed_point_update_multi(zs, fzs, tau)
        return list(outs), res, fzn
    pairs = [sample_rows(z, fz) for z, fz in zip(zs, fzs)]
    zs, fzs = [p[0] for p in pairs], [p[1] for p in pairs]
    if backend == "triton":
        return backends.run_triton("fixed_point_update_multi", zs[0].device, zs, fzs, tau)
    outs, res, fzn = reference.fixed_point_update_multi(zs, fzs, tau)
    return [with_layout_of(o, z) for o, z in zip(outs, zs)], res, fzn


def _fake(zs: List[Tensor], fzs: List[Tensor]) -> Tuple[List[Tensor], Tensor, Tensor]:
    outs = [torch.empty_like(sample_rows(z, fz)[0]) for z, fz in zip(zs, fzs)]
    acc = acc_dtype(zs[0].dtype)
    B = zs[0].shape[0]
    return outs, zs[0].new_empty(B, dtype=acc), zs[0].new_empty(B, dtype=acc)


@torch.library.custom_op("lmdeq::fixed_point_update", mutates_args=())
def _update_op(z: Tensor, fz: Tensor, tau: float) -> Tuple[Tensor, Tensor, Tensor]:
    _check(_SINGLE, [z], [fz], multi=False)
    outs, res, fzn = _run([z], [fz], tau)
    return outs[0], res, fzn


@_update_op.register_fake
def _(z, fz, tau):
    _check(_SINGLE, [z], [fz], multi=False)
    outs, res, fzn = _fake([z], [fz])
    return outs[0], res, fzn


@torch.library.custom_op("lmdeq::fixed_point_update_multi", mutates_args=())
def _update_multi_op(zs: List[Tensor], fzs: List[Tensor], tau: float) -> Tuple[List[Tensor], Tensor, Tensor]:
    _check(_MULTI, zs, fzs, multi=True)
    return _run(list(zs), list(fzs), tau)


@_update_multi_op.register_fake
def _(zs, fzs, tau):
    _check(_MULTI, zs, fzs, multi=True)
    return _fake(list(zs), list(fzs))


# ---- autograd ---------------------------------------------------------------------------------------

def _grads(zs, fzs, res, fzn, tau, g_outs, g_res, g_fzn):
    """Closed-form input gradients of the update over a list state (see the module docstring)."""
    acc = res.dtype
    B = res.shape[0]
    inv_res = torch.where(res > 0, 1.0 / res, torch.zeros_like(res)) * (0.0 if g_res is None else g_res.to(acc))
    inv_fzn = torch.where(fzn > 0, 1.0 / fzn, torch.zeros_like(fzn)) * (0.0 if g_fzn is None else g_fzn.to(acc))
    dzs, dfzs = [], []
    for z, fz, g in zip(zs, fzs, g_outs):
        shape = (B,) + (1,) * (z.dim() - 1)
        za, fa = z.to(acc), fz.to(acc)
        d = (fa - za) * inv_res.view(shape)
        dz, dfz = -d, d + fa * inv_fzn.view(shape)
        if g is not None:
            ga = g.to(acc)
            dz = dz + (1.0 - tau) * ga
            dfz = dfz + tau * ga
        dzs.append(dz.to(z.dtype))
        dfzs.append(dfz.to(fz.dtype))
    return dzs, dfzs


def _setup_single(ctx, inputs, output):
    z, fz, tau = inputs
    _, res, fzn = output
    ctx.save_for_backward(z, fz, res, fzn)
    ctx.tau = tau


def _backward_single(ctx, g_out, g_res, g_fzn):
    z, fz, res, fzn = ctx.saved_tensors
    dzs, dfzs = _grads([z], [fz], res, fzn, ctx.tau, [g_out], g_res, g_fzn)
    return dzs[0], dfzs[0], None


def _setup_multi(ctx, inputs, output):
    zs, fzs, tau = inputs
    _, res, fzn = output
    ctx.save_for_backward(*zs, *fzs, res, fzn)
    ctx.count = len(zs)
    ctx.tau = tau


def _backward_multi(ctx, g_outs, g_res, g_fzn):
    saved = ctx.saved_tensors
    n = ctx.count
    zs, fzs, (res, fzn) = saved[:n], saved[n:2 * n], saved[2 * n:]
    g_outs = list(g_outs) if g_outs is not None else [None] * n
    dzs, dfzs = _grads(zs, fzs, res, fzn, ctx.tau, g_outs, g_res, g_fzn)
    return dzs, dfzs, None


_update_op.register_autograd(_backward_single, setup_context=_setup_single)
_update_multi_op.register_autograd(_backward_multi, setup_context=_setup_multi)


# ---- public API -------------------------------------------------------------------------------------

def fixed_point_update(z: Tensor, fz: Tensor, tau: float) -> Tuple[Tensor, Tensor, Tensor]:
    """One damped fixed-point step with per-sample residual norms, fused into one pass.

    Args:
        z, fz: the iterate and f(z), same shape (B, ...), dtype (fp32, fp64, fp16, bf16) and device.
        tau: damping; z_next = (1 - tau) z + tau fz.
    Returns:
        (z_next like z, res_norm (B,), fz_norm (B,)); norms in fp32 (fp64 for fp64 inputs).
    """
    validation.are_tensors(_SINGLE, z=z, fz=fz)
    tau = validation.real_number(_SINGLE, "tau", tau)
    if eager_fast_path(z, fz):
        _check(_SINGLE, [z], [fz], multi=False)
        outs, res, fzn = _run([z], [fz], tau)
        return outs[0], res, fzn
    return _update_op(z, fz, tau)


def fixed_point_update_multi(zs: Sequence[Tensor], fzs: Sequence[Tensor], tau: float
                             ) -> Tuple[List[Tensor], Tensor, Tensor]:
    """:func:`fixed_point_update` over a list state (e.g. MDEQ branches of mixed shapes) in one launch.

    All tensors share dtype, device and batch size B; the norms run over the whole state:
    res_norm[b]^2 = sum_i ||fzs[i]_b - zs[i]_b||^2. Returns (list of z_next, res_norm, fz_norm).
    """
    zs = validation.tensor_list(_MULTI, "zs", zs, allow_empty=False)
    fzs = validation.tensor_list(_MULTI, "fzs", fzs, allow_empty=False)
    tau = validation.real_number(_MULTI, "tau", tau)
    if eager_fast_path(*zs, *fzs):
        _check(_MULTI, zs, fzs, multi=True)
        return _run(zs, fzs, tau)
    outs, res, fzn = _update_multi_op(zs, fzs, tau)
    return list(outs), res, fzn
