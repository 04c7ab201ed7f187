"""Kernel benchmarks (not tests): every op's fused backends against the eager composite.

For each op and for MDEQ-small / MDEQ-large states (``lmdeq.models`` presets cifar10-small and
cifar10-large) at batch 32 and 128, time (median):

* ``eager``   -- the plain-PyTorch composite (``lmdeq.ops.reference``: what TorchDEQ and the authors'
                 code do, op by op);
* ``compile`` -- torch.compile of that composite (ops 1 and 2);
* ``cpu`` / ``cuda`` / ``triton`` -- the public op with LMDEQ_BACKEND forced to that backend (the
                 backends available on the device; Triton only on GPU);
* op 3 (b) on GPU also ``cuda-nograph`` / ``triton-nograph`` (LMDEQ_CUDA_GRAPHS=0).

The variants of one case alternate round by round (eager, compile, cpu, ... then again; ``--rounds``,
default 3 on CPU, 1 on GPU where do_bench's own repeats are robust), each round one timer median per
variant (:mod:`lmdeq.app.bench.interleave`). The cases run headline first (MDEQ-large at batch 128, then op 3 of
MDEQ-large, then the rest; ``--cases`` picks and orders them), and the JSON is rewritten after every case
(``"complete": false`` until the last), so a run cut short keeps the rows that matter most. Reports the median
over rounds with its spread (min, max, quartiles), the speedup over eager as the median of the per-round
ratios, GB/s of the minimum traffic
(each input read once, each output written once), on GPU the fraction of the device's copy bandwidth
measured in the same run and the kernel-launch API calls and kernels per call (torch.profiler); the
JSON records the allocator, threads and the machine's load at start and end (a warning when it was
above the thread count). Writes <out>/kernels-<device>.json (after every case), .png and .md (the table of
eager, torch.compile and fused, :func:`markdown`) at the end, into ``--out`` (default: a new run folder outside
the checkout, :mod:`lmdeq.app.bench.outputs`; existing result files are refused unless ``--force``).
``--skip-backends`` leaves fused backends out (scripts/gpu_check.sh: those whose GPU tests failed, whose wrong
results or crashes would spoil the run). Entry point: benchmarks/kernels.py:
    python benchmarks/kernels.py [--device cpu|cuda] [--quick] [--rounds N] [--compile-for all|none|large:128,...]
                                 [--cases all|large:128,large:1,...] [--skip-backends cuda,triton]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from ... import ops
from .. import argtypes
from ..argtypes import positive_int
from ..command import configure_or_exit, run_command
from ..faults import fault_point
from ...models import mdeq
from ...ops import backends, reference
from .device import device_slug, environment, fmt_loads, load_average, load_record
from .interleave import interleaved, ratio_spread, spread
from .outputs import add_out_arguments, result_dir
from .report import fmt_value, load_note, markdown_table

PRESETS = {"small": "cifar10-small", "large": "cifar10-large"}
# The cases in the order they run, the headline first: ops 1 and 2 at (size, batch), op 3 (which has no batch)
# as (size, 1). A run cut short (a GPU window's time cap) keeps every case measured before it, so the issue's
# targets (MDEQ-large at batch 128, op 3 of MDEQ-large) come first.
CASES = (("large", 128), ("large", 1), ("large", 32), ("small", 128), ("small", 1), ("small", 32))
ANDERSON_M = 6
TAU = 0.7


# ---- timing -----------------------------------------------------------------------------------------

def median_ms(fn: Callable[[], object], device: torch.device, quick: bool) -> float:
    """Median wall time of fn in ms: CUDA events via triton's do_bench (L2 flushed between runs) on GPU,
    torch.utils.benchmark on CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=10 if quick else 25, rep=30 if quick else 100, return_mode="median"))
    from torch.utils.benchmark import Timer

    fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.3 if quick else 1.0).median * 1e3


def copy_bandwidth_gbps(device: torch.device, quick: bool) -> float:
    """Device copy bandwidth (bytes read + written per second) of one large tensor copy."""
    n = (64 if device.type == "cpu" else 256) * 2 ** 20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, quick)
    return 2 * src.numel() * 4 / ms / 1e6


