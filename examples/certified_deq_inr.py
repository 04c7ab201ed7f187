"""A certified DEQ implicit neural representation: examples/torchdeq_inr.py's DEQ-INR, turned certified.

It fits an image: pixel coordinates x in [-1, 1]^2 -> colour, through the equilibrium z* = f(z*, u) of the
same multiplicative-filter layer,

    f(z, u) = (W z + b) * sin(a) + c,     u = (a, c) = (gate(x), 0.5 sin(shift(x)))   (Fourier features of x)

decoded by a linear map. What changes: W is a CappedLinear (weight norm, its l2 operator norm capped at
``--cap`` inside the forward pass) and the gate is :class:`SineGate`, a module of this example with its own
Lipschitz rule (registered with lmdeq.models.register_lipschitz_rule; the proof is in its docstring), so
lipschitz_bound(f) <= cap < 1 and CertifiedDEQ solves every step from z = 0 with the a-priori iteration
counts of that bound (forward from 0, adjoint from v, relative residual 1e-3; no convergence check), the
gradient by the implicit function theorem. The warm start and the skipped solves of the TorchDEQ original are
gone: an a-priori count is certified from z = 0. ``deq.constraint_step()`` follows every optimiser step.

Printed at start and every ``--log-every`` steps: the bound L, the a-priori forward / adjoint counts, the
measured ||J_f(z*)||_2 (power iteration with jvp / vjp at the solved z*, per pixel — every pixel is a sample —
its max over the image) and the PSNR. ``--out DIR`` gets curve.json and curve.png. The image is random (smooth
noise), so no data is needed.

    python examples/certified_deq_inr.py --out /tmp/inr         # 64x64 image, 800 steps: about 1.5 min on a CPU core
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmdeq.deq import jacobian_norm
from lmdeq.errors import LmdeqError
from lmdeq.models import CappedLinear, CertifiedDEQ, Sequential, lipschitz_bound, register_lipschitz_rule
from lmdeq.solvers import adjoint_apriori_iterations, apriori_iterations

TOL = 1e-3   # the relative residual the a-priori counts guarantee (lmdeq.models.APRIORI_FORWARD's tol)


# -- the data ----------------------------------------------------------------------------------------------------
def random_image(size: int, seed: int) -> torch.Tensor:
    """A smooth random RGB image (size, size, 3) in [0, 1]: bicubically upsampled low-resolution noise (the
    TorchDEQ example's target)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, size // 4), max(2, size // 4), generator=gen)
    up = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=True)
    return up.clamp(0, 1)[0].permute(1, 2, 0)


def coordinates(size: int) -> torch.Tensor:
    """The (size * size, 2) pixel coordinates in [-1, 1]^2, row-major."""
    axis = torch.linspace(-1, 1, size)
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)


