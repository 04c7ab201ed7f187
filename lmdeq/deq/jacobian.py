"""What is measured of the Jacobian J = df/dz at a fixed point: Jacobian regularisation (Bai, Koltun & Kolter,
"Stabilizing Equilibrium Models by Jacobian Regularization", ICML 2021) and the power method.

Both read a *pair* ``(f0, z0)``: z0 a state that requires grad and f0 = f(z0) evaluated on z0's autograd graph,
so that a vector-Jacobian product v^T J is one ``torch.autograd.grad(f0, z0, v)``.

    jac_reg(f0, z0, vecs=1, create_graph=True)
        the Hutchinson estimate of ||J_f(z0)||_F^2 / numel(z0): with v_1..v_vecs ~ N(0, I) of z0's shape,
        (sum_i ||v_i^T J||^2) / vecs / numel(z0), numel counting every element of z0, batch included (so it
        is the per-element mean of the squared Frobenius norm over the whole batch). Differentiable with
        ``create_graph=True`` (the regulariser is trained on: loss + weight * jac_reg(...)).
    power_method(f0, z0, n_iters=100) -> (evector, evalue)
        power iteration v <- v^T J / ||v^T J|| per sample; evalue (B,) is |<v^T J, v>| / <v, v>| of the last
        step, an estimate of the spectral radius of J per sample, and evector (z0's structure) the normalised
        last v^T J.

These are TorchDEQ 0.1.0's ``torchdeq.loss.jac_reg`` and ``torchdeq.loss.power_method`` (and locuslab/deq's
``jac_loss_estimate`` / ``power_method``, whose ``vecs`` default is 2 and ``n_iters`` 200): the same
signatures, the same arithmetic and the same random draws, so that with the same seed the values are
TorchDEQ's: ``jac_reg`` draws each vector as ``torch.randn(*z0.shape).to(z0)`` (float32 from the default CPU
generator, then cast and moved), ``power_method`` its start as ``torch.randn_like(z0)``. What lmdeq adds:

* list/tuple states (z0 and f0 lists of tensors of equal structure, batch first as every lmdeq state): the
  norms run over all parts (numel summed over the parts); the random vectors are drawn as TorchDEQ would draw
  them for the state flattened per sample (MDEQ's ``list2vec``: one (B, n_1 + ... + n_k) draw, sample by
  sample, cut into the parts), so a list state gives the value of its flattened tensor;
* checked arguments: a mismatched structure or shape, a z0 that does not require grad or an f0 that does not
  depend on z0 is a ConfigError / ConfigTypeError (a ValueError / TypeError) naming the argument, instead of
  an autograd error from inside the loop;
* ``power_method`` keeps f0's graph (TorchDEQ's frees it in its last step), so a pair that the training loss
  still needs (``deq_solve(..., jacobian_pair=True)`` with the implicit backward) can be measured first.

Where pairs come from: ``deq_solve(..., jacobian_pair=True)`` puts one in ``info.jacobian_pair`` (the implicit
backward's own tracked f(z*) when there is one: no extra f-evaluation), and :func:`jacobian_pair` evaluates
one at any point.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, List, NamedTuple, Tuple

import torch

from .. import checks
from ..errors import ConfigError, ConfigTypeError
from ..solvers import StateLayout

__all__ = ["JacobianPair", "jac_reg", "power_method", "jacobian_pair", "jacobian_norm"]


class JacobianPair(NamedTuple):
    """``(f0, z0)``: f evaluated at z0, with z0 (requiring grad) on f0's autograd graph."""

    f0: Any
    z0: Any


def _describe(x) -> str:
    if torch.is_tensor(x):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of {len(x)}"
    return f"a {type(x).__name__}"