def launches(fn: Callable[[], object], device: torch.device) -> Dict[str, Optional[int]]:
    """Kernel-launch API calls (graph launches included) and kernels executed by one call of fn."""
    if device.type != "cuda":
        return {"launch_calls": None, "kernels": None}
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    api = sum(1 for n in names if n in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel",
                                        "cuLaunchKernelEx", "cudaGraphLaunch"))
    kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return {"launch_calls": api, "kernels": kernels}


@contextlib.contextmanager
def env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def forced(backend: str, fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        with env(LMDEQ_BACKEND=backend):
            return fn()
    return run


def without_graphs(fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        with env(LMDEQ_CUDA_GRAPHS="0"):
            return fn()
    return run


# ---- cases ------------------------------------------------------------------------------------------

def fused_backends(device: torch.device, skip=()) -> List[str]:
    """The fused backends that run on ``device``, less those in ``skip``."""
    return [b for b in ("cuda", "triton", "cpu")
            if b not in skip and backends.unavailable_reason(b, device.type) is None]


def model_parts(preset: str):
    model = mdeq(preset)
    capped = [c for c in model.cell.convs() if c.cap is not None]
    return model, [c for c in capped if c.kernel_size > 1], [c for c in capped if c.kernel_size == 1]


def op1_cases(device, dtype, batch, shapes):
    zs = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    fzs = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    nbytes = 3 * sum(z.numel() for z in zs) * zs[0].element_size()
    return nbytes, (lambda: reference.fixed_point_update_multi(zs, fzs, TAU)), \
        (lambda: ops.fixed_point_update_multi(zs, fzs, TAU)), (reference.fixed_point_update_multi, (zs, fzs, TAU))


def op2_cases(device, dtype, batch, n):
    X = torch.randn(batch, ANDERSON_M, n, device=device, dtype=dtype)
    Fh = torch.randn_like(X)
    alpha = torch.softmax(torch.randn(batch, ANDERSON_M, device=device), dim=1)
    item = X.element_size()
    gram = (2 * X.numel() * item, (lambda: reference.anderson_gram_row(X, Fh, 2)),
            (lambda: ops.anderson_gram_row(X, Fh, 2)), (reference.anderson_gram_row, (X, Fh, 2)))
    mix = ((2 * X.numel() + batch * n) * item, (lambda: reference.anderson_mix(X, Fh, alpha, TAU)),
           (lambda: ops.anderson_mix(X, Fh, alpha, TAU)), (reference.anderson_mix, (X, Fh, alpha, TAU)))
    return {"anderson_gram_row": gram, "anderson_mix": mix}


def interleaved_case(fns: Dict[str, Callable[[], object]], rounds: int,
                     median_of: Callable[[Callable[[], object]], float]) -> Dict[str, dict]:
    """Per variant of one case: ``median_of(fn)`` (a timer's median, ms) in ``rounds`` interleaved rounds;
    returns {variant: {ms_all, spread, speedup (per-round ratios to the first variant, the baseline)}}."""
    ms = interleaved({v: (lambda fn=fn: median_of(fn)) for v, fn in fns.items()}, rounds)
    base = next(iter(fns))
    return {v: {"ms_all": ms[v], "spread": spread(ms[v]), "speedup": ratio_spread(ms[base], ms[v])} for v in fns}


def run(device: torch.device, quick: bool, compile_for: Optional[set], dtypes: List[torch.dtype],
        rounds: int, cases=CASES, skip_backends=(), on_case: Optional[Callable[[dict], None]] = None) -> dict:
    """All measurements of ``cases`` ((size, batch) pairs, op 3 as (size, 1)), in their order; ``compile_for``
    limits the torch.compile baseline to {(size, batch)} (None: all). ``on_case(result)`` is called with the
    result so far after every case."""
    copy_bw = copy_bandwidth_gbps(device, quick)
    rows: List[dict] = []
    fused = fused_backends(device, skip_backends)
    result = {"benchmark": "kernels", "environment": environment(device), "copy_bandwidth_GBps": copy_bw, "threads": torch.get_num_threads(),
              "rounds": rounds, "timing": "interleaved rounds", "build": backends.build_info(),
              "cases": [f"{size}:{batch}" for size, batch in cases], "skipped_backends": sorted(skip_backends),
              "rows": rows}
    models = {}

    def parts(size):
        if size not in models:
            models[size] = model_parts(PRESETS[size])
        return models[size]

    def measure(op, size, batch, dtype, fns: Dict[str, Callable[[], object]], nbytes: int, extra=None):
        """Time every variant of one case, interleaved over rounds, so that a change of machine load
        mid-case does not favour one variant; the first variant (eager) is the baseline."""
        case = interleaved_case(fns, rounds, lambda fn: median_ms(fn, device, quick))
        for v, fn in fns.items():
            ms = case[v]["spread"]["median"]
            row = dict(op=op, size=size, batch=batch, dtype=str(dtype).replace("torch.", ""), variant=v,
                       median_ms=ms, ms_spread=case[v]["spread"], ms_all=case[v]["ms_all"],
                       speedup_vs_eager=case[v]["speedup"]["median"], speedup_spread=case[v]["speedup"])
            if nbytes:
                row["GBps"] = nbytes / ms / 1e6
                row["frac_copy_bw"] = row["GBps"] / copy_bw
            row.update(launches(fn, device))
            row.update(extra or {})
            rows.append(row)
            print(f"  {op:26s} {size:5s} B={batch:<4d} {row['dtype']:8s} {v:15s} {ms:9.4f} ms "
                  f"[{row['ms_spread']['min']:.4f}-{row['ms_spread']['max']:.4f}]  x{row['speedup_vs_eager']:.2f}",
                  flush=True)

    def compare(op, size, batch, dtype, nbytes, eager, fused_fn, compilable):
        fns = {"eager": eager}
        if compilable is not None and (compile_for is None or (size, batch) in compile_for):
            fn, args = compilable
            compiled = torch.compile(fn, fullgraph=True, dynamic=False)
            fns["compile"] = lambda: compiled(*args)
        fns.update({b: forced(b, fused_fn) for b in fused})
        measure(op, size, batch, dtype, fns, nbytes)

    def batched_ops(size, batch):
        """Ops 1 and 2 on the states of ``size`` at ``batch``."""
        model, _, _ = parts(size)
        shapes = model.cell.state_shapes(batch)
        n = sum(c * h * w for _, c, h, w in shapes)
        for dtype in dtypes:
            nbytes, eager, fused_fn, comp = op1_cases(device, dtype, batch, shapes)
            compare("fixed_point_update_multi", size, batch, dtype, nbytes, eager, fused_fn, comp)
            for op, (nbytes, eager, fused_fn, comp) in op2_cases(device, dtype, batch, n).items():
                compare(op, size, batch, dtype, nbytes, eager, fused_fn, comp)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def power_iterations(size):
        """Op 3: all constrained layers of the model, n_iter = the preset's power iterations per step."""
        model, spatial, pointwise = parts(size)
        n_iter = model.config["power_iters"]
        ws = [c.unscaled_weight().detach().to(device) for c in spatial]
        vs = [c.power_vector.to(device) for c in spatial]
        st, pd = [c.stride for c in spatial], [c.padding for c in spatial]
        fns = {"eager": lambda: reference.conv_power_iteration(ws, vs, st, pd, n_iter)}
        for b in fused:
            fns[b] = forced(b, lambda: ops.conv_power_iteration(ws, vs, st, pd, n_iter))
            if device.type == "cuda":
                fns[f"{b}-nograph"] = without_graphs(fns[b])
        measure("conv_power_iteration", size, 1, torch.float32, fns, 0, {"layers": len(ws), "n_iter": n_iter})
        mats = [c.unscaled_weight().detach().reshape(c.out_channels, -1).to(device) for c in pointwise]
        us = [c.power_vector.to(device) for c in pointwise]
        if mats:
            fns = {"eager": lambda: reference.power_iteration_matrices(mats, us, n_iter)}
            fns.update({b: forced(b, lambda: ops.power_iteration_matrices(mats, us, n_iter)) for b in fused})
            measure("power_iteration_matrices", size, 1, torch.float32, fns,
                    2 * n_iter * sum(m.numel() for m in mats) * 4, {"layers": len(mats), "n_iter": n_iter})

    for size, batch in cases:
        if batch == 1:
            power_iterations(size)
        else:
            batched_ops(size, batch)
        if on_case is not None:
            on_case(result)
    return result


# ---- report -----------------------------------------------------------------------------------------

OP_NAMES = {"fixed_point_update_multi": "op 1: fixed-point update", "anderson_gram_row": "op 2: Anderson Gram row",
            "anderson_mix": "op 2: Anderson mix", "power_iteration_matrices": "op 3a: matrix power iteration",
            "conv_power_iteration": "op 3b: conv power iteration"}
SIZE_NAMES = {"small": "MDEQ-small", "large": "MDEQ-large"}


def _cases(result: dict) -> List[tuple]:
    """The (op, size, batch, dtype) cases of a result in the figure's and table's order: op, then size, batch."""
    ops, sizes = list(OP_NAMES), list(PRESETS)
    keys = {(r["op"], r["size"], r["batch"], r["dtype"]) for r in result["rows"]}
    return sorted(keys, key=lambda k: (ops.index(k[0]) if k[0] in ops else len(ops), k[0],
                                       sizes.index(k[1]) if k[1] in sizes else len(sizes), k[2], k[3]))


def _variants(result: dict) -> List[str]:
    """The variants of a result other than eager, torch.compile first, then the fused backends as measured."""
    seen = list(dict.fromkeys(r["variant"] for r in result["rows"] if r["variant"] != "eager"))
    return sorted(seen, key=lambda v: v != "compile")


def _row(result: dict, case: tuple, variant: str) -> Optional[dict]:
    return next((r for r in result["rows"] if (r["op"], r["size"], r["batch"], r["dtype"]) == case
                 and r["variant"] == variant), None)


def compile_comparison(result: dict) -> List[dict]:
    """Per case with a torch.compile baseline: the fused backend fastest against eager, both speed-ups over
    eager, and compile ms / fused ms per round (the median and spread of the ratio; > 1: the fused kernel is
    faster)."""
    out = []
    for case in _cases(result):
        comp = _row(result, case, "compile")
        fused = [r for r in (_row(result, case, v) for v in _variants(result) if v != "compile") if r]
        if comp is None or not fused:
            continue
        best = max(fused, key=lambda r: r["speedup_vs_eager"])
        out.append({"case": case, "fused": best["variant"], "fused_x": best["speedup_vs_eager"],
                    "compile_x": comp["speedup_vs_eager"], "ratio": ratio_spread(comp["ms_all"], best["ms_all"])})
    return out


def _case_name(case: tuple, dtype: bool = True) -> str:
    """'op 2: Anderson mix, MDEQ-large B=128[, float32]' (op 3 has no batch)."""
    op, size, batch, dt = case
    return (f"{OP_NAMES.get(op, op)}, {SIZE_NAMES.get(size, size)}" + (f" B={batch}" if batch > 1 else "")
            + (f", {dt}" if dtype else ""))


def plot_notes(result: dict) -> List[str]:
    """The lines under the kernel figure: what the bars and whiskers are, how torch.compile compares with the
    fused kernels (from :func:`compile_comparison`), and the load warning."""
    lines = [f"bars: median over {result['rounds']} interleaved rounds of the per-round ratio eager ms / variant ms "
             "(> 1: faster than the eager composite); whiskers: min-max of those ratios; log scale"]
    cmp = compile_comparison(result)
    if cmp:
        wins = [c for c in cmp if c["ratio"]["median"] < 1]
        one_dtype = len({c["case"][3] for c in cmp}) == 1
        lines.append(f"torch.compile is faster than the fastest fused backend (median of the per-round ratios) in "
                     f"{len(wins)} of the {len(cmp)} cases with a compile baseline" + (": " if wins else "") +
                     "; ".join(f"{_case_name(c['case'], not one_dtype)} (compile {c['compile_x']:.1f}x eager, "
                               f"{c['fused']} {c['fused_x']:.1f}x)" for c in wins))
    return lines + load_note(result.get("load"))


def plot(result: dict, path) -> str:
    """The kernel figure (PNG): per case, each variant's speed-up over the eager composite (median of the per-round
    ratios, min-max whiskers, the value written on the bar), on a log axis, the cases grouped by op; with
    :func:`plot_notes` under it. Returns ``path``."""
    import matplotlib.ticker

    from .report import figure, save_figure

    cases, variants = _cases(result), _variants(result)
    dtypes = sorted({c[3] for c in cases})
    fig, (ax,) = figure(f"lmdeq's fused kernels against the eager PyTorch composite: {result['environment']['device']}"
                        f", {', '.join(dtypes)}", (max(8.0, 0.75 * len(cases) + 1.5), 4.6), plot_notes(result))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        xs, ys, lo, hi = [], [], [], []
        for g, case in enumerate(cases):
            r = _row(result, case, v)
            if r is not None:
                spread_ = r.get("speedup_spread") or {"min": r["speedup_vs_eager"], "max": r["speedup_vs_eager"]}
                xs.append(g + (i - (len(variants) - 1) / 2) * width)
                ys.append(r["speedup_vs_eager"])
                lo.append(r["speedup_vs_eager"] - spread_["min"])
                hi.append(spread_["max"] - r["speedup_vs_eager"])
        label = "torch.compile of the composite" if v == "compile" else f"lmdeq fused, {v} backend"
        bars = ax.bar(xs, ys, width, label=label, yerr=[lo, hi], capsize=2, error_kw={"elinewidth": 0.8})
        ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], fontsize=6, padding=1)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}x"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(top=ax.get_ylim()[1] * 1.5)
    ax.set_xticks(range(len(cases)), [f"{SIZE_NAMES.get(s, s)}" + (f"\nB={b}" if b > 1 else "") for _, s, b, _ in cases],
                  fontsize=7)
    ops = list(dict.fromkeys(c[0] for c in cases))
    for op in ops:
        at = [g for g, c in enumerate(cases) if c[0] == op]
        ax.annotate(OP_NAMES.get(op, op).replace(": ", ":\n", 1), ((at[0] + at[-1]) / 2, 0),
                    xycoords=("data", "axes fraction"),
                    xytext=(0, -30), textcoords="offset points", ha="center", va="top", fontsize=8)
        if at[0] > 0:
            ax.axvline(at[0] - 0.5, color="0.75", lw=0.8)
    ax.set_xlim(-0.6, len(cases) - 0.4)
    ax.set_ylabel("speed-up over the eager composite")
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def markdown(result: dict) -> str:
    """The kernel result as a Markdown table (README / docs): per case, eager ms (min-max), then every variant's ms
    and speed-up over eager, and, where torch.compile ran, compile ms / fused ms of the fastest fused backend per
    round (> 1: the fused kernel is faster); with the run's device, rounds and load, and the cases where
    torch.compile wins. Every number comes from ``result``."""
    variants = _variants(result)
    cmp = {c["case"]: c for c in compile_comparison(result)}
    columns = ["case", "eager"] + variants + (["vs"] if cmp else [])
    heads = (["case", "eager ms (min-max)"]
             + [("torch.compile" if v == "compile" else f"fused {v}") + " ms (x eager)" for v in variants]
             + (["torch.compile ms / fused ms (min-max)"] if cmp else []))
    rows = []
    for case in _cases(result):
        eager = _row(result, case, "eager")
        row = {"case": _case_name(case), "eager": "-" if eager is None else
               f"{fmt_value(eager['median_ms'])} ({fmt_value(eager['ms_spread']['min'])}-"
               f"{fmt_value(eager['ms_spread']['max'])})"}
        for v in variants:
            r = _row(result, case, v)
            row[v] = "-" if r is None else f"{fmt_value(r['median_ms'])} ({r['speedup_vs_eager']:.2f}x)"
        c = cmp.get(case)
        row["vs"] = "-" if c is None else \
            f"{c['fused']}: {c['ratio']['median']:.2f} ({c['ratio']['min']:.2f}-{c['ratio']['max']:.2f})"
        rows.append(row)
    load = result.get("load") or {}
    header = (f"Kernel benchmark on {result['environment']['device']}, torch {result['environment']['torch']}: "
              f"medians of {result['rounds']} interleaved rounds; x eager is the median of the per-round ratios "
              "(a noisy eager time, see its min-max, makes it noisy too)"
              + ("; the last column, per-round ratios of the fastest fused backend and torch.compile timed side by "
                 "side, is above 1 where the fused kernel is faster" if cmp else "")
              + f". Load average (1/5/15 min) at start {fmt_loads(load.get('loadavg_start'))}, at end "
              f"{fmt_loads(load.get('loadavg_end'))}; {result['threads']} threads.")
    notes = plot_notes(result)[1:]
    return "\n\n".join([header, markdown_table(rows, columns, heads)] + (["\n".join(notes)] if notes else [])) + "\n"


