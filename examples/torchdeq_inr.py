"""A DEQ-zoo-style implicit neural representation (DEQ-INR), written against TorchDEQ's API only.

It fits an image: pixel coordinates x in [-1, 1]^2 -> colour, through the equilibrium z* = f(z*, u) of a
multiplicative-filter layer, f(z, u) = (W z + b) * sin(u_gate) + u_shift with u = Fourier features of x,
W weight-normalised (torchdeq.norm.apply_norm), decoded by a linear map. The loop is DEQ-INR's: the
first step solves from z = 0; every later step starts from the previous step's fixed point and skips the
solver (``solver_kwargs={'f_max_iter': 0}``) except every ``--resolve_every`` steps, the core's gradient
step (phantom gradient or IFT) giving the update. With ``--n_states > 1`` the states the core returns
are combined by ``torchdeq.loss.fp_correction``. Solver statistics are logged the generic way,
``{k: v.mean().item() for k, v in info.items()}``. The image is random (smooth noise), so the script
needs no data; ``--log_json`` writes one JSON line per step.

    python examples/torchdeq_inr.py --steps 200 --f_solver anderson --ift           # TorchDEQ's solvers
    python -m lmdeq.integrations.torchdeq examples/torchdeq_inr.py --steps 200 --f_solver anderson --ift
                                                     # the same script, unchanged, on lmdeq's solvers
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from torchdeq import get_deq
from torchdeq.loss import fp_correction
from torchdeq.norm import apply_norm, reset_norm
from torchdeq.utils import add_deq_args


def random_image(size: int, seed: int) -> torch.Tensor:
    """A smooth random RGB image (size, size, 3) in [0, 1]: upsampled low-resolution noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, size // 4), max(2, size // 4), generator=g)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=True).clamp(0, 1)[0].permute(1, 2, 0)


def coordinates(size: int) -> torch.Tensor:
    axis = torch.linspace(-1, 1, size)
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)


class FourierInjection(nn.Module):
    """u = (gate, shift): two Fourier-feature maps of the coordinates."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.gate = nn.Linear(2, channels)
        self.shift = nn.Linear(2, channels)
        with torch.no_grad():
            self.gate.weight.mul_(scale)
            self.shift.weight.mul_(scale)

    def forward(self, x):
        return torch.sin(self.gate(x)), 0.5 * torch.sin(self.shift(x))


class FilterLayer(nn.Module):
    """f(z, u) = (W z + b) * gate + shift."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(channels, channels)
        with torch.no_grad():
            self.linear.weight.mul_(0.5)

    def forward(self, z, u):
        gate, shift = u
        return self.linear(z) * gate + shift


class DEQINR(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.injection = FourierInjection(args.channels, args.input_scale)
        self.f = FilterLayer(args.channels)
        self.decode = nn.Linear(args.channels, 3)
        apply_norm(self.f, args=args)
        self.deq = get_deq(args)
        self.channels = args.channels

    def forward(self, x, z=None, skip_solver=False, **kwargs):
        if z is None:
            z = torch.zeros(x.shape[0], self.channels)
        u = self.injection(x)
        reset_norm(self.f)
        solver_kwargs = {"f_max_iter": 0} if skip_solver else {}
        z_out, info = self.deq(lambda z: self.f(z, u), z, solver_kwargs=solver_kwargs, **kwargs)
        return [self.decode(z) for z in z_out], z_out[-1], info


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add_deq_args(parser)
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--size", type=int, default=32, help="image side (pixels)")
    parser.add_argument("--channels", type=int, default=64, help="width of the equilibrium state")
    parser.add_argument("--input_scale", type=float, default=8.0, help="Fourier feature frequency scale")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--resolve_every", type=int, default=10,
                        help="solve from the previous fixed point every this many steps (0: only at the first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log_every", type=int, default=10)
    parser.add_argument("--log_json", type=str, default=None, help="write one JSON line of statistics per step here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.size < 2 or args.channels < 1:
        parser.error("--steps must be >= 1, --size >= 2 and --channels >= 1")
    return args


def psnr(pred, target):
    return float(-10 * torch.log10(F.mse_loss(pred.detach(), target)))


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    image = random_image(args.size, args.seed).reshape(-1, 3)
    x = coordinates(args.size)
    model = DEQINR(args)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    crit = lambda pred, target: F.mse_loss(pred, target)  # noqa: E731
    log = open(args.log_json, "w") if args.log_json else None
    z, start = None, time.perf_counter()
    for step in range(args.steps):
        skip = step > 0 and not (args.resolve_every and step % args.resolve_every == 0)
        outputs, z_star, info = model(x, z=z, skip_solver=skip)
        loss = fp_correction(crit, (outputs, image)) if len(outputs) > 1 else crit(outputs[-1], image)
        opt.zero_grad()
        loss.backward()
        opt.step()
        z = z_star.detach()
        stats = {k: v.mean().item() for k, v in info.items()}   # a generic logger
        record = {"step": step, "skip_solver": skip, "loss": loss.item(), "psnr": psnr(outputs[-1], image),
                  "states": len(outputs), "forward_steps": info["nstep"].mean().item(), **stats}
        if log:
            log.write(json.dumps(record) + "\n")
        if step % args.log_every == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {record['loss']:.5f}  psnr {record['psnr']:6.2f} dB  "
                  f"nstep {record['forward_steps']:4.1f}  rel {stats['rel_lowest']:.2e}  "
                  f"{'(solver skipped)' if skip else ''}", flush=True)
    model.eval()
    with torch.no_grad():
        outputs, _, info = model(x, sradius_mode=args.sradius_mode)
    final = {"final_psnr": psnr(outputs[-1], image), "eval_nstep": info["nstep"].mean().item(),
             "eval_rel_lowest": info["rel_lowest"].mean().item(), "seconds": time.perf_counter() - start}
    if log:
        log.write(json.dumps(final) + "\n")
        log.close()
    print(f"eval  psnr {final['final_psnr']:.2f} dB  nstep {final['eval_nstep']:.1f}  "
          f"rel {final['eval_rel_lowest']:.2e}  ({final['seconds']:.1f} s)")
    return 0 if math.isfinite(final["final_psnr"]) else 1


if __name__ == "__main__":
    sys.exit(main())