def _pair_parts(f0, z0, caller: str) -> Tuple[StateLayout, List[torch.Tensor], List[torch.Tensor]]:
    """The layout of z0 and the parts of f0 and z0, checked (see the module docstring)."""
    where = f"{caller}: "
    if torch.is_tensor(z0):
        if not torch.is_tensor(f0):
            raise ConfigTypeError(f"{where}z0 is a tensor, so f0 = f(z0) must be one too, got {_describe(f0)}")
    elif isinstance(z0, (list, tuple)):
        if not isinstance(f0, (list, tuple)):
            raise ConfigTypeError(f"{where}z0 is {_describe(z0)} tensors, so f0 = f(z0) must be a list/tuple of as "
                                  f"many, got {_describe(f0)}")
        if len(f0) != len(z0):
            raise ConfigError(f"{where}f0 has {len(f0)} parts but z0 has {len(z0)}: f0 must be f(z0), of z0's "
                              "structure")
    else:
        raise ConfigTypeError(f"{where}z0 must be a tensor or a list/tuple of tensors, got {_describe(z0)}")
    try:
        layout = StateLayout(z0, "z0")
    except (TypeError, ValueError) as err:
        kind = ConfigTypeError if isinstance(err, TypeError) else ConfigError
        raise kind(f"{where}{err}") from None
    single = layout.kind == "tensor"
    fs = [f0] if single else list(f0)
    zs = [z0] if single else list(z0)
    for i, (f, z) in enumerate(zip(fs, zs)):
        fname, zname = ("f0", "z0") if single else (f"f0[{i}]", f"z0[{i}]")
        if not torch.is_tensor(f):
            raise ConfigTypeError(f"{where}{fname} must be a tensor, got {type(f).__name__}")
        if f.shape != z.shape:
            raise ConfigError(f"{where}{fname} has shape {tuple(f.shape)}, but {zname} has shape {tuple(z.shape)}: "
                              "f0 must be f(z0), of z0's shape")
        if not z.requires_grad:
            raise ConfigError(f"{where}{zname} does not require grad, so f0 carries no Jacobian with respect to it: "
                              "evaluate f0 = f(z0) after z0.requires_grad_() (lmdeq.deq.jacobian_pair(f, z) does), "
                              "or take the pair from deq_solve(..., jacobian_pair=True)")
    if not any(f.requires_grad for f in fs):
        raise ConfigError(f"{where}f0 has no autograd graph, so it does not depend on z0: evaluate f0 = f(z0) with "
                          "grad enabled")
    return layout, fs, zs


def _vjp(fs, zs, vs, create_graph: bool, caller: str) -> List[torch.Tensor | None]:
    """v^T J for the parts: grad of sum_i <f_i, v_i> w.r.t. every z part (None where f does not depend on it)."""
    pairs = [(f, v) for f, v in zip(fs, vs) if f.requires_grad]
    grads = torch.autograd.grad([f for f, _ in pairs], zs, [v for _, v in pairs], retain_graph=True,
                                create_graph=create_graph, allow_unused=True)
    if all(g is None for g in grads):
        raise ConfigError(f"{caller}: f0 does not depend on z0 (no gradient reaches z0 from f0): f0 must be f "
                          "evaluated at z0 itself, not at a copy or a detached z0")
    return list(grads)


def _flat_draw(layout: StateLayout, draw: Callable[[tuple], torch.Tensor]) -> List[torch.Tensor]:
    """One (B, n) draw cut into the parts of a list state, sample by sample (MDEQ's list2vec layout)."""
    flat = draw((layout.batch, layout.numel))
    return [flat[:, a:b].reshape(s) for a, b, s in zip(layout.offsets, layout.offsets[1:], layout.user_shapes)]


def jac_reg(f0, z0, vecs: int = 1, create_graph: bool = True) -> torch.Tensor:
    """Hutchinson estimate of ||J_f(z0)||_F^2 / numel(z0) with ``vecs`` Gaussian vectors (a 0-d tensor;
    see the module docstring). ``create_graph=True`` makes it differentiable (to train on it)."""
    vecs = checks.integer("vecs", vecs, 1, where="jac_reg: ")
    checks.boolean("create_graph", create_graph, where="jac_reg: ")
    layout, fs, zs = _pair_parts(f0, z0, "jac_reg")
    single = layout.kind == "tensor"
    result = 0
    for _ in range(vecs):
        if single:
            vs = [torch.randn(*zs[0].shape).to(zs[0])]
        else:
            vs = _flat_draw(layout, lambda shape: torch.randn(*shape).to(zs[0]))
        grads = _vjp(fs, zs, vs, create_graph, "jac_reg")
        if single:
            result += grads[0].norm() ** 2
        else:
            result += sum(g.norm() ** 2 for g in grads if g is not None)
    return result / vecs / sum(z.numel() for z in zs)


