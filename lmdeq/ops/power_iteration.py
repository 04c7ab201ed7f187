"""Power iteration for spectral norms, op 3, every constrained layer of a model in one op call.

(a) ``power_iteration_matrices(weights, us, n_iter)``: matrices W_l = weights[l].reshape(out_l, -1)
    with persistent left vectors u_l. Per iteration t = W^T u, v = t / ||t||, w = W v, u = w / ||w||;
    sigma_l = u^T W v. Fused kernels batch all layers: 2 launches per iteration + 1.
(b) ``conv_power_iteration(weights, vs, strides, paddings, n_iter)``: convolution operators
    A_l x = conv2d(x, W_l, stride_l, padding_l) on persistent inputs v_l (1, C_in, H, W):
    v <- A^T A v / ||A^T A v||; sigma_l = ||A_l v_l|| (a lower estimate of ||A_l||_2). The compiled
    op runs all layers in one call, normalising every layer in one multi-tensor kernel per iteration;
    on CUDA the whole op (all layers and iterations) is captured once per signature and replayed as
    one CUDA graph (see lmdeq/cuda_graphs.py).

Both return (sigmas (L,) in the weights' dtype, new vectors) and run under no_grad (no autograd).
Vectors are computed in fp32 (fp64 for fp64 weights), with autocast off: a custom op has no autocast
kernel, so an enclosing ``torch.autocast`` would otherwise reach the convolutions inside (and a CUDA
graph captured under it would replay in bf16).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from .. import cuda_graphs
from ..errors import ConfigError
from . import backends, reference, validation
from .dispatch import eager_fast_path

__all__ = ["power_iteration_matrices", "conv_power_iteration"]

_MAT = "lmdeq.ops.power_iteration_matrices"
_CONV = "lmdeq.ops.conv_power_iteration"
_GRAPHS = cuda_graphs.GraphCache(max_graphs=8)


def _flat(sigmas: Tensor, vs: Sequence[Tensor]) -> List[Tensor]:
    return [sigmas, *vs]


def _check_layers(op: str, weights, vecs, vec_name: str) -> None:
    validation.same_length(op, weights=weights, **{vec_name: vecs})
    for i, (W, v) in enumerate(zip(weights, vecs)):
        wn, vn = f"weights[{i}]", f"{vec_name}[{i}]"
        validation.float_tensor(op, wn, W)
        validation.float_tensor(op, vn, v)
        validation.same_dtype_device(op, vn, v, wn, W)
        if i > 0:
            validation.same_dtype_device(op, wn, W, "weights[0]", weights[0])


def _check_matrices(weights, us, n_iter: int) -> None:
    _check_layers(_MAT, weights, us, "us")
    validation.integer(_MAT, "n_iter", n_iter, 1)
    for i, (W, u) in enumerate(zip(weights, us)):
        if W.dim() < 2:
            raise ConfigError(f"{_MAT}: argument 'weights[{i}]' must have at least 2 dims, got shape {tuple(W.shape)}")
        if tuple(u.shape) != (W.shape[0],):
            raise ConfigError(f"{_MAT}: argument 'us[{i}]' must have shape ({W.shape[0]},), got {tuple(u.shape)}")


def _check_convs(weights, vs, strides, paddings, n_iter: int) -> None:
    _check_layers(_CONV, weights, vs, "vs")
    validation.same_length(_CONV, weights=weights, strides=strides, paddings=paddings)
    validation.integer(_CONV, "n_iter", n_iter, 0)
    for i, (W, v, s, p) in enumerate(zip(weights, vs, strides, paddings)):
        validation.rank(_CONV, f"weights[{i}]", W, 4, "(C_out, C_in, kH, kW)")
        if v.dim() != 4 or v.shape[0] != 1 or v.shape[1] != W.shape[1]:
            raise ConfigError(f"{_CONV}: argument 'vs[{i}]' must have shape (1, {W.shape[1]}, H, W), "
                             f"got {tuple(v.shape)}")
        validation.integer(_CONV, f"strides[{i}]", s, 1)
        validation.integer(_CONV, f"paddings[{i}]", p, 0)
        for d in (2, 3):
            if v.shape[d] + 2 * p < W.shape[d]:
                raise ConfigError(f"{_CONV}: argument 'vs[{i}]' (shape {tuple(v.shape)}) is spatially smaller than "
                                 f"the kernel of 'weights[{i}]' (shape {tuple(W.shape)}) with padding {p}")


def _no_autocast(device: torch.device):
    return torch.autocast(device.type, enabled=False)


def _matrices(weights: List[Tensor], us: List[Tensor], n_iter: int) -> Tuple[Tensor, List[Tensor]]:
    _check_matrices(weights, us, n_iter)
    if not weights:
        return torch.empty(0), []
    with _no_autocast(weights[0].device):
        return _matrices_on(backends.choose(weights[0].device), weights, us, n_iter)


def _matrices_on(backend: str, weights: List[Tensor], us: List[Tensor], n_iter: int
                 ) -> Tuple[Tensor, List[Tensor]]:
    if backend == "torch":
        return reference.power_iteration_matrices(weights, us, n_iter)
    if backend == "triton":
        mats = [W.reshape(W.shape[0], -1).contiguous() for W in weights]
        return backends.run_triton("power_iteration_matrices", mats[0].device, mats, [u.contiguous() for u in us],
                                   n_iter)
    sigmas, new_us = torch.ops.lmdeq_C.power_iteration_matrices(weights, us, n_iter)
    return sigmas, list(new_us)


@torch.library.custom_op("lmdeq::power_iteration_matrices", mutates_args=())
def _matrices_op(weights: List[Tensor], us: List[Tensor], n_iter: int) -> Tuple[Tensor, List[Tensor]]:
    return _matrices(weights, us, n_iter)


@_matrices_op.register_fake
def _(weights, us, n_iter):
    _check_matrices(weights, us, n_iter)
    if not weights:
        return torch.empty(0), []
    return weights[0].new_empty(len(weights)), [torch.empty_like(u, memory_format=torch.contiguous_format) for u in us]


def _conv_eager(backend: str, strides: List[int], paddings: List[int], n_iter: int):
    """fn(weights + vs) -> (sigmas, vs) for one backend: the unit a CUDA graph captures."""
    def run(tensors: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        L = len(tensors) // 2
        weights, vs = tensors[:L], tensors[L:]
        if backend == "torch":
            sigmas, new_vs = reference.conv_power_iteration(weights, vs, strides, paddings, n_iter)
        elif backend == "triton":
            sigmas, new_vs = backends.run_triton("conv_power_iteration", weights[0].device, weights, vs, strides,
                                                 paddings, n_iter)
        else:
            sigmas, new_vs = torch.ops.lmdeq_C.conv_power_iteration(weights, vs, strides, paddings, n_iter)
        return sigmas, list(new_vs)
    return run


def _conv(weights: List[Tensor], vs: List[Tensor], strides: List[int], paddings: List[int], n_iter: int
          ) -> Tuple[Tensor, List[Tensor]]:
    _check_convs(weights, vs, strides, paddings, n_iter)
    if not weights:
        return torch.empty(0), []
    device = weights[0].device
    backend = backends.choose(device)
    run = _conv_eager(backend, list(strides), list(paddings), n_iter)
    tensors = list(weights) + list(vs)
    with _no_autocast(device):
        if backend in ("cuda", "triton") and _GRAPHS.enabled(device):
            key = ("conv_power_iteration", backend, device, weights[0].dtype,
                   tuple(tuple(t.shape) for t in tensors), tuple(strides), tuple(paddings), n_iter)
            outs, _ = _GRAPHS(key, lambda static: (_flat(*run(static)), None), tensors)
            sigmas, new_vs = outs[0], outs[1:]
        else:
            sigmas, new_vs = run(tensors)
    return sigmas, [v.contiguous() for v in new_vs]


@torch.library.custom_op("lmdeq::conv_power_iteration", mutates_args=())
def _conv_op(weights: List[Tensor], vs: List[Tensor], strides: List[int], paddings: List[int], n_iter: int
             ) -> Tuple[Tensor, List[Tensor]]:
    return _conv(weights, vs, strides, paddings, n_iter)


@_conv_op.register_fake
def _(weights, vs, strides, paddings, n_iter):
    _check_convs(weights, vs, strides, paddings, n_iter)
    if not weights:
        return torch.empty(0), []
    return weights[0].new_empty(len(weights)), [torch.empty_like(v, memory_format=torch.contiguous_format)
                                                for v in vs]


def power_iteration_matrices(weights: Sequence[Tensor], us: Sequence[Tensor], n_iter: int = 1
                             ) -> Tuple[Tensor, List[Tensor]]:
    """Warm-started power iteration on the matrices weights[l].reshape(out_l, -1), all layers at once.

    Args:
        weights: L tensors (out_l, ...) of one float dtype and device.
        us: L persistent left vectors (out_l,), same dtype.
        n_iter: iterations (>= 1).
    Returns:
        (sigmas (L,), new us): sigma_l = u_l^T W_l v_l, the estimate of the largest singular value.
    """
    weights = validation.tensor_list(_MAT, "weights", weights, allow_empty=True)
    us = validation.tensor_list(_MAT, "us", us, allow_empty=True)
    n_iter = validation.integer(_MAT, "n_iter", n_iter, 1)
    op = _matrices if eager_fast_path(*weights, *us) else _matrices_op
    sigmas, new_us = op(weights, us, n_iter)
    return sigmas, list(new_us)


def conv_power_iteration(weights: Sequence[Tensor], vs: Sequence[Tensor], strides: Sequence[int],
                         paddings: Sequence[int], n_iter: int = 1) -> Tuple[Tensor, List[Tensor]]:
    """Warm-started power iteration on the operators x -> conv2d(x, W_l, stride_l, padding_l).

    Args:
        weights: L conv weights (C_out, C_in, kH, kW) of one float dtype and device (shapes may differ).
        vs: L persistent inputs (1, C_in, H, W), one per layer, the layer's input size.
        strides, paddings: one int per layer.
        n_iter: iterations of v <- A^T A v / ||A^T A v|| (>= 0).
    Returns:
        (sigmas (L,), new vs (unit norm)) with sigma_l = ||A_l v_l||, a lower estimate of ||A_l||_2.
    """
    weights = validation.tensor_list(_CONV, "weights", weights, allow_empty=True)
    vs = validation.tensor_list(_CONV, "vs", vs, allow_empty=True)
    strides = [validation.integer(_CONV, f"strides[{i}]", s, 1) for i, s in enumerate(strides)]
    paddings = [validation.integer(_CONV, f"paddings[{i}]", p, 0) for i, p in enumerate(paddings)]
    n_iter = validation.integer(_CONV, "n_iter", n_iter, 0)
    op = _conv if eager_fast_path(*weights, *vs) else _conv_op
    sigmas, new_vs = op(weights, vs, strides, paddings, n_iter)
    return sigmas, list(new_vs)
