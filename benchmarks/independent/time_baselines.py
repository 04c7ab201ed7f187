"""Time lmdeq's baselines (a) and (a-JR) against an independent re-implementation of the released MDEQ-small
(``mdeq_small.py`` in this folder), interleaved round by round on one machine (project issue 22, section 4: a
baseline slower than it needs to be inflates every ratio).

    python benchmarks/independent/time_baselines.py --device cuda --batch 32 --rounds 30 --warmup 3 \\
        [--data ../shared/data/cifar10-train-jpeg.tar.gz] [--threads N] [--jr-every-step] \\
        [--out FILE.json [--force]] [--profile]

The result JSON goes to --out, or to independent-baselines-<device>.json in a new run folder outside the checkout
(lmdeq/app/bench/outputs.py); an existing file is refused before any work unless --force.

Methods (both sides built on the same batch, with the same weights: lmdeq's model is built with seed ``--seed``
and its parameters and buffers are copied into the independent model):

* ``a``      lmdeq's (a), ``mdeq(**lmdeq.app.bench.speedup.method_config('original', 'cifar10-small'))``, timed through
             the speed-up benchmark's own ``Method`` (Adam lr 1e-3, cross-entropy); vs ``indep a``, the released
             recipe of cls_mdeq_TINY.yaml (Broyden 18/20, rel 1e-3), Adam lr 1e-3 (no weight decay, as lmdeq's
             benchmark step);
* ``a-JR``   (when ``'original_jr'`` is in ``lmdeq.app.bench.speedup.METHODS``) lmdeq's (a-JR) vs ``indep a-JR``, the
             released JR recipe on MDEQ-small (Anderson 7/8, JR on a drawn 5 % of the steps with weight 0.5 and a
             forward threshold 7 + delta). Both sides take the same per-step draws (lmdeq's
             ``JacobianSchedule`` with the same seed); ``--jr-every-step`` makes every step a JR step on both
             sides (the same deltas), to time the JR step itself.

Timing: all methods live in one process (one ``torch.set_num_threads`` for all, ``--threads``; cuDNN's autotuner on
for all unless ``--no-cudnn-benchmark``); after ``--warmup`` untimed rounds, each round runs every method's
training step once (``lmdeq.app.bench.interleave.interleaved``), with a device synchronisation before and after each
timed call; the solver statistics are read after the clock stops. Then the same for inference batches (eval
mode, no grad). Reported per method: median and spread (IQR, min-max) of ms per step, forward f-evaluations,
adjoint evaluations (vector-Jacobian products), ms per evaluation (step time / (forward f-evaluations + the
tracked f(z*) + adjoint evaluations), medians of the per-round values), and the per-round ratio lmdeq /
independent. ``--profile`` adds one training step of each method under torch.profiler (per-op table, top 25 by
self CPU time; on CUDA also by self device time).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import mdeq_small as indep  # noqa: E402

from lmdeq.app.bench import speedup  # noqa: E402
from lmdeq.app.argtypes import output_file  # noqa: E402
from lmdeq.app.bench.device import device_slug, environment, load_average, load_record, sync  # noqa: E402
from lmdeq.app.bench.outputs import add_out_arguments, result_file  # noqa: E402
from lmdeq.app.bench.interleave import interleaved, ratio_spread, spread  # noqa: E402
from lmdeq.app.bench.report import fmt_spread, markdown_table  # noqa: E402
from lmdeq.models import mdeq  # noqa: E402
from lmdeq.app.train.jacobian import JacobianSchedule  # noqa: E402
from lmdeq.errors import ConfigError  # noqa: E402

PRESET = "cifar10-small"


# -- JR draws shared by both sides ---------------------------------------------------------------------------
class ForcedDraws:
    """Every step a JR step, delta uniform on {-d, ..., 1} from a seeded generator (the released draw of delta)."""

    def __init__(self, config: dict, seed: int):
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, step: int):
        d = self.config["rand_f_thres_delta"]
        delta = int(torch.randint(-d, 2, [], generator=self.generator).item()) if d > 0 else 0
        return dict(jac_loss=True, delta=delta, factor=self.config["jac_loss_weight"])


class ScheduleDraws:
    """lmdeq's JacobianSchedule (the released per-step draw) as plain dicts."""

    def __init__(self, config: dict, seed: int):
        self.schedule = JacobianSchedule(config, seed)

    def draw(self, step: int):
        d = self.schedule.draw(step)
        return dict(jac_loss=d.jac_loss, delta=d.f_thres_delta, factor=d.factor)


