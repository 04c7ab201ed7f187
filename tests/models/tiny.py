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



def dense_conv_norm(weight, input_shape, stride):
    """||x -> conv2d(x, W, stride, padding=k//2)||_2 from the dense Jacobian (float64)."""
    weight = weight.detach().double()
    x = torch.zeros(input_shape, dtype=torch.float64)
    pad = weight.shape[-1] // 2
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


def conv_norm_upper_bound(weight, input_hw, stride):
    """An upper bound on ||x -> conv2d(x, W, stride, padding=k//2)||_2 on inputs of size input_hw (float64).

    Exact for 1x1 convs (the matrix norm) and small inputs (dense matrix). Otherwise the zero-padded conv
    is a restriction of a circular conv on an N x N torus (N >= H + k//2), whose norm is
    max_w ||W_hat(w)||_2 over the torus frequencies; a stride-2 3x3 conv is first rewritten, through the
    orthogonal split of x into its four polyphase components, as a stride-1 conv on the coarse grid with
    4 C_in channels and taps {-1, 0}. These bounds are within ~0.5% of the true norm from 16x16 up."""
    w = weight.detach().double()
    c_out, c_in, k, _ = w.shape
    if k == 1:
        return float(torch.linalg.matrix_norm(w.reshape(c_out, c_in), ord=2))
    numel = c_in * input_hw[0] * input_hw[1]
    if numel <= 1024:
        basis = torch.eye(numel, dtype=torch.float64).reshape(numel, c_in, *input_hw)
        cols = F.conv2d(basis, w, stride=stride, padding=k // 2).reshape(numel, -1)
        return float(torch.linalg.matrix_norm(cols, ord=2))
    if stride == 2:
        if k != 3 or input_hw[0] % 2 or input_hw[1] % 2:
            raise ValueError("polyphase bound implemented for 3x3 stride-2 convs on even sizes")
        tap = {0: (1, 0), 1: (0, 1), 2: (1, 1)}   # kernel tap a -> (input phase r, coarse tap e)
        poly = torch.zeros(c_out, c_in, 2, 2, 2, 2, dtype=torch.float64)   # (o, c, r, t, e_a, e_b)
        for a in range(3):
            for b in range(3):
                (r, ea), (t, eb) = tap[a], tap[b]
                poly[:, :, r, t, ea, eb] += w[:, :, a, b]
        w, k = poly.reshape(c_out, 4 * c_in, 2, 2), 2
        input_hw = (input_hw[0] // 2, input_hw[1] // 2)
    elif stride != 1:
        raise ValueError(f"stride {stride} not supported")
    n = max(input_hw) + k
    spectrum = torch.fft.fft2(w, s=(n, n)).permute(2, 3, 0, 1)
    return float(torch.linalg.matrix_norm(spectrum, ord=2).max())