def summary(result: dict, device: torch.device) -> List[str]:
    load = result["load"]
    lines = [f"device: {result['environment']['device']}; copy bandwidth {result['copy_bandwidth_GBps']:.0f} GB/s; "
             f"allocator {result['environment']['allocator'].get('source')}; {result['threads']} threads; "
             f"{result['rounds']} interleaved rounds per case; load average (1/5/15 min) start "
             f"{fmt_loads(load['loadavg_start'])}, end {fmt_loads(load['loadavg_end'])}",
             f"{'op':26s} {'size':5s} {'B':>4s} {'dtype':8s} {'variant':15s} {'ms':>9s} {'min-max ms':>19s} "
             f"{'GB/s':>8s} {'%copy':>6s} {'x eager':>8s} {'launch':>6s}"]
    for r in result["rows"]:
        gbps = f"{r['GBps']:8.1f}" if "GBps" in r else " " * 8
        frac = f"{100 * r['frac_copy_bw']:5.0f}%" if "frac_copy_bw" in r else " " * 6
        launch = f"{r['launch_calls']:6d}" if r.get("launch_calls") is not None else " " * 6
        mm = f"{r['ms_spread']['min']:.4f}-{r['ms_spread']['max']:.4f}"
        lines.append(f"{r['op']:26s} {r['size']:5s} {r['batch']:4d} {r['dtype']:8s} {r['variant']:15s} "
                     f"{r['median_ms']:9.4f} {mm:>19s} {gbps} {frac} {r['speedup_vs_eager']:8.2f} {launch}")
    return lines


