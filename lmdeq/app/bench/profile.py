"""Where the time of one training step goes: the step run once under torch.profiler, its time split into
phases, operator classes and the operators that take the most time.

Phases are the ranges that lmdeq and the benchmark mark with ``torch.profiler.record_function``
(:data:`PHASES`; :func:`marked_modules` marks a module's forward pass, e.g. the stem and the head). The
backward pass of a phase is found through autograd's sequence numbers: a backward node carries the
number of the forward operator that recorded it, so the backward work of, e.g., the head or of the
tracked f(z*) (the gradient into the parameters) is reported as "<phase> backward". Work run inside a
phase's range (the adjoint solve's vector-Jacobian products run inside ``lmdeq::adjoint_solve``) counts
to that phase.

Every profiled event's *self* time goes to exactly one owner: the innermost enclosing phase range, else
the phase whose forward operator recorded the innermost enclosing backward node, else ``rest``; so the
phases partition ``busy_ms``, the sum of all self times. Clock: on CUDA, device time (kernel and copy
durations, each counted to the operator that launched it), so host overhead shows as busy < wall; on
CPU, host time, where wall - busy is Python time between the profiled operators.

Operator classes split the same self times by what the operator does (:func:`op_class`): convolutions,
batch norm, matrix products, copies, other operators (elementwise arithmetic and reductions: the
memory-bound work), and framework overhead (autograd nodes, profiler ranges, the optimiser's wrapper).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Dict, Sequence, Tuple

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from ... import checks
from .device import sync

__all__ = ["PHASES", "OP_CLASSES", "PHASE_ORDER", "SEGMENTS", "profile_step", "op_class", "marked_modules",
           "segments", "phase_chart"]

# record_function names -> report names, in the order of a training step.
PHASES = {
    "bench::stem": "stem",
    "lmdeq::forward_solve": "forward solve",
    "lmdeq::tracked_f": "tracked f(z*)",
    "bench::head": "head",
    "bench::loss": "loss",
    "lmdeq::adjoint_solve": "adjoint solve",
    "bench::optimizer_step": "optimizer step",
    "bench::constraint_step": "constraint upkeep",
}
# Report order: each phase followed by its backward pass, then what no phase covers.
PHASE_ORDER = tuple(p for label in PHASES.values() for p in (label, label + " backward")) + ("rest",)
# The phase breakdown's figure: each segment and the phases it sums; every phase not named goes to the last one.
SEGMENTS = (("forward solve", ("forward solve", "forward solve backward")),
            ("backward (adjoint) solve", ("adjoint solve", "adjoint solve backward")),
            ("f(z*) for the gradient, forward + backward", ("tracked f(z*)", "tracked f(z*) backward")),
            ("stem, head and loss, forward + backward", ("stem", "stem backward", "head", "head backward", "loss",
                                                         "loss backward")),
            ("optimiser step, constraint upkeep, unattributed", ()))
OP_CLASSES = ("convolution", "batch norm", "matrix product", "copy", "other operators", "framework")
_BACKWARD_NODE = "autograd::engine::evaluate_function: "
_OP_PREFIXES = ("aten::", "lmdeq_C::", "lmdeq::", "prims::", "mkldnn::", "triton", "cuda", "void ")


def op_class(name: str) -> str:
    """The class of an operator by name (see the module docstring)."""
    if name in PHASES or not name.startswith(_OP_PREFIXES):
        return "framework"
    if "convolution" in name:
        return "convolution"
    if "batch_norm" in name:
        return "batch norm"
    if name.split("::")[-1] in ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "addmv", "mv", "dot"):
        return "matrix product"
    if name.split("::")[-1] in ("copy_", "_to_copy", "clone", "contiguous", "to"):
        return "copy"
    return "other operators"


@contextmanager
def marked_modules(marks: Sequence[Tuple[str, torch.nn.Module]]):
    """Within the block, each forward call of a module of the (name, module) pairs ``marks`` runs inside
    ``record_function(name)`` (forward hooks, removed on exit)."""
    handles = []
    for name, module in marks:
        open_ranges = []

        def enter(mod, args, _name=name, _open=open_ranges):
            r = record_function(_name)
            r.__enter__()
            _open.append(r)

        def leave(mod, args, out, _open=open_ranges):
            _open.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _enclosing_phase(e):
    while e is not None and e.name not in PHASES:
        e = e.cpu_parent
    return None if e is None else PHASES[e.name]


def _owners(events, self_ms: Callable) -> Dict[str, float]:
    """Self time summed by owner (phase, '<phase> backward' or 'rest'), see the module docstring."""
    phase_of_seq = {}
    for e in events:
        in_backward = e.cpu_parent is not None and e.cpu_parent.name.startswith(_BACKWARD_NODE)
        if e.sequence_nr >= 0 and not e.name.startswith(_BACKWARD_NODE) and not in_backward:
            phase = _enclosing_phase(e)
            if phase is not None:
                phase_of_seq.setdefault((e.thread, e.sequence_nr), phase)
    owned: Dict[str, float] = {}
    for e in events:
        owner = _enclosing_phase(e)
        p = e
        while owner is None and p is not None:
            if p.name.startswith(_BACKWARD_NODE) and (p.fwd_thread, p.sequence_nr) in phase_of_seq:
                owner = phase_of_seq[(p.fwd_thread, p.sequence_nr)] + " backward"
            p = p.cpu_parent
        owner = owner or "rest"
        owned[owner] = owned.get(owner, 0.0) + self_ms(e)
    return owned


def profile_step(step: Callable[[], object], device: torch.device, top: int = 8) -> Dict:
    """Profile one call of ``step`` on ``device``. Returns wall and busy milliseconds, ``phases_ms`` (every
    phase of :data:`PHASES` with its backward where it has one, and ``rest``; they sum to busy_ms),
    ``op_classes_ms`` (:data:`OP_CLASSES`, also summing to busy_ms) and the ``top`` operators by self
    time."""
    top = checks.integer("top", top, 1)
    device = torch.device(device)
    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step()
        sync(device)
        wall_ms = 1e3 * (time.perf_counter() - t0)
    if on_device:
        def self_ms(e): return e.self_device_time_total / 1e3
    else:
        def self_ms(e): return e.self_cpu_time_total / 1e3
    events = [e for e in prof.events() if not e.is_async]
    owned = _owners(events, self_ms)
    phases = {}
    for label in PHASES.values():
        phases[label] = owned.pop(label, 0.0)
        if label + " backward" in owned:
            phases[label + " backward"] = owned.pop(label + " backward")
    phases["rest"] = owned.pop("rest", 0.0)
    classes = {c: 0.0 for c in OP_CLASSES}
    for e in events:
        classes[op_class(e.name)] += self_ms(e)
    ops = sorted((e for e in prof.key_averages() if op_class(e.key) != "framework" and self_ms(e) > 0),
                 key=self_ms, reverse=True)
    return {
        "clock": "device" if on_device else "host",
        "wall_ms": wall_ms,
        "busy_ms": sum(phases.values()),
        "phases_ms": phases,
        "op_classes_ms": classes,
        "top_ops": [{"name": e.key, "self_ms": self_ms(e), "calls": e.count} for e in ops[:top]],
    }


def segments(phases_ms: Dict[str, float]) -> Dict[str, float]:
    """A profile's ``phases_ms`` summed into the :data:`SEGMENTS` (they still sum to busy_ms)."""
    out = {name: 0.0 for name, _ in SEGMENTS}
    named = {phase: name for name, phases in SEGMENTS for phase in phases}
    for phase, ms in phases_ms.items():
        out[named.get(phase, SEGMENTS[-1][0])] += ms
    return out


