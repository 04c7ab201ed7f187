"""Shared helpers for the model tests: tiny configs and float64 measurement tools."""
import torch
from torch.nn import functional as F

from lmdeq import Broyden, FixedPoint, Implicit

# Tiny overrides of cifar10-small (2 branches) and a 3-branch variant (exercises 2-level down/up paths
# and the 1x1 injection), cheap enough for CPU tests.
TINY2 = dict(channels=[8, 8], expansion=2, num_groups=4, head_channels=[2, 4], final_channels=16)
TINY3 = dict(channels=[4, 8, 8], expansion=2, num_groups=2, head_channels=[2, 2, 4], final_channels=16)


def lipschitz_solves(f_iter=None, b_iter=None, tol=1e-3):
    """The Lipschitz variant's default solves (Picard, relative tolerance tol, the adjoint from v) with an int
    cap instead of the a-priori count: forward=... for ``f_iter``, backward=... for ``b_iter`` (a None one is
    left at the preset's default)."""
    out = {}
    if f_iter is not None:
        out["forward"] = FixedPoint(max_iter=f_iter, tol=tol, stop_mode="rel")
    if b_iter is not None:
        out["backward"] = Implicit(solver=FixedPoint(max_iter=b_iter, tol=tol, stop_mode="rel"))
    return out


def original_solves(f_iter=None, b_iter=None):
    """The original MDEQ's default solves (Broyden, relative tolerance 1e-3, the adjoint from 0) with other
    counts (a None one is left at the preset's default)."""
    out = {}
    if f_iter is not None:
        out["forward"] = Broyden(max_iter=f_iter, tol=1e-3, stop_mode="rel")
    if b_iter is not None:
        out["backward"] = Implicit(solver=Broyden(max_iter=b_iter, tol=1e-3, stop_mode="rel"), x0="zeros")
    return out


def state_norm(z):
    return torch.sqrt(sum((t * t).sum() for t in z))



def dense_conv_norm(weight, input_shape, stride, padding=None):
    """||x -> conv2d(x, W, stride, padding)||_2 (padding k // 2 unless given) from the dense Jacobian (float64)."""
    weight = weight.detach().double()
    x = torch.zeros(input_shape, dtype=torch.float64)
    pad = weight.shape[-1] // 2 if padding is None else padding
    jac = torch.autograd.functional.jacobian(lambda t: F.conv2d(t, weight, stride=stride, padding=pad), x)
    out_numel = jac.numel() // x.numel()
    return float(torch.linalg.matrix_norm(jac.reshape(out_numel, x.numel()), ord=2))


@torch.no_grad()
def scale_weights_(model, conv_factor, gamma_factor):
    """Adversarial scaling of every cell conv weight (and weight-norm g) and GroupNorm gamma, in place."""
    for conv in model.cell.convs():
        for p in conv.parameters():
            if p is not getattr(conv, "weight_v", None):
                p.mul_(conv_factor)
    for module in model.cell.modules():
        if isinstance(module, torch.nn.GroupNorm) or type(module).__name__ == "MeanOnlyGroupNorm":
            if module.weight is not None:
                module.weight.mul_(gamma_factor)
