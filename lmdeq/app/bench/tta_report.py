"""Analysis and output of the time-to-accuracy benchmark: curve statistics, the issue's three targets
evaluated from the data, the Markdown tables and the chart.

A method's curve is its list of points (``train_s``: training seconds so far, ``epoch``, ``val_acc``, ...).

* time to accuracy a: ``train_s`` of the first point with val_acc >= a (None: never reached);
* accuracy at equal epochs E: val_acc of the point at the end of epoch E, with E the largest whole number
  of epochs every method completed;
* accuracy at equal wall-clock T: val_acc of the latest point with train_s <= T (the curve as a step
  function), with T the shortest total training time among the methods compared;
* f/b iterations: the mean forward f-evaluations and backward (adjoint or backprop) steps per training
  step, over the steps outside the unrolled warm-up (in the warm-up they are ``unrolled_layers`` each).

Targets (each MET or MISSED from the data, N/A when a method is missing):

1. (c) reaches the best validation accuracy (a) reaches within its run in <= 1/8 of the time (a) needs
   to reach it;
2. (c)'s accuracy at equal epochs is within 1 point of (a)'s (acc_c >= acc_a - 0.01);
3. (c) is at least as accurate as (b) at every equal wall-clock time: acc_c(t) >= acc_b(t) at every
   evaluation time t of either method from the first time both have a point to the end of the longer run
   (a method that has finished holds its final accuracy).

Against the paper's own baseline, (a-JR) (the released MDEQ + Jacobian regularisation, ``original_jr``):

4. (c) reaches the best validation accuracy (a-JR) reaches within its run in <= 1/3 of (a-JR)'s time;
5. at equal epochs (c) is within 1 point of (a-JR) or better at every evaluation from epoch 4 on: at every
   step where both have a point and epoch >= 4, acc_c >= acc_aJR - 0.01.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from .report import markdown_table

__all__ = ["time_to", "acc_at_time", "acc_at_epoch", "iteration_means", "summarise", "targets",
           "tables", "plot_curves", "figure", "load_notes", "SPEEDUP_TARGET", "EPOCH_TOLERANCE"]

SPEEDUP_TARGET = 8.0     # target 1: (c) needs <= 1/8 of (a)'s time
EPOCH_TOLERANCE = 0.01   # targets 2 and 5: within 1 point
JR_SPEEDUP_TARGET = 3.0  # target 4: (c) needs <= 1/3 of (a-JR)'s time
JR_FROM_EPOCH = 4        # target 5: from this epoch on


def time_to(points: Sequence[Dict], acc: float) -> Optional[float]:
    for p in points:
        if p["val_acc"] is not None and p["val_acc"] >= acc:
            return p["train_s"]
    return None


def acc_at_time(points: Sequence[Dict], t: float) -> Optional[float]:
    before = [p for p in points if p["train_s"] <= t]
    return before[-1]["val_acc"] if before else None


def acc_at_epoch(points: Sequence[Dict], epoch: int) -> Optional[float]:
    for p in points:
        if abs(p["epoch"] - epoch) < 1e-9:
            return p["val_acc"]
    return None


def iteration_means(points: Sequence[Dict]) -> Dict[str, Optional[float]]:
    """Step-weighted mean f/b iterations over the points' intervals outside the unrolled warm-up."""
    deq = [p for p in points if not p["unrolled"]]
    out = {}
    for key in ("f_nstep", "b_nstep"):
        pairs = [(p[key], p["interval_steps"]) for p in deq if p.get(key) is not None]
        weight = sum(w for _, w in pairs)
        out[key] = sum(v * w for v, w in pairs) / weight if weight else None
    return out


def _by_name(methods: Sequence[Dict]) -> Dict[str, Dict]:
    return {m["method"]: m for m in methods}