# -- the model ---------------------------------------------------------------------------------------------------
class FourierInjection(nn.Module):
    """u = (a, c): the gate's pre-activation a = gate(x) and the shift c = 0.5 sin(shift(x)), two Fourier-feature
    maps of the coordinates (frequencies scaled by ``scale``). It acts on x only, so it needs no bound."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.gate = nn.Linear(2, channels)
        self.shift = nn.Linear(2, channels)
        with torch.no_grad():
            self.gate.weight.mul_(scale)
            self.shift.weight.mul_(scale)

    def forward(self, x):
        return self.gate(x), 0.5 * torch.sin(self.shift(x))


class SineGate(nn.Module):
    """z * sin(a) + c for the input u = (a, c): the multiplicative filter's gate and shift.

    Lipschitz rule: 1 (in z, per sample, l2 norm). Proof: for a fixed input u the map z -> z * sin(a) + c is
    affine, z -> D z + c with D = diag(sin(a)), so ||g(z) - g(z')||_2 = ||D (z - z')||_2 <= ||D||_2 ||z - z'||_2
    and ||D||_2 = max_i |sin(a_i)| <= 1, for every a. The sine is applied here, not by the injection, so the
    bound holds whatever the injection computes.
    """

    takes_input = True   # lmdeq.models.Sequential calls it as block(z, u)

    def forward(self, z, u):
        a, c = u
        return z * torch.sin(a) + c


@register_lipschitz_rule(SineGate)
def _sine_gate(module: SineGate, bound) -> float:
    return 1.0   # SineGate's docstring


class CertifiedDEQINR(nn.Module):
    """coordinates -> u = FourierInjection(x) -> z* = f(z*, u) by CertifiedDEQ -> colour = decode(z*), with
    f = Sequential(CappedLinear(cap), SineGate()): L <= cap * 1."""

    def __init__(self, channels: int = 64, input_scale: float = 8.0, cap: float = 0.8,
                 forward_budget: int | None = None):
        super().__init__()
        self.channels = channels
        f = Sequential(CappedLinear(channels, channels, weight_norm=True, cap=cap, margin=0.05), SineGate())
        self.deq = CertifiedDEQ(f, injection=FourierInjection(channels, input_scale), forward_budget=forward_budget)
        self.decode = nn.Linear(channels, 3)

    def forward(self, x):
        z = self.deq(x, z0=torch.zeros(x.shape[0], self.channels, dtype=x.dtype, device=x.device))
        return self.decode(z)


# -- measurements ------------------------------------------------------------------------------------------------
def measured_jacobian(model: CertifiedDEQINR, x: torch.Tensor, iters: int) -> float:
    """max over the pixels of ||J_f(z*)||_2 at the solved z* of the image."""
    with torch.no_grad():
        u = model.deq.injection(x)
        z = model.deq(x, z0=torch.zeros(x.shape[0], model.channels, dtype=x.dtype))
    f = model.deq.f
    return float(jacobian_norm(lambda s: f(s, u), z.detach(), iters, per_sample=True).max())


def counts(L: float) -> tuple:
    """The a-priori (forward from 0, adjoint from v) counts for the bound L at the relative tol TOL."""
    return apriori_iterations(L, TOL), adjoint_apriori_iterations(L, TOL)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(-10 * torch.log10(F.mse_loss(pred.detach(), target)))


# -- the curve ---------------------------------------------------------------------------------------------------
def plot(curve: dict, target: torch.Tensor, fitted: torch.Tensor, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = curve["log"]
    steps = [r["step"] for r in rows]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.05]})
    a.plot(steps, [r["psnr"] for r in rows], "o-", ms=3)
    a.set_xlabel("training step")
    a.set_ylabel("PSNR (dB)")
    a.grid(alpha=0.3)
    a.set_title(f"Certified DEQ-INR: fit of a {curve['config']['size']}x{curve['config']['size']} image")
    b.plot(steps, [r["L"] for r in rows], "o-", ms=3, color="C3", label="certified bound L = lipschitz_bound(f)")
    b.plot(steps, [r["jacobian_norm"] for r in rows], "s--", ms=3, color="C2",
           label="measured max ||J_f(z*)|| over pixels")
    b.axhline(1.0, color="k", lw=0.8, ls=":")
    b.set_ylim(0, 1.1)
    b.set_xlabel("training step")
    b.set_ylabel("Lipschitz constant of z -> f(z, u)")
    b.grid(alpha=0.3)
    b.legend(loc="lower right", fontsize=8)
    first, last = rows[0], rows[-1]
    b.set_title(f"bound vs measured; a-priori counts fwd/adj {first['forward_count']}/{first['adjoint_count']}"
                f" -> {last['forward_count']}/{last['adjoint_count']}", fontsize=10)
    gap = torch.ones(target.shape[0], 2, 3)
    c.imshow(torch.cat([target, gap, fitted.clamp(0, 1)], dim=1).numpy(), interpolation="nearest")
    c.set_title(f"target | certified DEQ-INR ({curve['final']['psnr']:.1f} dB)")
    c.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=800, help="training steps (Adam)")
    p.add_argument("--size", type=int, default=64, help="image side (pixels)")
    p.add_argument("--channels", type=int, default=64, help="width of the equilibrium state")
    p.add_argument("--input-scale", type=float, default=8.0, help="Fourier feature frequency scale")
    p.add_argument("--cap", type=float, default=0.8, help="operator-norm cap of W, the bound of f (< 1)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--forward-budget", type=int, default=None,
                   help="iteration budget of the forward solve (the cap is scaled so the a-priori count stays <= it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--jacobian-iters", type=int, default=30, help="power iterations for ||J_f(z*)||")
    p.add_argument("--out", default=None, help="directory for curve.json and curve.png")
    args = p.parse_args(argv)
    for name in ("steps", "channels", "log_every", "jacobian_iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.size < 2:
        p.error("--size must be >= 2")
    if not 0 < args.cap < 1:
        p.error("--cap must lie in (0, 1): the bound of f is the cap")
    if args.forward_budget is not None and args.forward_budget < 1:
        p.error("--forward-budget must be >= 1")
    if not args.lr > 0:
        p.error("--lr must be > 0")
    return args


def run(args) -> int:
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    image = random_image(args.size, args.seed).reshape(-1, 3)
    x = coordinates(args.size)
    model = CertifiedDEQINR(args.channels, args.input_scale, args.cap, args.forward_budget)
    deq = model.deq
    L0 = lipschitz_bound(deq.f)
    fwd, adj = counts(L0)
    print(f"certified DEQ-INR: {args.size}x{args.size} image, state width {args.channels}, cap {args.cap}, "
          f"forward budget {args.forward_budget}", flush=True)
    print(f"certified bound L = lipschitz_bound(f) = {L0:.4f} (cap {args.cap} x SineGate 1); a-priori counts "
          f"(rel tol {TOL:g}): forward {fwd}, adjoint {adj}", flush=True)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    log = []
    for step in range(args.steps + 1):
        pred = model(x)
        loss = F.mse_loss(pred, image)
        if step % args.log_every == 0 or step == args.steps:
            L = deq.lipschitz_bound()
            info = deq.last_info
            fwd, adj = counts(L)
            row = {"step": step, "loss": loss.item(), "psnr": psnr(pred, image), "L": L, "forward_count": fwd,
                   "adjoint_count": adj, "f_nstep": info["f_nstep"], "f_residual": info["f_residual"],
                   "jacobian_norm": measured_jacobian(model, x, args.jacobian_iters),
                   "seconds": time.perf_counter() - start}
            log.append(row)
            print(f"step {step:4d}  loss {row['loss']:.5f}  psnr {row['psnr']:6.2f} dB  L {L:.4f}  counts "
                  f"{fwd}/{adj} (ran {row['f_nstep']})  measured ||J_f(z*)|| {row['jacobian_norm']:.4f}  "
                  f"{row['seconds']:6.1f} s", flush=True)
        if step == args.steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        deq.constraint_step()
    with torch.no_grad():
        fitted = model(x)
    final = {"psnr": psnr(fitted, image), "L": deq.lipschitz_bound(), "seconds": time.perf_counter() - start}
    final["forward_count"], final["adjoint_count"] = counts(final["L"])
    final["jacobian_norm"] = measured_jacobian(model, x, args.jacobian_iters)
    ok = all(r["L"] < 1 and r["jacobian_norm"] <= r["L"] for r in log + [final])
    print(f"final: psnr {final['psnr']:.2f} dB, L {final['L']:.4f} < 1, counts {final['forward_count']}/"
          f"{final['adjoint_count']}, measured ||J_f(z*)|| {final['jacobian_norm']:.4f} <= L: "
          f"{'yes' if ok else 'NO'}, {final['seconds']:.0f} s in all", flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        curve = {"example": "certified_deq_inr", "config": {k: v for k, v in vars(args).items() if k != "out"},
                 "tol": TOL, "log": log, "final": final, "torch_threads": torch.get_num_threads(), "bound_holds": ok}
        (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
        side = args.size
        plot(curve, image.reshape(side, side, 3), fitted.reshape(side, side, 3), out / "curve.png")
        print(f"wrote {out / 'curve.json'} and {out / 'curve.png'}", flush=True)
    return 0 if ok else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (LmdeqError, OSError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
