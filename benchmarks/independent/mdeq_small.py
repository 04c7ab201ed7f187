"""An independent re-implementation of MDEQ-small and of MDEQ-small + Jacobian regularisation, in plain PyTorch.

It follows the structure of the released code, restated here (not lmdeq's code: nothing in this file imports
lmdeq), so that lmdeq's baselines (a) and (a-JR) can be timed against it (``time_baselines.py``):

* locuslab/deq, MDEQ-Vision/lib/models/mdeq_core.py and mdeq.py (the model), lib/solvers.py (``broyden``,
  ``anderson``), lib/optimizations.py (weight norm, variational dropout), lib/layer_utils.py (list2vec /
  vec2list, conv3x3), lib/jacobian.py (``jac_loss_estimate``), MDEQ-Vision/lib/core/cls_function.py (the
  training step) and MDEQ-Vision/lib/config/default.py (defaults the yaml files leave unset);
* the MDEQ-small recipe: MDEQ-Vision/experiments/cifar/cls_mdeq_TINY.yaml (:data:`TINY`);
* the JR recipe: iiduka-researches/Lipschitz_mdeq MDEQ-Vision/experiments/cifar/cls_mdeq_LARGE_reg.yaml and
  lib/core/cls_function.py (Anderson 7/8, JAC_LOSS_FREQ 0.05, JAC_LOSS_WEIGHT 0.5, RAND_F_THRES_DELTA 2,
  DROPOUT 0.22), applied to the MDEQ-small architecture (:data:`TINY_JR`). (locuslab's own LARGE_reg.yaml
  differs: Broyden 8/7, JAC_LOSS_FREQ 0.02, JAC_LOSS_WEIGHT 0.4.)

What the released recipe does, and this file does too (same math, same order of the expensive operations):

* the forward pass: stem (conv3x3-BN-ReLU twice, stride 1), no injection module for 2 branches (stage0 is None),
  the injection enters branch 0 only; the state is the flat per-sample vector of both branches (list2vec) and
  f(z) = list2vec(MDEQModule(vec2list(z), injection)); weight norm recomputed once per forward pass and the
  variational dropout masks drawn once per forward pass (``_reset``);
* the forward solve under ``torch.no_grad()`` from z = 0: Broyden (F_THRES 18, eps 1e-3 -- the solver's
  default, the model does not pass one --, STOP_MODE rel) in eval and training alike; in eval mode the head
  reads z*, in training mode the head reads new_z = f(z*) evaluated with autograd at z* (a leaf requiring
  grad), and a hook on new_z replaces its gradient v by the solution of g = J_f(z*)^T g + v, solved by the
  backward solver (B_THRES 20, eps 1e-3, rel) from g = 0;
* Broyden's stopping rule is released's: ONE residual pooled over the whole batch, abs = ||f(x) - x||_F,
  rel = abs / (||f(x)||_F + 1e-9), checked after every update (so one host read-back per update); the
  protective break (rel > 1e3 x the first) and the 30-step stall rule; the iterate returned is the one with
  the lowest pooled residual. A solve of threshold T costs at most T + 1 evaluations (g(x0), then one per
  update), the inverse-Jacobian estimate keeps all T rank-one terms (no ring buffer);
* Anderson as released (m = 6, lam = 1e-4 absolute, beta = 1.0, eps 1e-3): x1 = f(x0) unchecked, then one
  checked evaluation per step up to ``threshold`` evaluations in all; pooled residual rel = abs / (1e-5 +
  ||f(x)||); returns the mixed iterate with the lowest pooled residual;
* the JR step: loss = CE + factor * jac_loss_estimate(f(z*), z*) (2 Gaussian vectors, create_graph=True) on a
  step drawn with probability JAC_LOSS_FREQ, whose forward threshold is F_THRES + delta, delta uniform on
  {-2, ..., 1}; the estimate is computed on the tracked f(z*) of the implicit backward (no extra
  f-evaluation).

Where this file does less work than the released code, without changing any value (a good implementation
would not pay for these; each is listed so that a timing is read right):

* Broyden's inverse-Jacobian factors U, V^T are allocated on the state's device in its dtype (released:
  ``torch.zeros(...)`` in float32 on the CPU, then ``.to(dev)``: a CPU fill and a host-to-device copy of
  2 x B x n x T floats per solve) and stored as (B, T, n) rows (released: U as (B, n, 1, T), V^T as (B, T, n,
  1)); released's per-update ``vT[vT != vT] = 0`` (a boolean-mask index: a host sync on CUDA) is a masked_fill
  here; the two ``.item()`` reads of abs and rel per update are one read-back of both; the line-search
  helper's unused norms (``tmp_phi``, ``s_norm``: computed even with ls=False), the unused clone of the
  lowest residual and the unused Broyden update after the last allowed step are skipped; the lowest iterate
  is kept by reference (released clones it; it is never written in place);
* the zero injection into branch 1 (released adds a zeros tensor) and the zero-initialised fusion sum
  (released ``y = 0; y += ...``, a copy) are left out; ``iodrop`` (dropout 0) is left out; the dropout masks
  are drawn on the state's device and only when dropout is active (released draws them on the CPU at every
  forward pass, eval included, and multiplies a CPU mask into the device tensor);
* Anderson: the (1 - beta) history term is skipped when beta = 1 (released computes 0 * (alpha @ X)), the
  ridge's identity is built once;
* the training step: no scalar ``torch.tensor(0.0).to(x)`` placeholders (jac_loss, sradius) and no
  ``loss + factor * 0`` on non-JR steps; no accuracy / loss read-back, no LR scheduler (the timing harness
  times the optimiser step only, as lmdeq's benchmark does); no unrolled pre-training phase (PRETRAIN_STEPS:
  the timed steps are all DEQ steps, as lmdeq's (a) without ``unrolled_warmup_steps``).

Kept although it costs: the hook's ``torch.cuda.synchronize()`` (released calls it at the start of the adjoint
solve), the per-update read-back of the pooled residual (the released stopping rule needs it every update),
the full gradient into the leaf z* in the final backward pass (released's z* is a leaf requiring grad), the
list2vec copies of f's output, torch.linalg.solve's checks in Anderson.

Parameter and buffer names are the released ones (``downsample.*``, ``fullstage.*``, ``incre_modules.*``,
``downsamp_modules.*``, ``final_layer.*``, ``classifier.*``); :func:`lmdeq_to_released` maps an lmdeq
original-MDEQ state dict to them and :func:`load_lmdeq_weights` loads it.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TINY", "TINY_JR", "MDEQSmall", "mdeq_small", "mdeq_small_jr", "broyden", "anderson",
           "jac_loss_estimate", "Baseline", "BaselineJR", "lmdeq_to_released", "load_lmdeq_weights",
           "EvalCounter"]

# MDEQ-Vision/experiments/cifar/cls_mdeq_TINY.yaml (with MDEQ-Vision/lib/config/default.py for the keys it
# leaves unset: BLOCK_GN_AFFINE and FUSE_GN_AFFINE True); eps is the solvers' default (the model never passes
# one). OPTIMIZER adam, LR 0.001, WD 2.5e-6 (cosine schedule, PRETRAIN_STEPS 3000: not reproduced here).
TINY = dict(channels=[24, 24], expansion=5, num_groups=8, dropout=0.25, wnorm=True, block_gn_affine=True,
            fuse_gn_affine=True, post_gn_affine=False, head_channels=[8, 16], final_chansize=200, num_classes=10,
            f_solver="broyden", b_solver="broyden", f_thres=18, b_thres=20, stop_mode="rel", eps=1e-3,
            lr=1e-3, weight_decay=2.5e-6)
# The JR recipe of iiduka-researches/Lipschitz_mdeq cls_mdeq_LARGE_reg.yaml on the MDEQ-small architecture:
# DROPOUT 0.22, Anderson (m 6, lam 1e-4: the solver's defaults) F_THRES 7, B_THRES 8, RAND_F_THRES_DELTA 2,
# JAC_LOSS_FREQ 0.05, JAC_LOSS_WEIGHT 0.5, JAC_INCREMENTAL 1e8 (default.py: the weight never grows),
# PRETRAIN_STEPS 0, WD 0.
TINY_JR = dict(TINY, dropout=0.22, f_solver="anderson", b_solver="anderson", f_thres=7, b_thres=8,
               anderson_m=6, anderson_lam=1e-4, rand_f_thres_delta=2, jac_loss_freq=0.05, jac_loss_weight=0.5,
               jac_incremental=100_000_000, jac_vecs=2, weight_decay=0.0)
BN_MOMENTUM = 0.1


# -- state packing (lib/layer_utils.py) ---------------------------------------------------------------------
def list2vec(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The branches of a state as one (B, n) tensor (a copy: torch.cat)."""
    bsz = parts[0].shape[0]
    return torch.cat([p.reshape(bsz, -1) for p in parts], dim=1)