def summarise(methods: Sequence[Dict], accuracies: Sequence[float],
              main=("original", "original_jr", "authors", "lmdeq")) -> Dict:
    """Per-method statistics and the comparison points (equal epochs E, equal wall-clock T)."""
    finished = [m for m in methods if m["points"]]
    epochs = min((int(m["points"][-1]["epoch"] + 1e-9) for m in finished), default=0)
    compared = [m for m in finished if m["method"] in main] or finished
    wall = min((m["points"][-1]["train_s"] for m in compared), default=None)
    rows = []
    for m in methods:
        pts = m["points"]
        row = {"method": m["method"], "label": m["label"], "steps": pts[-1]["step"] if pts else 0,
               "epochs": pts[-1]["epoch"] if pts else 0.0, "train_s": pts[-1]["train_s"] if pts else 0.0,
               "best_acc": max((p["val_acc"] for p in pts), default=None),
               "acc_equal_epochs": acc_at_epoch(pts, epochs) if epochs else None,
               "acc_equal_wall": acc_at_time(pts, wall) if wall is not None else None,
               "time_to": {f"{a:g}": time_to(pts, a) for a in accuracies},
               "lipschitz_bound": pts[-1].get("lipschitz_bound") if pts else None,
               "step_ms": step_ms(pts), **iteration_means(pts)}
        rows.append(row)
    return {"equal_epochs": epochs, "equal_wall_s": wall, "rows": rows}


def targets(methods: Sequence[Dict], summary: Dict) -> List[Dict]:
    """The issue's three targets, each with its verdict ('MET', 'MISSED' or 'N/A') and the numbers."""
    by = _by_name(methods)
    rows = _by_name(summary["rows"])
    out = []

    def verdict(ok):
        return "MET" if ok else "MISSED"

    out.append(_time_to_best(by, rows, "original", "(a)", SPEEDUP_TARGET))

    statement = "(c)'s accuracy at equal epochs is within 1 point of (a)'s"
    a, c = rows.get("original", {}).get("acc_equal_epochs"), rows.get("lmdeq", {}).get("acc_equal_epochs")
    if a is not None and c is not None:
        out.append({"target": statement, "verdict": verdict(c >= a - EPOCH_TOLERANCE),
                    "detail": f"after {summary['equal_epochs']} epochs: (c) {c:.4f}, (a) {a:.4f} "
                              f"({100 * (c - a):+.1f} points)"})
    else:
        out.append({"target": statement, "verdict": "N/A", "detail": "needs methods original and lmdeq"})

    statement = "(c) is at least as accurate as (b) at every equal wall-clock time"
    if "authors" in by and "lmdeq" in by and by["authors"]["points"] and by["lmdeq"]["points"]:
        b_pts, c_pts = by["authors"]["points"], by["lmdeq"]["points"]
        start = max(b_pts[0]["train_s"], c_pts[0]["train_s"])
        end = max(b_pts[-1]["train_s"], c_pts[-1]["train_s"])
        times = sorted({p["train_s"] for p in b_pts + c_pts if start <= p["train_s"] <= end})
        margins = [(acc_at_time(c_pts, t) - acc_at_time(b_pts, t), t) for t in times]
        worst, at = min(margins) if margins else (0.0, start)
        out.append({"target": statement, "verdict": verdict(worst >= 0.0),
                    "detail": f"{len(times)} times from {start:.0f} s to {end:.0f} s; worst margin "
                              f"{100 * worst:+.1f} points at {at:.0f} s"})
    else:
        out.append({"target": statement, "verdict": "N/A", "detail": "needs methods authors and lmdeq"})
    if "original_jr" in by:
        out += _jr_targets(by, rows)
    return out