def power_method(f0, z0, n_iters: int = 100):
    """``(evector, evalue)``: ``n_iters`` steps of the power method on J^T per sample from a Gaussian start;
    evalue (B,) the absolute Rayleigh quotient of the last step (see the module docstring). f0's graph is
    kept."""
    n_iters = checks.integer("n_iters", n_iters, 1, where="power_method: ")
    layout, fs, zs = _pair_parts(f0, z0, "power_method")
    single = layout.kind == "tensor"
    bsz = layout.batch
    if single:
        evector = [torch.randn_like(zs[0])]
    else:
        evector = _flat_draw(layout, lambda shape: torch.randn(shape, dtype=layout.dtype, device=layout.device))
    evalue = None
    for _ in range(n_iters):
        grads = _vjp(fs, zs, evector, False, "power_method")
        vtj = [g if g is not None else torch.zeros_like(z) for g, z in zip(grads, zs)]
        if single:
            g, v = vtj[0], evector[0]
            evalue = (g * v).reshape(bsz, -1).sum(1) / (v * v).reshape(bsz, -1).sum(1)
            evector = [(g.reshape(bsz, -1) / g.reshape(bsz, -1).norm(dim=1, keepdim=True)).reshape_as(zs[0])]
        else:
            num = sum((g * v).reshape(bsz, -1).sum(1) for g, v in zip(vtj, evector))
            den = sum((v * v).reshape(bsz, -1).sum(1) for v in evector)
            evalue = num / den
            norm = torch.sqrt(sum((g.reshape(bsz, -1) ** 2).sum(1) for g in vtj)).reshape(bsz, 1)
            evector = [(g.reshape(bsz, -1) / norm).reshape_as(z) for g, z in zip(vtj, zs)]
    out = evector[0] if single else (tuple(evector) if layout.kind == "tuple" else evector)
    return out, torch.abs(evalue)


def jacobian_pair(f: Callable, z) -> JacobianPair:
    """The pair at ``z`` with one f-evaluation: ``(f(z'), z')`` with z' = z detached and requiring grad (a
    tensor, or a list/tuple of tensors in z's structure), evaluated with grad enabled."""
    if torch.is_tensor(z):
        leaf = z.detach().requires_grad_()
    elif isinstance(z, (list, tuple)) and z and all(torch.is_tensor(p) for p in z):
        leaf = type(z)(p.detach().requires_grad_() for p in z)
    else:
        raise ConfigTypeError("jacobian_pair: z must be a tensor or a non-empty list/tuple of tensors, got "
                              f"{_describe(z)}")
    with torch.enable_grad():
        return JacobianPair(f(leaf), leaf)



def jacobian_norm(f: Callable, z, iters: int = 20, seed: int = 0, per_sample: bool = False):
    """||J_f(z)||_2, the spectral norm of f's Jacobian at z, by ``iters`` steps of power iteration on J^T J
    (J v by ``torch.func.jvp``, J^T u by ``torch.func.vjp``): v <- J^T J v / ||J v||, sigma = ||J v|| for a unit v.
    ``z`` is a tensor or a list / tuple of tensors, batch first (f maps it to the same structure). By default the
    norm of the whole map on the concatenated state, a float; ``per_sample=True``, for an f that acts on each
    sample alone (a block-diagonal J), each sample's vector is normalised on its own and the result is the (B,)
    tensor of the samples' norms. Power iteration approaches the norm from below: a lower estimate, exact in the
    limit."""
    iters = checks.integer("iters", iters, 1)
    single = torch.is_tensor(z)
    point = (z,) if single else tuple(z)
    fn = (lambda *p: (f(p[0]),)) if single else (lambda *p: tuple(f(list(p))))

    def norm(parts):   # per sample (B,) or of everything (a 0-d tensor)
        sq = sum((t.reshape(t.shape[0], -1) ** 2).sum(dim=1) for t in parts)
        return (sq if per_sample else sq.sum()).sqrt()

    def scaled(parts, n):
        return tuple(t / n.reshape((-1,) + (1,) * (t.dim() - 1)) if per_sample else t / n for t in parts)

    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = tuple(torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device) for t in point)
    sigma = None
    with warnings.catch_warnings():   # torch's first jvp loads its decompositions through torch.jit.script
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
        _, vjp = torch.func.vjp(fn, *point)
        for _ in range(iters):
            v = scaled(v, norm(v).clamp_min(torch.finfo(point[0].dtype).tiny))
            _, jv = torch.func.jvp(fn, point, v)
            sigma = norm(jv).detach()
            v = tuple(t.detach() for t in vjp(jv))
    return sigma if per_sample else float(sigma)