class _LmdeqForcedJR:
    """Stands in for lmdeq's ``Method.jr`` (JacobianSteps) with forced JR steps: same interface."""

    enabled = True

    def __init__(self, draws: ForcedDraws, max_iter: int):
        self.draws, self.max_iter, self.flags = draws, max_iter, []

    def forward(self, model, x, jr=None):   # (jr: the kind Method.train_step asks for; every step is a JR step here)
        d = self.draws.draw(len(self.flags))
        self.flags.append(True)
        logits, jr = model(x, jac_loss=True, max_iter=self.max_iter + d["delta"])
        return logits, d["factor"] * jr


# -- the compared methods -----------------------------------------------------------------------------------
class Entry:
    """One timed method: a training step, an inference batch, and what each step's solves cost."""

    def __init__(self, name: str, side: str, pair: str, train: Callable[[], object], infer: Callable[[], object],
                 stats: Callable[[bool], Dict], model: torch.nn.Module):
        self.name, self.side, self.pair = name, side, pair
        self.train, self.infer, self.stats, self.model = train, infer, stats, model


def _lmdeq_stats(model, jr_flags: Optional[List[bool]]):
    def read(training: bool) -> Dict:
        info = model.last_info   # (reads back: called after the clock stopped)
        jac = bool(jr_flags[-1]) if (training and jr_flags) else False
        return {"f_evals": info.get("f_nstep"), "b_evals": info.get("b_nstep") if training else 0,
                "tracked_evals": 1 if training else 0, "jac_vjps": 2 if jac else 0, "jac_step": jac,
                "f_residual": info.get("f_residual"), "b_residual": info.get("b_residual") if training else None}
    return read


def _indep_stats(model, jr_flags: Optional[List[bool]]):
    def read(training: bool) -> Dict:
        s = model.last_stats
        jac = bool(jr_flags[-1]) if (training and jr_flags) else False
        return {"f_evals": s["f_evals"], "b_evals": s["b_evals"] if training else 0,
                "tracked_evals": s["tracked_evals"] if training else 0, "jac_vjps": s["jac_vjps"], "jac_step": jac,
                "f_residual": s["f_residual"], "b_residual": s["b_residual"] if training else None}
    return read


def recipe_check(lm_config: dict, recipe: dict) -> List[str]:
    """Differences between lmdeq's config and the released recipe the independent model runs."""
    forward, adjoint = lm_config["forward"], lm_config["backward"].get("solver", {})
    flat = dict(lm_config, f_max_iter=forward.get("max_iter"), b_max_iter=adjoint.get("max_iter"),
                f_tol=forward.get("tol"), b_tol=adjoint.get("tol"), f_stop_mode=forward.get("stop_mode"),
                b_stop_mode=adjoint.get("stop_mode"), b_x0=lm_config["backward"].get("x0"),
                f_solver=forward.get("name"), b_solver=adjoint.get("name"))
    want = {"f_max_iter": recipe["f_thres"], "b_max_iter": recipe["b_thres"], "f_tol": recipe["eps"],
            "b_tol": recipe["eps"], "f_stop_mode": recipe["stop_mode"], "b_stop_mode": recipe["stop_mode"],
            "dropout": recipe["dropout"], "channels": recipe["channels"], "num_groups": recipe["num_groups"],
            "head_channels": recipe["head_channels"], "final_channels": recipe["final_chansize"],
            "b_x0": "zeros", "unrolled_warmup_steps": 0}
    solver = {"broyden": "broyden", "anderson": "authors_anderson"}
    want["f_solver"], want["b_solver"] = solver[recipe["f_solver"]], solver[recipe["b_solver"]]
    lm_config = flat
    if "jac_loss_weight" in recipe:
        want.update(jac_loss_weight=recipe["jac_loss_weight"], jac_loss_freq=recipe["jac_loss_freq"],
                    rand_f_thres_delta=recipe["rand_f_thres_delta"], jac_loss_vecs=recipe["jac_vecs"])
    out = [f"{k}: lmdeq {lm_config.get(k)!r}, released {v!r}" for k, v in want.items() if lm_config.get(k) != v]
    for side, thres, section in (("f", recipe["f_thres"], forward), ("b", recipe["b_thres"], adjoint)):
        if section.get("name") == "broyden":
            memory = section["memory"]
            if memory < thres - 1:
                out.append(f"{side}_solver: lmdeq's Broyden keeps {memory} rank-one terms (a ring), released keeps "
                           f"all {thres - 1} its {thres} updates use: the iterates after update {memory} differ")
    return out