def _time_to_best(by: Dict[str, Dict], rows: Dict[str, Dict], baseline: str, label: str, factor: float) -> Dict:
    """Target: (c) reaches the best validation accuracy ``baseline`` reaches in <= 1/factor of its time."""
    statement = f"(c) reaches {label}'s best validation accuracy in <= 1/{factor:g} of {label}'s time"
    if baseline not in by or "lmdeq" not in by or not by[baseline]["points"]:
        return {"target": statement, "verdict": "N/A", "detail": f"needs methods {baseline} and lmdeq"}
    best = rows[baseline]["best_acc"]
    t_base = time_to(by[baseline]["points"], best)
    t_c = time_to(by["lmdeq"]["points"], best)
    ok = t_c is not None and t_c * factor <= t_base
    detail = (f"{label} best {best:.4f} at {t_base:.0f} s; (c) " +
              (f"reached it at {t_c:.0f} s ({t_base / t_c:.1f}x sooner)" if t_c else "never reached it"))
    return {"target": statement, "verdict": "MET" if ok else "MISSED", "detail": detail}


def _jr_targets(by: Dict[str, Dict], rows: Dict[str, Dict]) -> List[Dict]:
    """Targets 4 and 5 (see the module docstring), against (a-JR)."""
    out = [_time_to_best(by, rows, "original_jr", "(a-JR)", JR_SPEEDUP_TARGET)]
    statement = (f"at equal epochs (c) is within 1 point of (a-JR) or better at every evaluation from epoch "
                 f"{JR_FROM_EPOCH} on")
    if "lmdeq" in by:
        c_at = {p["step"]: p for p in by["lmdeq"]["points"]}
        pairs = [(c_at[p["step"]]["val_acc"] - p["val_acc"], p["epoch"]) for p in by["original_jr"]["points"]
                 if p["step"] in c_at and p["epoch"] >= JR_FROM_EPOCH - 1e-9]
        if pairs:
            worst, at = min(pairs)
            out.append({"target": statement, "verdict": "MET" if worst >= -EPOCH_TOLERANCE else "MISSED",
                        "detail": f"{len(pairs)} evaluations from epoch {JR_FROM_EPOCH}; worst margin "
                                  f"{100 * worst:+.1f} points at epoch {at:.2f}"})
            return out
    out.append({"target": statement, "verdict": "N/A",
                "detail": f"needs methods original_jr and lmdeq with evaluations from epoch {JR_FROM_EPOCH}"})
    return out


def _fmt_s(t: Optional[float]) -> str:
    return "-" if t is None else f"{t:.0f} s"


def _fmt_acc(a: Optional[float]) -> str:
    return "-" if a is None else f"{a:.3f}"


