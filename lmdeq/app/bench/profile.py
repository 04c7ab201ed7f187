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

__all__ = ["PHASES", "OP_CLASSES", "PHASE_ORDER", "profile_step", "op_class", "marked_modules"]

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