def build(pairs: List[str], x, y, seed: int, jr_every_step: bool, log) -> List[Entry]:
    entries: List[Entry] = []
    for pair in pairs:
        lm_method_name, recipe = {"a": ("original", indep.TINY), "a-JR": ("original_jr", indep.TINY_JR)}[pair]
        torch.manual_seed(seed)
        lm = mdeq(**speedup.method_config(lm_method_name, PRESET)).to(x.device)
        torch.manual_seed(seed)   # Method's JR draws are seeded with torch.initial_seed()
        lm_step = speedup.Method(lm, x, y)
        mine = indep.load_lmdeq_weights(indep.MDEQSmall(recipe).to(x.device), lm)
        diffs = recipe_check(lm.config, recipe)
        for d in diffs:
            log(f"NOTE ({pair}): lmdeq's config differs from the released recipe: {d}")
        jr = pair == "a-JR"
        if not jr:
            ours = indep.Baseline(mine, lr=1e-3, weight_decay=0.0)
            entries.append(Entry(f"lmdeq {pair}", "lmdeq", pair, lm_step.train_step, lm_step.infer,
                                 _lmdeq_stats(lm, None), lm))
            entries.append(Entry(f"indep {pair}", "indep", pair, lambda o=ours: o.train_step(x, y),
                                 lambda o=ours: o.infer(x), _indep_stats(mine, None), mine))
            continue
        ours = indep.BaselineJR(mine, lr=1e-3, weight_decay=0.0)
        if jr_every_step:
            lm_step.jr = _LmdeqForcedJR(ForcedDraws(lm.config, seed), lm.config["forward"]["max_iter"])
            draws = ForcedDraws(lm.config, seed)
        else:
            draws = ScheduleDraws(lm.config, seed)   # the same draws as lmdeq's Method.jr
        flags: List[bool] = []

        def ours_step(o=ours, draws=draws, flags=flags):
            d = draws.draw(len(flags))
            flags.append(d["jac_loss"])
            return o.train_step(x, y, jac_step=d["jac_loss"], f_thres_delta=d["delta"])

        entries.append(Entry(f"lmdeq {pair}", "lmdeq", pair, lm_step.train_step, lm_step.infer,
                             _lmdeq_stats(lm, lm_step.jr.flags), lm))
        entries.append(Entry(f"indep {pair}", "indep", pair, ours_step, lambda o=ours: o.infer(x),
                             _indep_stats(mine, flags), mine))
    return entries