def phase_chart(path: str, title: str, profiles: Sequence[Tuple[str, Dict]], notes: Sequence[str] = ()) -> str:
    """The phase breakdown of profiled training steps as a PNG: per (name, :func:`profile_step` result) of
    ``profiles``, one stacked bar of its :func:`segments`, in milliseconds (left; the bar's total, the busy time,
    and the wall time written above it) and as shares of the busy time (right; shares of 4% and more written
    in). ``notes``: lines under the plots. Returns ``path``."""
    from .report import figure, save_figure

    names = [n for n, _ in profiles]
    parts = [segments(p["phases_ms"]) for _, p in profiles]
    fig, (ax_ms, ax_share) = figure(title, (max(9.0, 2.2 * len(names) + 4.0), 4.2), notes, ncols=2)
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c8c8c"]
    xs = range(len(names))
    bottom_ms, bottom_share = [0.0] * len(names), [0.0] * len(names)
    for (segment, _), colour in zip(SEGMENTS, colours):
        ms = [p[segment] for p in parts]
        share = [100 * p[segment] / sum(p.values()) for p in parts]
        ax_ms.bar(xs, ms, 0.6, bottom=bottom_ms, color=colour, label=segment)
        bars = ax_share.bar(xs, share, 0.6, bottom=bottom_share, color=colour, label=segment)
        ax_share.bar_label(bars, labels=[f"{v:.0f}%" if v >= 4 else "" for v in share], label_type="center",
                           fontsize=7, color="white")
        bottom_ms = [b + v for b, v in zip(bottom_ms, ms)]
        bottom_share = [b + v for b, v in zip(bottom_share, share)]
    for x, (_, p) in zip(xs, profiles):
        ax_ms.annotate(f"{p['busy_ms']:.0f} ms\n(wall {p['wall_ms']:.0f})", (x, p["busy_ms"]), ha="center",
                       va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax_ms.set_ylim(0, max(bottom_ms) * 1.18)
    ax_ms.set_ylabel("milliseconds of the profiled step")
    ax_share.set_ylim(0, 100)
    ax_share.set_ylabel("share of the busy time (%)")
    for ax in (ax_ms, ax_share):
        ax.set_xticks(list(xs), names, fontsize=8)
    handles, labels = ax_share.get_legend_handles_labels()
    ax_share.legend(handles[::-1], labels[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                    frameon=False)
    return save_figure(fig, path)