def targets(result: dict, device: torch.device) -> List[str]:
    """The issue's speed targets, checked against this run."""
    def row(op, size, batch, variant, dtype="float32"):
        hit = [r for r in result["rows"] if (r["op"], r["size"], r["batch"], r["variant"], r["dtype"])
               == (op, size, batch, variant, dtype)]
        return hit[0] if hit else None

    lines = []
    best = lambda op, size, batch: max((r for r in result["rows"] if r["op"] == op and r["size"] == size
                                        and r["batch"] == batch and r["variant"] not in ("eager", "compile")
                                        and r["dtype"] == "float32"),
                                       key=lambda r: r["speedup_vs_eager"], default=None)
    op1 = best("fixed_point_update_multi", "large", 128)
    if op1 is not None:
        comp = row("fixed_point_update_multi", "large", 128, "compile")
        msg = (f"op 1 MDEQ-large B=128 fp32 [{op1['variant']}]: x{op1['speedup_vs_eager']:.2f} eager "
               f"(target >= {3 if device.type == 'cuda' else 2})")
        if device.type == "cuda":
            msg += f", {100 * op1['frac_copy_bw']:.0f}% of copy bandwidth (target >= 90%)"
        if comp is not None:
            msg += f", x{comp['median_ms'] / op1['median_ms']:.2f} vs torch.compile (target > 1)"
        lines.append(msg)
    for op in ("anderson_gram_row", "anderson_mix"):
        r = best(op, "large", 128)
        if r is not None:
            lines.append(f"op 2 {op} m={ANDERSON_M} MDEQ-large B=128 [{r['variant']}]: x{r['speedup_vs_eager']:.2f} "
                         f"eager (target >= 2 on GPU)")
    r = best("conv_power_iteration", "large", 1)
    if r is not None:
        lines.append(f"op 3b conv power iteration, {r['layers']} convs of cifar10-large, n_iter={r['n_iter']} "
                     f"[{r['variant']}]: x{r['speedup_vs_eager']:.2f} eager (target >= 5 on GPU); launch calls "
                     f"{r.get('launch_calls')}, kernels {r.get('kernels')}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The command line of benchmarks/kernels.py."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", type=argtypes.device, default="auto", help="auto (CUDA if available), cpu, cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--rounds", type=positive_int, default=None,
                        help="interleaved rounds per case (default: 3 on CPU, 1 on GPU)")
    parser.add_argument("--compile-for", type=parse_compile_for, default=None,
                        help="torch.compile baselines for these SIZE:BATCH cases, e.g. large:128 ('all', 'none')")
    parser.add_argument("--cases", type=parse_cases, default=CASES,
                        help="SIZE:BATCH cases in the order to run, op 3 as SIZE:1, e.g. large:128,large:1 "
                             "(default 'all': the headline first, " + ",".join(f"{s}:{b}" for s, b in CASES) + ")")
    parser.add_argument("--skip-backends", type=parse_backends, action="append", default=[],
                        help="fused backends to leave out, comma-separated (repeatable), e.g. cuda")
    parser.add_argument("--dtypes", type=argtypes.dtype_list, default="float32", help="comma-separated, e.g. float32,bfloat16")
    add_out_arguments(parser, "kernels")
    return parser