def timed_rounds(entries: List[Entry], kind: str, rounds: int, warmup: int, device) -> Dict[str, Dict]:
    """Interleaved rounds of every entry's ``kind`` ('train' or 'infer'); per entry the seconds of the kept
    rounds and the solver statistics of each kept step (read after the clock stopped)."""
    training = kind == "train"
    records = {e.name: [] for e in entries}

    def measure(e: Entry):
        fn = e.train if training else e.infer

        def run():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            dt = time.perf_counter() - t0
            records[e.name].append(e.stats(training))
            return dt
        return run

    for e in entries:
        e.model.train(training)
    seconds = interleaved({e.name: measure(e) for e in entries}, rounds, warmup)
    return {name: {"seconds": seconds[name], "stats": records[name][-rounds:]} for name in seconds}


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(entries: List[Entry], train: Dict, infer: Dict) -> List[Dict]:
    rows = []
    for e in entries:
        row = {"method": e.name, "side": e.side, "pair": e.pair}
        for kind, res in (("train", train), ("infer", infer)):
            ms = [1e3 * s for s in res[e.name]["seconds"]]
            st = res[e.name]["stats"]
            evals = [s["f_evals"] + s["tracked_evals"] + s["b_evals"] for s in st]
            row[f"{kind}_ms_all"] = ms
            row[f"{kind}_spread"] = spread(ms)
            row[f"{kind}_ms"] = row[f"{kind}_spread"]["median"]
            row[f"{kind}_stats"] = st
            row[f"{kind}_f_evals"] = _median([s["f_evals"] for s in st])
            row[f"{kind}_ms_per_eval"] = _median([t / n for t, n in zip(ms, evals) if n])
            if kind == "train":
                row["b_evals"] = _median([s["b_evals"] for s in st])
                row["jr_steps"] = sum(s["jac_step"] for s in st)
                row["f_residual"] = _median([s["f_residual"] for s in st])
                row["b_residual"] = _median([s["b_residual"] for s in st])
        rows.append(row)
    return rows


def ratios(rows: List[Dict]) -> Dict[str, Dict]:
    by = {(r["pair"], r["side"]): r for r in rows}
    out = {}
    for pair in sorted({r["pair"] for r in rows}):
        if (pair, "lmdeq") in by and (pair, "indep") in by:
            for kind in ("train", "infer"):
                out[f"{kind} {pair} lmdeq/indep"] = ratio_spread(by[(pair, "lmdeq")][f"{kind}_ms_all"],
                                                                 by[(pair, "indep")][f"{kind}_ms_all"])
    return out


def table(result: Dict) -> str:
    rows = [{**r, "train": fmt_spread(r["train_spread"]), "infer": fmt_spread(r["infer_spread"])}
            for r in result["rows"]]
    cols = ["method", "train", "train_f_evals", "b_evals", "train_ms_per_eval", "jr_steps", "f_residual",
            "infer", "infer_f_evals", "infer_ms_per_eval"]
    heads = ["method", "train ms/step", "fwd f-evals", "adjoint evals", "ms/eval (train)", "JR steps",
             "fwd rel res", "infer ms/batch", "infer f-evals", "ms/eval (infer)"]
    text = markdown_table(rows, cols, heads)
    if result["ratios"]:
        text += "\n\nPer-round ratios lmdeq / independent, median (IQR; min-max):\n\n" + markdown_table(
            [{"ratio": k, "value": fmt_spread(v)} for k, v in result["ratios"].items()], ["ratio", "value"])
    env, load = result["env"], result["load"]
    head = (f"Device: {env['device']}; torch {env['torch']}; {env['threads']} threads; batch {result['batch']}; "
            f"{result['warmup']} warm-up + {result['rounds']} timed rounds, interleaved; data: {result['data']}\n"
            f"Load average at start {load['loadavg_start']}, at end {load['loadavg_end']}")
    if load.get("warning"):
        head += f"\nWARNING: {load['warning']}"
    for note in result["notes"]:
        head += f"\nNOTE: {note}"
    text += ("\n\nfwd rel res: lmdeq, the batch mean of its per-sample lowest relative residuals; indep, the released "
             "pooled residual ||f(z) - z||_F / ||f(z)||_F over the batch (its stopping rule). ms/eval: step time / "
             "(forward f-evaluations + the tracked f(z*) + adjoint vector-Jacobian products).")
    return head + "\n\n" + text