def tables(summary: Dict, verdicts: List[Dict], accuracies: Sequence[float],
           variants=("lmdeq_nocap", "lmdeq_released_cap")) -> str:
    """The README block: the main table, the certificate-cost table (when variants ran), the targets."""
    E, T = summary["equal_epochs"], summary["equal_wall_s"]
    flat = []
    for r in summary["rows"]:
        row = {"label": r["label"], "best": _fmt_acc(r["best_acc"]), "epochs_acc": _fmt_acc(r["acc_equal_epochs"]),
               "wall_acc": _fmt_acc(r["acc_equal_wall"]), "train": _fmt_s(r["train_s"]),
               "iters": "-" if r["f_nstep"] is None else f"{r['f_nstep']:.1f} / {r['b_nstep'] or 0:.1f}"}
        row.update({f"t{a:g}": _fmt_s(r["time_to"][f"{a:g}"]) for a in accuracies})
        flat.append(row)
    cols = ["label"] + [f"t{a:g}" for a in accuracies] + ["epochs_acc", "wall_acc", "best", "train", "iters"]
    heads = (["method"] + [f"time to {100 * a:g}%" for a in accuracies] +
             [f"acc @ {E} epochs", f"acc @ {_fmt_s(T)}", "best acc", "training time", "f / b iters per step"])
    text = markdown_table(flat, cols, heads)
    rows = _by_name(summary["rows"])
    if "lmdeq" in rows and any(v in rows for v in variants):
        base = rows["lmdeq"]["acc_equal_epochs"]
        cost = []
        for name in ("lmdeq",) + tuple(v for v in variants if v in rows):
            r = rows[name]
            acc = r["acc_equal_epochs"]
            delta = "-" if acc is None or base is None or name == "lmdeq" else f"{100 * (base - acc):+.1f}"
            cost.append({"label": r["label"], "acc": _fmt_acc(acc), "delta": delta, "train": _fmt_s(r["train_s"]),
                         "bound": "-" if r["lipschitz_bound"] is None else f"{r['lipschitz_bound']:.3f}"})
        text += ("\n\nWhat the certificate costs (same architecture and solver, another conv constraint; "
                 f"accuracy after {E} epochs; a positive cost means the certified model is more accurate):\n\n"
                 + markdown_table(cost, ["label", "acc", "delta", "train", "bound"],
                                  ["method", f"acc @ {E} epochs", "(c) minus it, points", "training time",
                                   "certified L (eval)"]))
    budgets = sorted((r for r in summary["rows"] if r["method"].startswith("lmdeq_budget")),
                     key=lambda r: int(r["method"][len("lmdeq_budget"):]))
    if budgets and "lmdeq" in rows:
        text += ("\n\nIteration budgets (forward_budget = backward_budget = k: the caps scaled so that the certified "
                 f"counts stay <= k; accuracy after {E} epochs; ms per step: median over the evaluation intervals, "
                 "which alternate between the methods, and min-max):\n\n" + _budget_table(rows["lmdeq"], budgets, E))
    text += "\n\nTargets:\n\n" + "\n".join(f"- **{v['verdict']}**: {v['target']} ({v['detail']})" for v in verdicts)
    return text


def step_ms(points: Sequence[Dict]) -> Optional[Dict[str, float]]:
    """Milliseconds per training step over a method's evaluation intervals: median, min and max."""
    per = sorted(1000 * p["interval_s"] / p["interval_steps"] for p in points
                 if p.get("interval_steps") and p.get("interval_s") is not None)
    if not per:
        return None
    mid = len(per) // 2
    median = per[mid] if len(per) % 2 else 0.5 * (per[mid - 1] + per[mid])
    return {"median": median, "min": per[0], "max": per[-1]}


def _budget_table(default: Dict, budgets: Sequence[Dict], epochs) -> str:
    out = []
    for r in [default, *budgets]:
        ms = r.get("step_ms")
        acc, base = r["acc_equal_epochs"], default["acc_equal_epochs"]
        out.append({"label": r["label"], "bound": "-" if r["lipschitz_bound"] is None else f"{r['lipschitz_bound']:.3f}",
                    "iters": "-" if r["f_nstep"] is None else f"{r['f_nstep']:.1f} / {r['b_nstep'] or 0:.1f}",
                    "ms": "-" if ms is None else f"{ms['median']:.0f} ({ms['min']:.0f}-{ms['max']:.0f})",
                    "acc": _fmt_acc(acc), "best": _fmt_acc(r["best_acc"]),
                    "delta": "-" if r is default or acc is None or base is None else f"{100 * (acc - base):+.1f}"})
    return markdown_table(out, ["label", "bound", "iters", "ms", "acc", "delta", "best"],
                          ["method", "certified L (eval, end)", "f / b iters per step", "ms per step",
                           f"acc @ {epochs} epochs", "vs (c), points", "best acc"])