def parse_cases(text: str) -> tuple:
    """'all' or 'SIZE:BATCH,...' -> ((size, batch), ...); argparse.ArgumentTypeError naming a bad item."""
    if text == "all":
        return CASES
    cases = []
    for item in (c.strip() for c in text.split(",") if c.strip()):
        size, _, batch = item.partition(":")
        if size not in PRESETS or not batch.isdigit() or int(batch) < 1:
            raise argparse.ArgumentTypeError(f"expected SIZE:BATCH with SIZE one of {sorted(PRESETS)} and BATCH >= 1 "
                                             f"(op 3: SIZE:1), got {item!r}")
        cases.append((size, int(batch)))
    if not cases:
        raise argparse.ArgumentTypeError(f"no case in {text!r}")
    return tuple(dict.fromkeys(cases))


def parse_compile_for(text: str) -> Optional[set]:
    """'all' -> None (every case), 'none' -> no case, 'SIZE:BATCH,...' -> that set (:func:`parse_cases`)."""
    if text == "all":
        return None
    return set() if text == "none" else set(parse_cases(text))


def parse_backends(text: str) -> List[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in ("cuda", "triton", "cpu")]
    if bad:
        raise argparse.ArgumentTypeError(f"backends are cuda, triton, cpu; got {bad}")
    return names