def vec2list(z: torch.Tensor, shapes: Sequence[tuple]) -> List[torch.Tensor]:
    """Views of a (B, n) state as the branches of shapes (C, H, W)."""
    out, start = [], 0
    for c, h, w in shapes:
        end = start + c * h * w
        out.append(z[:, start:end].view(z.shape[0], c, h, w))
        start = end
    return out


# -- weight norm and variational dropout (lib/optimizations.py) ---------------------------------------------
def _row_norm(v: torch.Tensor) -> torch.Tensor:
    return v.contiguous().view(v.shape[0], -1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def apply_weight_norm(conv: nn.Conv2d) -> nn.Conv2d:
    """Replace conv.weight by parameters weight_g (per output channel) and weight_v, weight = v * g / ||v||;
    the weight is recomputed by :func:`reset_weight_norm` (once per forward pass, as released)."""
    w = conv.weight
    del conv._parameters["weight"]
    conv.weight_g = nn.Parameter(_row_norm(w).detach().clone())
    conv.weight_v = nn.Parameter(w.detach().clone())
    reset_weight_norm(conv)
    return conv


def reset_weight_norm(conv: nn.Conv2d) -> None:
    conv.weight = conv.weight_v * (conv.weight_g / _row_norm(conv.weight_v))


class VariationalDropout2d(nn.Module):
    """Per-(sample, channel) dropout with one mask per forward pass (spatial=True as released)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)
        self.mask = None

    def active(self) -> bool:
        return self.training and self.p > 0.0

    def reset_mask(self, bsz: int, channels: int, device, dtype) -> None:
        if not self.active():
            self.mask = None
            return
        keep = torch.zeros(bsz, channels, 1, 1, device=device, dtype=dtype).bernoulli_(1.0 - self.p)
        self.mask = keep / (1.0 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active():
            return x
        return self.mask.expand_as(x) * x


def conv3x3(c_in: int, c_out: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=bias)


# -- the cell f (MDEQ-Vision/lib/models/mdeq_core.py) ---------------------------------------------------------
class BasicBlock(nn.Module):
    """out = gn3(relu(gn2(drop(conv2(relu(gn1(conv1 x)))) + injection) + x))."""

    def __init__(self, planes: int, expansion: int, groups: int, dropout: float, wnorm: bool, affine: bool):
        super().__init__()
        inner = expansion * planes
        self.conv1 = conv3x3(planes, inner)
        self.gn1 = nn.GroupNorm(groups, inner, affine=affine)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(inner, planes)
        self.gn2 = nn.GroupNorm(groups, planes, affine=affine)
        self.gn3 = nn.GroupNorm(groups, planes, affine=affine)
        self.relu3 = nn.ReLU(inplace=True)
        self.drop = VariationalDropout2d(dropout)
        self.wnorm = wnorm
        if wnorm:
            apply_weight_norm(self.conv1)
            apply_weight_norm(self.conv2)

    def reset(self, bsz: int, device, dtype) -> None:
        if self.wnorm:
            reset_weight_norm(self.conv1)
            reset_weight_norm(self.conv2)
        self.drop.reset_mask(bsz, self.conv2.out_channels, device, dtype)

    def forward(self, x: torch.Tensor, injection: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.relu(self.gn1(self.conv1(x)))
        out = self.drop(self.conv2(out))
        if injection is not None:
            out = out + injection
        out = self.gn2(out)
        out += x
        return self.gn3(self.relu3(out))


class BranchNet(nn.Module):
    def __init__(self, blocks: nn.ModuleList):
        super().__init__()
        self.blocks = blocks

    def forward(self, x, injection=None):
        y = self.blocks[0](x, injection)
        for blk in self.blocks[1:]:
            y = blk(y)
        return y


class DownsampleModule(nn.Module):
    """Branch j -> i > j: (i - j) stride-2 conv3x3 + GroupNorm, ReLU between them."""

    def __init__(self, channels, j: int, i: int, groups: int, affine: bool):
        super().__init__()
        levels = i - j
        stages = []
        for k in range(levels):
            c_out = channels[i] if k == levels - 1 else channels[j]
            parts = [("conv", nn.Conv2d(channels[j], c_out, kernel_size=3, stride=2, padding=1, bias=False)),
                     ("gnorm", nn.GroupNorm(groups, c_out, affine=affine))]
            if k != levels - 1:
                parts.append(("relu", nn.ReLU(inplace=True)))
            stages.append(nn.Sequential(OrderedDict(parts)))
        self.net = nn.Sequential(*stages)

    def forward(self, x):
        return self.net(x)


class UpsampleModule(nn.Module):
    """Branch j -> i < j: conv1x1, GroupNorm, nearest upsampling by 2^(j - i)."""

    def __init__(self, channels, j: int, i: int, groups: int, affine: bool):
        super().__init__()
        self.net = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(channels[j], channels[i], kernel_size=1, bias=False)),
            ("gnorm", nn.GroupNorm(groups, channels[i], affine=affine)),
            ("upsample", nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"))]))

    def forward(self, x):
        return self.net(x)


class MDEQModule(nn.Module):
    """f: per-branch residual blocks, then the multiscale fusion (a plain sum) and post-fusion layers."""

    def __init__(self, cfg: dict):
        super().__init__()
        ch, groups = cfg["channels"], cfg["num_groups"]
        n = self.num_branches = len(ch)
        self.branches = nn.ModuleList(
            BranchNet(nn.ModuleList([BasicBlock(c, cfg["expansion"], groups, cfg["dropout"], cfg["wnorm"],
                                                cfg["block_gn_affine"])])) for c in ch)
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(None if i == j else
                          (UpsampleModule if j > i else DownsampleModule)(ch, j, i, groups, cfg["fuse_gn_affine"])
                          for j in range(n))
            for i in range(n))
        self.post_fuse_layers = nn.ModuleList(
            nn.Sequential(OrderedDict([("relu", nn.ReLU(inplace=False)),
                                       ("conv", nn.Conv2d(c, c, kernel_size=1, bias=False)),
                                       ("gnorm", nn.GroupNorm(groups // 2, c, affine=cfg["post_gn_affine"]))]))
            for c in ch)
        self.wnorm = cfg["wnorm"]
        if self.wnorm:
            for post in self.post_fuse_layers:
                apply_weight_norm(post.conv)

    def reset(self, bsz: int, device, dtype) -> None:
        """Weight norm recomputed, dropout masks drawn: once per forward pass (released ``_reset``)."""
        for i, branch in enumerate(self.branches):
            for blk in branch.blocks:
                blk.reset(bsz, device, dtype)
            if self.wnorm:
                reset_weight_norm(self.post_fuse_layers[i].conv)

    def forward(self, z: Sequence[torch.Tensor], injection: torch.Tensor) -> List[torch.Tensor]:
        blocks = [self.branches[i](z[i], injection if i == 0 else None) for i in range(self.num_branches)]
        out = []
        for i in range(self.num_branches):
            y = None
            for j in range(self.num_branches):
                term = blocks[j] if i == j else self.fuse_layers[i][j](blocks[j])
                y = term if y is None else y + term
            out.append(self.post_fuse_layers[i](y))
        return out


# -- the classification head (MDEQ-Vision/lib/models/mdeq.py) ----------------------------------------------
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM, affine=False)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM, affine=False)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM, affine=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        out += residual
        return self.relu(out)


def _incre_module(inplanes: int, planes: int) -> nn.Sequential:
    out = planes * Bottleneck.expansion
    downsample = None
    if inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(out, momentum=BN_MOMENTUM))
    return nn.Sequential(Bottleneck(inplanes, planes, downsample))


# -- the model ----------------------------------------------------------------------------------------------
class EvalCounter:
    """Counts the calls of a function (f-evaluations or vector-Jacobian products of a solve)."""

    def __init__(self, fn):
        self.fn, self.count = fn, 0

    def __call__(self, *args):
        self.count += 1
        return self.fn(*args)


class MDEQSmall(nn.Module):
    """MDEQClsNet of the released code for a recipe dict (:data:`TINY` or :data:`TINY_JR`).

    ``model(x)`` -> logits (training mode: with the implicit backward hook attached), ``model(x,
    compute_jac_loss=True, f_thres=k)`` -> (logits, jac_loss). ``model.last_stats``: python numbers of the
    latest forward (and, after backward, adjoint) solve.
    """

    def __init__(self, recipe: dict = TINY, **overrides):
        super().__init__()
        cfg = dict(recipe, **overrides)
        unknown = sorted(set(overrides) - set(recipe))
        if unknown:
            raise TypeError(f"unknown recipe key(s) {unknown}")
        self.cfg = cfg
        ch = cfg["channels"]
        c0 = ch[0]
        if len(ch) > 2:
            raise ValueError("this re-implementation covers DOWNSAMPLE_TIMES 0 with <= 2 branches (no stage0), "
                             "as MDEQ-small")
        self.downsample = nn.Sequential(conv3x3(3, c0), nn.BatchNorm2d(c0, momentum=BN_MOMENTUM, affine=True),
                                        nn.ReLU(inplace=True), conv3x3(c0, c0),
                                        nn.BatchNorm2d(c0, momentum=BN_MOMENTUM, affine=True), nn.ReLU(inplace=True))
        self.fullstage = MDEQModule(cfg)
        heads = cfg["head_channels"]
        self.incre_modules = nn.ModuleList(_incre_module(c, h) for c, h in zip(ch, heads))
        self.downsamp_modules = nn.ModuleList(
            nn.Sequential(conv3x3(heads[i] * 4, heads[i + 1] * 4, stride=2, bias=True),
                          nn.BatchNorm2d(heads[i + 1] * 4, momentum=BN_MOMENTUM), nn.ReLU(inplace=True))
            for i in range(len(ch) - 1))
        self.final_layer = nn.Sequential(nn.Conv2d(heads[-1] * 4, cfg["final_chansize"], kernel_size=1),
                                         nn.BatchNorm2d(cfg["final_chansize"], momentum=BN_MOMENTUM),
                                         nn.ReLU(inplace=True))
        self.classifier = nn.Linear(cfg["final_chansize"], cfg["num_classes"])
        self._init_weights()
        self.hook = None
        self.last_stats: Dict[str, object] = {}
        self._solvers = {"broyden": broyden, "anderson": self._anderson}

    def _init_weights(self) -> None:
        """Released init_weights: Conv2d weights and biases ~ N(0, 0.01), affine BN weight 1, bias 0 (the
        weight-normed convs keep their default init: released writes the computed weight, which the next
        forward pass recomputes from g and v)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and "weight" in m._parameters:
                m.weight.data.normal_(0, 0.01)
                if m.bias is not None:
                    m.bias.data.normal_(0, 0.01)
            elif isinstance(m, nn.BatchNorm2d) and m.weight is not None:
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _anderson(self, f, x0, threshold, eps, stop_mode):
        return anderson(f, x0, m=self.cfg.get("anderson_m", 6), lam=self.cfg.get("anderson_lam", 1e-4),
                        threshold=threshold, eps=eps, stop_mode=stop_mode)

    def state_shapes(self, height: int, width: int) -> List[tuple]:
        return [(c, height // 2 ** i, width // 2 ** i) for i, c in enumerate(self.cfg["channels"])]

    def fixed_point_map(self, x: torch.Tensor):
        """(func, z0, shapes, injection): func the flat-state map f of input x, with this forward pass's weight
        norm recomputed and dropout masks drawn (training mode)."""
        inj = self.downsample(x)
        bsz, _, h, w = inj.shape
        shapes = self.state_shapes(h, w)
        self.fullstage.reset(bsz, inj.device, inj.dtype)
        z0 = torch.zeros(bsz, sum(c * hh * ww for c, hh, ww in shapes), dtype=inj.dtype, device=inj.device)

        def func(z):
            return list2vec(self.fullstage(vec2list(z, shapes), inj))

        return func, z0, shapes, inj

    def forward(self, x: torch.Tensor, compute_jac_loss: bool = False, f_thres: Optional[int] = None,
                b_thres: Optional[int] = None):
        cfg = self.cfg
        f_thres = cfg["f_thres"] if f_thres is None else f_thres
        b_thres = cfg["b_thres"] if b_thres is None else b_thres
        func, z0, shapes, _ = self.fixed_point_map(x)
        f_solver, b_solver = self._solvers[cfg["f_solver"]], self._solvers[cfg["b_solver"]]
        counted = EvalCounter(func)
        with torch.no_grad():
            result = f_solver(counted, z0, threshold=f_thres, eps=cfg["eps"], stop_mode=cfg["stop_mode"])
        z1 = result["result"]
        stats = self.last_stats = {"f_evals": counted.count, "f_nstep": result["nstep"],
                                   "f_residual": result["lowest"], "f_syncs": result["syncs"],
                                   "f_thres": f_thres, "tracked_evals": 0, "jac_vjps": 0,
                                   "b_evals": 0, "b_residual": math.nan}
        new_z1 = z1
        jac_loss = None
        if self.training and torch.is_grad_enabled():
            z1 = z1.requires_grad_()
            new_z1 = func(z1)
            stats["tracked_evals"] = 1
            if compute_jac_loss:
                jac_loss = jac_loss_estimate(new_z1, z1, vecs=cfg.get("jac_vecs", 2))
                stats["jac_vjps"] = cfg.get("jac_vecs", 2)

            def backward_hook(grad):
                if self.hook is not None:
                    self.hook.remove()
                    if grad.is_cuda:
                        torch.cuda.synchronize()
                vjp = EvalCounter(lambda y: torch.autograd.grad(new_z1, z1, y, retain_graph=True)[0] + grad)
                res = b_solver(vjp, torch.zeros_like(grad), threshold=b_thres, eps=cfg["eps"],
                               stop_mode=cfg["stop_mode"])
                stats.update(b_evals=vjp.count, b_nstep=res["nstep"], b_residual=res["lowest"],
                             b_syncs=res["syncs"])
                return res["result"]

            self.hook = new_z1.register_hook(backward_hook)
        logits = self.predict(vec2list(new_z1, shapes))
        return (logits, jac_loss) if compute_jac_loss else logits

    def predict(self, y_list: Sequence[torch.Tensor]) -> torch.Tensor:
        y = self.incre_modules[0](y_list[0])
        for i, down in enumerate(self.downsamp_modules):
            y = self.incre_modules[i + 1](y_list[i + 1]) + down(y)
        y = self.final_layer(y)
        y = F.avg_pool2d(y, kernel_size=y.shape[2:]).view(y.shape[0], -1)
        return self.classifier(y)


def mdeq_small(**overrides) -> MDEQSmall:
    """MDEQ-small as released (cls_mdeq_TINY.yaml)."""
    return MDEQSmall(TINY, **overrides)


def mdeq_small_jr(**overrides) -> MDEQSmall:
    """MDEQ-small with the released JR recipe (Lipschitz_mdeq cls_mdeq_LARGE_reg.yaml)."""
    return MDEQSmall(TINY_JR, **overrides)


# -- solvers (lib/solvers.py), on a flat (B, n) state --------------------------------------------------------
def _matvec(us: torch.Tensor, vts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(-I + U V^T) x, per sample; us, vts: (B, k, n)."""
    if us.shape[1] == 0:
        return -x
    # (small operand first: einsum then reads the slice us[:, :k] in place instead of copying it for bmm)
    return -x + torch.einsum("bk,bkn->bn", torch.einsum("bn,bkn->bk", x, vts), us)


def _rmatvec(us: torch.Tensor, vts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x^T (-I + U V^T), per sample, as a row."""
    if us.shape[1] == 0:
        return -x
    return -x + torch.einsum("bk,bkn->bn", torch.einsum("bn,bkn->bk", x, us), vts)


def broyden(f, x0: torch.Tensor, threshold: int, eps: float = 1e-3, stop_mode: str = "rel") -> dict:
    """Released Broyden (ls=False) for x = f(x), x0 of shape (B, n); see the module docstring."""
    bsz, n = x0.shape
    protect_thres = 1e6 if stop_mode == "abs" else 1e3   # x seq_len, which is 1 for MDEQ's flat state
    x, gx = x0, f(x0) - x0
    us = torch.zeros(bsz, threshold, n, dtype=x0.dtype, device=x0.device)
    vts = torch.zeros_like(us)
    update = gx                        # -(-I) gx with no rank-one term yet
    trace = {"abs": [], "rel": []}
    lowest = {"abs": 1e8, "rel": 1e8}
    lowest_step = {"abs": 0, "rel": 0}
    lowest_x = x0
    prot_break = False
    nstep = 0
    while nstep < threshold:
        x_new = x + update
        gx_new = f(x_new) - x_new
        dx, dgx = x_new - x, gx_new - gx
        x, gx = x_new, gx_new
        nstep += 1
        abs_diff, fx_norm = torch.stack([torch.norm(gx), torch.norm(gx + x)]).tolist()
        diff = {"abs": abs_diff, "rel": abs_diff / (fx_norm + 1e-9)}
        for mode in ("rel", "abs"):
            trace[mode].append(diff[mode])
            if diff[mode] < lowest[mode]:
                if mode == stop_mode:
                    lowest_x = x
                lowest[mode] = diff[mode]
                lowest_step[mode] = nstep
        objective = diff[stop_mode]
        if objective < eps:
            break
        if objective < 3 * eps and nstep > 30 and max(trace[stop_mode][-30:]) / min(trace[stop_mode][-30:]) < 1.3:
            break
        if objective > trace[stop_mode][0] * protect_thres:
            prot_break = True
            break
        if nstep == threshold:
            break
        k = nstep - 1
        vt = _rmatvec(us[:, :k], vts[:, :k], dx)
        u = (dx - _matvec(us[:, :k], vts[:, :k], dgx)) / torch.einsum("bn,bn->b", vt, dgx)[:, None]
        vts[:, k] = vt.masked_fill_(torch.isnan(vt), 0.0)
        us[:, k] = u.masked_fill_(torch.isnan(u), 0.0)
        update = -_matvec(us[:, :nstep], vts[:, :nstep], gx)
    return {"result": lowest_x, "lowest": lowest[stop_mode], "nstep": lowest_step[stop_mode],
            "prot_break": prot_break, "abs_trace": trace["abs"], "rel_trace": trace["rel"], "syncs": nstep,
            "eps": eps, "threshold": threshold}


def anderson(f, x0: torch.Tensor, m: int = 6, lam: float = 1e-4, threshold: int = 50, eps: float = 1e-3,
             stop_mode: str = "rel", beta: float = 1.0) -> dict:
    """Released Anderson acceleration for x = f(x), x0 of shape (B, n); see the module docstring."""
    bsz, n = x0.shape
    dt, dev = x0.dtype, x0.device
    X = torch.zeros(bsz, m, n, dtype=dt, device=dev)
    Fx = torch.zeros(bsz, m, n, dtype=dt, device=dev)
    X[:, 0], Fx[:, 0] = x0, f(x0)
    X[:, 1], Fx[:, 1] = Fx[:, 0], f(Fx[:, 0])
    H = torch.zeros(bsz, m + 1, m + 1, dtype=dt, device=dev)
    H[:, 0, 1:] = H[:, 1:, 0] = 1
    y = torch.zeros(bsz, m + 1, 1, dtype=dt, device=dev)
    y[:, 0] = 1
    eye = torch.eye(m, dtype=dt, device=dev)
    trace = {"abs": [], "rel": []}
    lowest = {"abs": 1e8, "rel": 1e8}
    lowest_step = {"abs": 0, "rel": 0}
    lowest_x = None
    syncs = 0
    for k in range(2, threshold):
        nk = min(k, m)
        G = Fx[:, :nk] - X[:, :nk]
        H[:, 1:nk + 1, 1:nk + 1] = torch.bmm(G, G.transpose(1, 2)) + lam * eye[None, :nk, :nk]
        alpha = torch.linalg.solve(H[:, :nk + 1, :nk + 1], y[:, :nk + 1])[:, 1:nk + 1, 0]
        mixed = (alpha[:, None] @ Fx[:, :nk])[:, 0]
        if beta != 1.0:
            mixed = beta * mixed + (1 - beta) * (alpha[:, None] @ X[:, :nk])[:, 0]
        slot = k % m
        X[:, slot] = mixed
        Fx[:, slot] = f(X[:, slot])
        gx = Fx[:, slot] - X[:, slot]
        abs_diff, fx_norm = torch.stack([gx.norm(), Fx[:, slot].norm()]).tolist()
        syncs += 1
        diff = {"abs": abs_diff, "rel": abs_diff / (1e-5 + fx_norm)}
        for mode in ("rel", "abs"):
            trace[mode].append(diff[mode])
            if diff[mode] < lowest[mode]:
                if mode == stop_mode:
                    lowest_x = X[:, slot].clone()
                lowest[mode] = diff[mode]
                lowest_step[mode] = k
        if trace[stop_mode][-1] < eps:
            break
    return {"result": lowest_x, "lowest": lowest[stop_mode], "nstep": lowest_step[stop_mode],
            "prot_break": False, "abs_trace": trace["abs"], "rel_trace": trace["rel"], "syncs": syncs,
            "eps": eps, "threshold": threshold}


# -- Jacobian regularisation (lib/jacobian.py) -----------------------------------------------------------
def jac_loss_estimate(f0: torch.Tensor, z0: torch.Tensor, vecs: int = 2, create_graph: bool = True) -> torch.Tensor:
    """Hutchinson estimate of ||J||_F^2 / numel(z0) with ``vecs`` Gaussian vectors (drawn on the CPU, as
    released: ``torch.randn(*shape).to(z0)``)."""
    result = 0
    for _ in range(vecs):
        v = torch.randn(*z0.shape).to(z0)
        vj = torch.autograd.grad(f0, z0, v, retain_graph=True, create_graph=create_graph)[0]
        result = result + vj.norm() ** 2
    return result / vecs / z0.numel()


# -- training steps (MDEQ-Vision/lib/core/cls_function.py) ----------------------------------------------------
class Baseline:
    """An MDEQ-small model with its Adam optimiser: ``train_step(x, y)`` and ``infer(x)``. The caller sets the
    model's mode (``model.train()`` before training steps, ``model.eval()`` before inference), as lmdeq's
    benchmark does, so that a timed step does not include a walk over the module tree."""

    def __init__(self, model: MDEQSmall, lr: Optional[float] = None, weight_decay: Optional[float] = None):
        self.model = model
        cfg = model.cfg
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"] if lr is None else lr,
                                    weight_decay=cfg["weight_decay"] if weight_decay is None else weight_decay)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss.detach()

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def last_stats(self) -> dict:
        return dict(self.model.last_stats)


class BaselineJR(Baseline):
    """The JR recipe's step: ``train_step(x, y, jac_step)``; :meth:`draw` is the released per-step draw."""

    def factor(self, deq_steps: int = 0) -> float:
        cfg = self.model.cfg
        return cfg["jac_loss_weight"] + 0.1 * (deq_steps // cfg["jac_incremental"])

    def draw(self, generator: Optional[torch.Generator] = None):
        """(jac_step, f_thres_delta) as the released loop draws them (torch's global generator by default)."""
        cfg = self.model.cfg
        jac = torch.rand([], generator=generator).item() < cfg["jac_loss_freq"] and self.factor() > 0
        delta = 0
        if cfg["rand_f_thres_delta"] > 0 and jac:
            delta = int(torch.randint(-cfg["rand_f_thres_delta"], 2, [], generator=generator).item())
        return jac, delta

    def train_step(self, x: torch.Tensor, y: torch.Tensor, jac_step: bool = False,
                   f_thres_delta: Optional[int] = None, deq_steps: int = 0) -> torch.Tensor:
        """One step; on a JR step the forward threshold is F_THRES + delta (``f_thres_delta``, drawn as released
        when None) and the loss CE + factor * jac_loss."""
        model, cfg = self.model, self.model.cfg
        self.opt.zero_grad(set_to_none=True)
        if jac_step:
            if f_thres_delta is None:
                d = cfg["rand_f_thres_delta"]
                f_thres_delta = int(torch.randint(-d, 2, []).item()) if d > 0 else 0
            logits, jac_loss = model(x, compute_jac_loss=True, f_thres=cfg["f_thres"] + f_thres_delta)
            loss = F.cross_entropy(logits, y)
            (loss + self.factor(deq_steps) * jac_loss).backward()
        else:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        self.opt.step()
        return loss.detach()


# -- weights from lmdeq ----------------------------------------------------------------------------------------
# lmdeq state-dict name -> released name (also used by tests/released/test_released_function.py).
RENAMES = [
    (r"^stem\.(\d+)\.", r"downsample.\1."),
    (r"^injection\.(\d+)\.", r"stage0.\1."),
    (r"^cell\.blocks\.(\d+)\.", r"fullstage.branches.\1.blocks.0."),
    (r"^cell\.fusion\.paths\.(\d+)\.(\d+)\.convs\.(\d+)\.", r"fullstage.fuse_layers.\1.\2.net.\3.conv."),
    (r"^cell\.fusion\.paths\.(\d+)\.(\d+)\.norms\.(\d+)\.", r"fullstage.fuse_layers.\1.\2.net.\3.gnorm."),
    (r"^cell\.fusion\.paths\.(\d+)\.(\d+)\.conv\.", r"fullstage.fuse_layers.\1.\2.net.conv."),
    (r"^cell\.fusion\.paths\.(\d+)\.(\d+)\.norm\.", r"fullstage.fuse_layers.\1.\2.net.gnorm."),
    (r"^cell\.fusion\.post\.(\d+)\.", r"fullstage.post_fuse_layers.\1."),
    (r"^head\.increase\.(\d+)\.project\.", r"incre_modules.\1.0.downsample."),
    (r"^head\.increase\.(\d+)\.", r"incre_modules.\1.0."),
    (r"^head\.downsample\.", r"downsamp_modules."),
    (r"^head\.final\.", r"final_layer."),
    (r"^head\.classifier\.", r"classifier."),
]
LMDEQ_ONLY = re.compile(r"(\.(sigma|power_vector|released_cap_u)|^optimizer_steps)$")


def lmdeq_to_released(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """{released name: tensor} from an lmdeq original-MDEQ state dict (each entry mapped exactly once)."""
    out = {}
    for name, value in state_dict.items():
        if LMDEQ_ONLY.search(name):
            continue
        for pattern, repl in RENAMES:
            if re.match(pattern, name):
                new = re.sub(pattern, repl, name)
                break
        else:
            raise KeyError(f"no released name for lmdeq parameter {name!r}")
        if new in out:
            raise KeyError(f"two lmdeq entries map to {new!r}")
        out[new] = value.detach().clone()
    return out


def load_lmdeq_weights(model: MDEQSmall, lmdeq_model: nn.Module) -> MDEQSmall:
    """Copy an lmdeq original-MDEQ model's parameters and buffers into ``model`` (strict: every name on both
    sides), in ``model``'s dtype and device."""
    ref = next(model.parameters())
    state = {k: v.to(device=ref.device, dtype=ref.dtype if v.is_floating_point() else v.dtype)
             for k, v in lmdeq_to_released(lmdeq_model.state_dict()).items()}
    model.load_state_dict(state, strict=True)
    return model