def load_notes(result: Dict) -> List[str]:
    """The load warning of a time-to-accuracy result for its figure: the load records
    (:func:`lmdeq.app.bench.device.load_record`) of its sittings (a run continued with --resume has several; else
    the run's start and end), the worst one's warning when any 1-minute load average read was above the thread
    count."""
    from .device import load_record

    sittings = result.get("sittings") or [{"load_average_start": result.get("load_average_start"),
                                           "load_average_end": result.get("load_average_end")}]
    records = [load_record(s.get("load_average_start"), s.get("load_average_end"), result["env"]["threads"])
               for s in sittings]
    warned = [(i, r) for i, r in enumerate(records) if r["warning"]]
    if not warned:
        return []
    i, worst = max(warned, key=lambda ir: max(la[0] for la in (ir[1]["loadavg_start"], ir[1]["loadavg_end"]) if la))
    where = f"{len(warned)} of {len(sittings)} sittings, the worst (sitting {i + 1}): " if len(sittings) > 1 else ""
    return [f"WARNING: {where}{worst['warning']}"]


def figure(result: Dict, path: str) -> str:
    """The curves of a time-to-accuracy result as a PNG (:func:`plot_curves`), its title, notes and load
    warning (:func:`load_notes`) read from ``result``. Returns ``path``."""
    s = result["settings"]
    title = (f"Time to accuracy: {s['preset']}, batch {s['batch_size']}, {s['train_images']} training images, "
             f"{result['env']['device']}")
    notes = [f"validation accuracy on {s['val_images']} held-out images, {s['evals_per_epoch']} evaluations per "
             "epoch; training clock without the evaluations; dashed lines: the target accuracies "
             + ", ".join(f"{a:g}" for a in s["targets"])] + load_notes(result)
    return plot_curves(path, result["methods"], s["targets"], title, notes)


def plot_curves(path: str, methods: Sequence[Dict], accuracies: Sequence[float], title: str,
                notes: Sequence[str] = ()) -> str:
    """Validation accuracy vs training time and vs epochs (integer ticks), one line per method (a legend when there
    are several), the target accuracies as dashed lines, ``notes`` under the plots. Several methods: seconds on a
    log axis (plain-number ticks), as their times differ by multiples; one run: minutes on a linear axis. Returns
    ``path``."""
    import matplotlib.ticker

    from .report import figure as new_figure, save_figure

    fig, (ax_t, ax_e) = new_figure(title, (12.0, 4.5), notes, ncols=2)
    several = sum(1 for m in methods if m["points"]) > 1
    unit = 1.0 if several else 60.0
    for m in methods:
        pts = [p for p in m["points"] if p["train_s"] > 0]
        if not pts:
            continue
        ax_t.plot([p["train_s"] / unit for p in pts], [p["val_acc"] for p in pts], marker=".", label=m["label"])
        ax_e.plot([p["epoch"] for p in pts], [p["val_acc"] for p in pts], marker=".", label=m["label"])
    for ax in (ax_t, ax_e):
        for a in accuracies:
            ax.axhline(a, color="grey", linestyle="--", linewidth=0.7)
        ax.set_ylabel("validation accuracy")
        ax.grid(True, alpha=0.3)
    if several:
        ax_t.set_xscale("log")
        ax_t.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax_t.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: _minor_label(ax_t, v)))
        ax_t.set_xlabel("training wall-clock (s, evaluation excluded; log scale)")
    else:
        ax_t.set_xlim(left=0)
        ax_t.set_xlabel("training wall-clock (min, evaluation excluded)")
    ax_e.set_xlabel("epochs")
    ax_e.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_e.set_xlim(left=0)
    if several:
        ax_e.legend(fontsize=8, loc="lower right")   # (rising curves leave that corner of the epoch plot free)
    return save_figure(fig, path)


def _minor_label(ax, v: float) -> str:
    """A log axis' minor tick label as a plain number: every minor tick within one decade (but the 9s, next to a
    labelled power of ten), the 2s and 5s within two and a half, none beyond (so that labels never run into each
    other)."""
    import math

    low, high = ax.get_xlim()
    decades = math.log10(high / low) if low > 0 else float("inf")
    lead = round(v / 10 ** math.floor(math.log10(v) + 1e-9))
    shown = (decades <= 1 and lead != 9) or (decades <= 2.5 and lead in (2, 5))
    return f"{v:g}" if shown else ""