def write_json(path: Path, result: dict) -> None:
    """Replace ``path`` by the result as JSON, atomically: a run killed mid-write keeps the previous version."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def result_names(device: torch.device) -> List[str]:
    """The files a run writes: kernels-<device slug>.json, .png and .md."""
    return [f"kernels-{device_slug(device)}{ext}" for ext in (".json", ".png", ".md")]


def main(argv=None) -> int:
    configure_or_exit("kernels")   # lmdeq's own process: pinned allocator unless LMDEQ_TUNE_ALLOCATOR=0
    args = build_parser().parse_args(argv)
    args.handler = measure_and_write
    return run_command(args, "kernels")


def measure_and_write(args) -> int:
    """The benchmark of parsed arguments: result files checked (:func:`lmdeq.app.bench.outputs.result_dir`), every
    case measured, JSON after each, then the PNG and the Markdown table."""
    load_start = load_average()
    from ..train.run import resolve_device

    device = resolve_device(args.device)
    rounds = args.rounds or (1 if device.type == "cuda" else 3)
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    compile_for = args.compile_for
    skip = sorted({b for names in args.skip_backends for b in names})
    if skip:
        print(f"leaving out the fused backends {', '.join(skip)} (--skip-backends)", flush=True)
    json_name, png_name, md_name = result_names(device)
    out = result_dir(args.out, "kernels", [json_name, png_name, md_name], args.force)

    def finish(result: dict, complete: bool) -> None:
        """The load record and the targets of the rows so far, written to the JSON."""
        result["load"] = load_record(load_start, load_average(), result["threads"])
        result["targets"] = targets(result, device)
        result["complete"] = complete
        write_json(out / json_name, result)

    def after_case(result: dict) -> None:
        finish(result, complete=False)   # a run cut short (a time cap) keeps every case so far
        fault_point("kernels:case")

    torch.manual_seed(0)
    with torch.no_grad():
        result = run(device, args.quick, compile_for, dtypes, rounds, args.cases, skip, on_case=after_case)
    finish(result, complete=True)
    plot(result, out / png_name)
    (out / md_name).write_text(markdown(result))
    print("\n".join(summary(result, device) + ["", "targets:"] + result["targets"]))
    if result["load"]["warning"]:
        print("WARNING: " + result["load"]["warning"])
    print(f"wrote {out / json_name}, {out / png_name} and {out / md_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
