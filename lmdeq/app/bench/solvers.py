"""Solver benchmark: lmdeq's solvers against TorchDEQ's on the same contractive problems.

Problem: f(z) = tanh(c * dwconv3x3(z) + x) per branch of a multi-resolution state, with the depthwise
kernel scaled to l1-norm 1 (so ||dwconv|| <= 1 by Young's inequality) and c < 1: a contraction.
Sizes: an MDEQ-large state (branches 32x32x32, 64x16x16, 128x8x8, 256x4x4: 61,440 floats per sample)
and a small one (MDEQ-small: 2 x 24x32x32 + ... = 24,576 + 6,144 = 30,720). TorchDEQ's solvers take a
flat tensor, so both libraries solve the flattened problem (B, n) there and lmdeq's also the list
state (its native MDEQ form). Every solve runs exactly ``max_iter`` steps (tol far below reach):
``max_iter`` f-evaluations, one more for Broyden (g(x0), then ``max_iter`` updates, in both libraries), so
times compare at equal f-evals.

Timing: per (problem, solver), the cases (lmdeq flat, lmdeq list, TorchDEQ flat) alternate round by
round after one warm-up round (:mod:`lmdeq.app.bench.interleave`); each row reports the median ms and its
spread, and the speed-up over TorchDEQ is the median (and spread) of the per-round ratios. The result
records the allocator, thread count and machine load (with a warning when the load was above the
thread count).
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from ... import solvers
from .device import device_slug, environment, load_average, load_record, sync
from .interleave import interleaved_rounds, ratio_spread, spread

__all__ = ["run", "PROBLEMS"]

PROBLEMS = {
    "mdeq-large": [(32, 32), (64, 16), (128, 8), (256, 4)],
    "mdeq-small": [(24, 32), (24, 16)],
}

PAIRS = [
    # (lmdeq solver, torchdeq solver, kwargs shared by both)
    ("fixed_point", "fixed_point_iter", {}),
    ("anderson", "anderson", {"m": 6, "lam": 1e-4}),
    ("broyden", "broyden", {}),
]


def make_problem(branches, batch: int, device, dtype=torch.float32, contraction: float = 0.7, seed: int = 0):
    """(f_list, f_flat, z0_list, z0_flat) for the multi-branch contraction described above."""
    g = torch.Generator().manual_seed(seed)
    kernels, inputs, shapes = [], [], []
    for c, s in branches:
        k = torch.rand(c, 1, 3, 3, generator=g)
        kernels.append((k / k.sum(dim=(1, 2, 3), keepdim=True)).to(device, dtype))
        inputs.append(torch.randn(batch, c, s, s, generator=g).to(device, dtype))
        shapes.append((batch, c, s, s))
    sizes = [math.prod(s[1:]) for s in shapes]

    def f_list(zs):
        return [torch.tanh(contraction * F.conv2d(z, k, padding=1, groups=k.shape[0]) + x)
                for z, k, x in zip(zs, kernels, inputs)]

    def f_flat(z, tau=1.0):
        parts = [p.reshape(s) for p, s in zip(z.split(sizes, dim=1), shapes)]
        out = torch.cat([o.flatten(1) for o in f_list(parts)], dim=1)
        return out if tau == 1.0 else tau * out + (1 - tau) * z

    z0_list = [torch.zeros(s, device=device, dtype=dtype) for s in shapes]
    z0_flat = torch.zeros(batch, sum(sizes), device=device, dtype=dtype)
    return f_list, f_flat, z0_list, z0_flat


def _residual(f_flat, z):
    return float((f_flat(z) - z).flatten(1).norm(dim=1).max())


def result_name(device) -> str:
    """The result file's name on ``device``: solvers-<device slug>.json."""
    return f"solvers-{device_slug(torch.device(device))}.json"


def run(device="cpu", batch: int = 32, max_iter: int = 18, repeats: int = 3, problems=None,
        out_dir: Optional[str] = None, log=None) -> Dict:
    """Time every (lmdeq, TorchDEQ) solver pair on every problem, ``repeats`` interleaved rounds each; write
    the JSON into ``out_dir`` (if given; its path as ``result["path"]``); return the result dict."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    load_start = load_average()
    try:
        import torchdeq.solver as tds
    except ImportError:
        tds = None
        log("torchdeq not installed: timing lmdeq only (pip install 'torchdeq==0.1.0' to compare)")
    device = torch.device(device)
    rows: List[Dict] = []
    for pname in problems or list(PROBLEMS):
        f_list, f_flat, z0_list, z0_flat = make_problem(PROBLEMS[pname], batch, device)
        n = z0_flat.shape[1]
        for ours, theirs, kw in PAIRS:
            common = dict(max_iter=max_iter, tol=1e-30, stop_mode="abs", **kw)
            solver = solvers.SOLVERS[ours](**common)
            cases = {("lmdeq", "flat"): lambda: solver.run(f_flat, z0_flat),
                     ("lmdeq", "list"): lambda: solver.run(f_list, z0_list)}
            if tds is not None:
                cases[("torchdeq", "flat")] = lambda: tds.get_solver(theirs)(f_flat, z0_flat, **common)
            with torch.no_grad():
                times = interleaved_rounds(cases, repeats, warmup=1, sync=lambda: sync(device))
            case_rows = {}
            for (lib, form), fn in cases.items():
                with torch.no_grad():
                    z, _, info = fn()
                    zf = z if torch.is_tensor(z) else torch.cat([p.flatten(1) for p in z], dim=1)
                    res = _residual(f_flat, zf)
                ms = [1e3 * t for t in times[(lib, form)]]
                row = {"problem": pname, "floats_per_sample": n, "batch": batch, "solver": ours, "library": lib,
                       "state": form, "ms": spread(ms)["median"], "ms_spread": spread(ms), "ms_all": ms,
                       "f_evals": max_iter + (ours == "broyden"), "residual": res}
                case_rows[(lib, form)] = row
                rows.append(row)
            for (lib, form), row in case_rows.items():
                if lib == "lmdeq" and ("torchdeq", "flat") in case_rows:
                    ratio = ratio_spread(case_rows[("torchdeq", "flat")]["ms_all"], row["ms_all"])
                    row["speedup_vs_torchdeq"] = ratio["median"]
                    row["speedup_vs_torchdeq_spread"] = ratio
                log(f"{pname:11s} {ours:11s} {lib:8s} {form:4s} {row['ms']:9.2f} ms (IQR "
                    f"{row['ms_spread']['iqr']:.2f}, {row['ms_spread']['min']:.2f}-{row['ms_spread']['max']:.2f})  "
                    f"residual {row['residual']:.3e}"
                    + (f"  x{row['speedup_vs_torchdeq']:.2f} TorchDEQ" if "speedup_vs_torchdeq" in row else ""))
    env = environment(device)
    load = load_record(load_start, load_average(), env["threads"])
    if load["warning"]:
        log("WARNING: " + load["warning"])
    result = {"benchmark": "solvers", "env": env, "load": load, "max_iter": max_iter, "repeats": repeats,
              "timing": "interleaved rounds", "rows": rows}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, result_name(device))
        with open(path, "w") as fh:
            json.dump(result, fh, indent=1)
        result["path"] = path
    return result