def profile(entries: List[Entry], device, top: int = 25) -> Dict[str, str]:
    """One training step of each entry under torch.profiler: the per-op tables."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = {}
    for e in entries:
        e.model.train()
        sync(device)
        with torch_profile(activities=activities) as prof:
            e.train()
            sync(device)
        ka = prof.key_averages()
        text = ka.table(sort_by="self_cpu_time_total", row_limit=top)
        if device.type == "cuda":
            text += "\n" + ka.table(sort_by="self_cuda_time_total", row_limit=top)
        out[e.name] = text
    return out


def batch(size: int, device, data: Optional[str], seed: int):
    """The speed-up benchmark's batch (``lmdeq.app.bench.speedup._batch``: a stratified CIFAR-10 batch from ``data``,
    else N(0, 1) images with random labels from a generator seeded ``seed``)."""
    make = getattr(speedup, "_batch", None)
    if make is not None:
        return make(size, device, data, seed)
    if data:
        raise SystemExit("lmdeq.app.bench.speedup._batch is gone: cannot load --data the way the benchmark does")
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(size, 3, 32, 32, generator=g).to(device), torch.randint(0, 10, (size,), generator=g).to(device))


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=20, help="timed rounds (0: none, e.g. with --profile)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--data", default=None, help="CIFAR-10 archive (lmdeq.app.data); default: N(0, 1) images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for all methods")
    p.add_argument("--pairs", default=None, help="comma-separated: a, a-JR (default: both where lmdeq has (a-JR))")
    p.add_argument("--jr-every-step", action="store_true", help="every (a-JR) step is a JR step, on both sides")
    p.add_argument("--no-cudnn-benchmark", action="store_true")
    add_out_arguments(p, "independent-baselines", out_type=output_file, what="the result JSON")
    p.add_argument("--profile", action="store_true", help="one training step per method under torch.profiler")
    args = p.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:   # where the JSON goes, before any work: an existing file is refused unless --force
        args.out = result_file(args.out, "independent-baselines", f"independent-baselines-{device_slug(device)}.json",
                               args.force)
    except ConfigError as err:
        p.error(str(err))
    saved_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    try:
        return _run(args, device, log)
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark


def _run(args, device, log) -> Dict:
    pairs = args.pairs.split(",") if args.pairs else (["a"] + (["a-JR"] if "original_jr" in speedup.METHODS else []))
    if "a-JR" in pairs and "original_jr" not in speedup.METHODS:
        raise SystemExit("lmdeq.app.bench.speedup.METHODS has no 'original_jr': no (a-JR) to time")
    load_start = load_average()
    x, y = batch(args.batch, device, args.data, args.seed)
    entries = build(pairs, x, y, args.seed, args.jr_every_step, log)
    notes = [f"{d} ({pair})" for pair, recipe in (("a", indep.TINY), ("a-JR", indep.TINY_JR)) if pair in pairs
             for e in entries if e.pair == pair and e.side == "lmdeq" for d in recipe_check(e.model.config, recipe)]
    result = {"benchmark": "independent-baselines", "env": environment(device), "batch": args.batch,
              "rounds": args.rounds, "warmup": args.warmup, "seed": args.seed,
              "data": args.data or "random N(0,1) images", "cudnn_benchmark": not args.no_cudnn_benchmark,
              "jr_every_step": args.jr_every_step, "pairs": pairs, "notes": notes,
              "lmdeq_configs": {e.name: e.model.config for e in entries if e.side == "lmdeq"},
              "independent_recipes": {e.name: e.model.cfg for e in entries if e.side == "indep"}}
    if args.rounds > 0:
        log(f"{args.warmup} warm-up + {args.rounds} timed rounds of training steps, then of inference batches: "
            + ", ".join(e.name for e in entries))
        train = timed_rounds(entries, "train", args.rounds, args.warmup, device)
        infer = timed_rounds(entries, "infer", args.rounds, args.warmup, device)
        result["rows"] = summarise(entries, train, infer)
        result["ratios"] = ratios(result["rows"])
    else:
        for e in entries:   # warm-up only
            e.model.train()
            for _ in range(args.warmup):
                e.train()
        result["rows"], result["ratios"] = [], {}
    result["load"] = load_record(load_start, load_average(), torch.get_num_threads())
    if args.profile:
        result["profile"] = profile(entries, device)
    if result["rows"]:
        result["table"] = table(result)
        print(result["table"])
    for name, text in result.get("profile", {}).items():
        print(f"\n## torch.profiler, one training step: {name}\n\n{text}")
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    log(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
