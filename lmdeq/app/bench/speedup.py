"""The speed-up benchmark (``lmdeq bench``): original MDEQ vs the authors' Lipschitz MDEQ vs lmdeq's fast path.

Measured on one device, in one run, with the same batch, the same weights policy and the same data:

* (a) ``original`` — lmdeq's faithful original MDEQ: Broyden, 18/20 iterations (both presets, as released),
  relative tolerance 1e-3, eager;
* (b) ``authors`` — the Lipschitz MDEQ as the authors release it: their Anderson
  (:func:`lmdeq.solvers.authors_anderson`: m=6, absolute lam=1e-4, 18/20 iterations, one residual pooled
  over the batch, rel 1e-3, a host sync per iteration, adjoint from 0), eager, and after every optimiser
  step their cap as released (``constraint='released'``: one power step on every conv's reshaped kernel,
  undone by weight norm inside f) instead of lmdeq's certified operator-norm parametrisation;
* (c) ``lmdeq`` — the fast path: certified Lipschitz MDEQ, fused kernels, fixed-point solves. On GPU
  (``solve_mode='apriori'``) each solve runs exactly the a-priori iteration count of the certified bound,
  with no host sync, and is replayed as one CUDA graph (forward solve, and adjoint solve with its
  re-evaluation of f); channels_last memory format (default) and optionally bf16 autocast for f. On CPU (``'checked'``, where a
  read-back costs nothing) the solves stop at tol, capped by the a-priori count.

Timing: the three models live side by side in one process; after the warm-up, their training steps
alternate round by round (a b c, a b c, ...), then, in eval mode, their inference batches do, so a
change of machine load hits every method alike (:mod:`lmdeq.app.bench.interleave`). Per method: the
median ms per training step (forward solve + backward solve + optimiser step + constraint upkeep) and
per inference batch with their spread (min, max, quartiles), forward/backward f-evaluations and final
relative residuals (from the last timed step), on CUDA the step's peak memory (allocated by the step, and
reserved by the whole process: CUDA-graph pools included); and the ratios a/b,
a/c, b/c computed round by round (median and spread of t_a[k] / t_c[k]). On random-init weights and,
with ``--weights CHECKPOINT`` (from ``lmdeq train``; repeatable, one per variant), on trained weights.
The result records the allocator setting, the thread count and the machine's load average at the start
and end, with a warning when the load was above the thread count.
With ``--profile``, one more training step per method runs under torch.profiler and the report adds
where its time goes (phases with their backward passes, operator classes and top operators,
:mod:`lmdeq.app.bench.profile`).
"""
from __future__ import annotations

import copy
import functools
import json
import os
import sys
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from ...errors import ConfigError
from ..flat_solves import model_arguments
from .device import device_slug, environment, fmt_loads, load_average, load_record, sync
from .interleave import interleaved_rounds, ratio_spread, spread
from .jacobian_steps import JR_SUFFIX, JacobianSteps, combine_rounds, jacobian_table
from .profile import OP_CLASSES, PHASE_ORDER, marked_modules, phase_chart, profile_step
from .report import bar_chart, fmt_spread, load_note, markdown_table

__all__ = ["METHODS", "method_config", "measure", "run"]

METHODS = ("original", "original_jr", "authors", "lmdeq")
# What the certificate costs: (c)'s architecture and solver with another conv constraint. Without a
# certified bound there is no a-priori count, so their checked fixed-point solves stop at the released
# thresholds (18/20 f-evaluations).
VARIANTS = ("lmdeq_nocap", "lmdeq_released_cap")
LABELS = {"original": "(a) original MDEQ", "authors": "(b) authors' Lipschitz MDEQ as released",
          "lmdeq": "(c) lmdeq fast path",
          "original_jr": "(a-JR) MDEQ + Jacobian reg. (authors' baseline config)",
          "lmdeq_nocap": "(c) architecture, no conv cap",
          "lmdeq_released_cap": "(c) architecture, (b)'s cap as released"}
_VARIANT_CONSTRAINT = {"lmdeq_nocap": "none", "lmdeq_released_cap": "released"}


def method_config(method: str, preset: str, check_every: Optional[int] = None, solve_mode: str = "checked",
                  cuda_graphs: bool = True, unrolled_warmup_steps: int = 0) -> dict:
    """mdeq() keyword arguments of a benchmark method (``check_every``, ``solve_mode`` and ``cuda_graphs``
    apply to the fast path only, ``unrolled_warmup_steps`` to the original MDEQ only).

    ``original_jr`` (a-JR) is the released MDEQ + Jacobian regularisation recipe (``RELEASED_JR``, from
    MDEQ-Vision's cls_mdeq_LARGE_reg.yaml) on the original MDEQ of ``preset``: for cifar10-large the released
    LARGE_reg model; for cifar10-small the MDEQ-small architecture (locuslab's cls_mdeq_TINY.yaml channels,
    head and groups) with LARGE_reg's JR recipe, solver (the authors' Anderson, 7/8 iterations, rel 1e-3,
    adjoint from 0, a random forward-threshold delta in {-2..1} on JR steps) and dropout (0.22); no unrolled
    warm-up (PRETRAIN_STEPS 0 in LARGE_reg)."""
    from ...models import AUTHORS_SOLVER, RELEASED_JR

    if method == "original":
        return dict(preset=preset, lipschitz=False, unrolled_warmup_steps=unrolled_warmup_steps)
    if method == "original_jr":
        return dict(preset=preset, lipschitz=False, **copy.deepcopy(RELEASED_JR))
    if method == "authors":
        return dict(preset=preset, lipschitz=True, constraint="released", **copy.deepcopy(AUTHORS_SOLVER))
    if method == "lmdeq":
        flat = dict(solve_mode=solve_mode)
        if check_every is not None:
            flat.update(f_solver_kwargs={"check_every": check_every}, b_solver_kwargs={"check_every": check_every})
        return dict(preset=preset, lipschitz=True, cuda_graphs=cuda_graphs, **model_arguments(preset, True, flat))
    if method in VARIANTS:
        return dict(preset=preset, lipschitz=True, constraint=_VARIANT_CONSTRAINT[method],
                    **model_arguments(preset, True, dict(f_max_iter=18, b_max_iter=20, solve_mode="checked")))
    raise ConfigError(f"method must be one of {METHODS + VARIANTS}, got {method!r}")


def _variant(config: dict):
    from ...models.presets import jacobian_regularised

    return bool(config.get("lipschitz")), config.get("preset"), jacobian_regularised(config)


def _fitting(config: dict, checkpoints: List[dict]) -> Optional[dict]:
    """The first checkpoint of ``config``'s variant (original / Lipschitz, with or without Jacobian
    regularisation, preset), or None."""
    return next((c for c in checkpoints if _variant(c["model_config"]) == _variant(config)), None)


def with_architecture(config: dict, ckpt: Optional[dict]) -> dict:
    """``config`` (a method's mdeq() arguments) with the architecture of the checkpoint it will load: a run
    trained with ``--set channels=...`` (any key of ARCH_KEYS, or num_classes) keeps its own shapes."""
    from ...models.presets import ARCH_KEYS

    if ckpt is None:
        return config
    saved = ckpt["model_config"]
    return {**config, **{k: saved[k] for k in ARCH_KEYS + ("num_classes",) if k in saved}}


def _load_weights(model, checkpoints: List[dict]) -> Optional[str]:
    """Load the first checkpoint of the model's variant (see :func:`_fitting`); return its path."""
    ckpt = _fitting(model.config, checkpoints)
    if ckpt is None:
        return None
    missing, unexpected = model.load_state_dict(ckpt["model_state"], strict=False)
    # Buffers of the certified parametrisation (norm estimates) may be absent in (b); parameters may not.
    params = {n for n, _ in model.named_parameters()}
    if params & set(missing):
        raise ValueError(f"checkpoint {ckpt['path']} lacks parameters {sorted(params & set(missing))[:5]}")
    return ckpt["path"]


class Method:
    """One benchmark method: its model, optimiser (Adam), batch and autocast, as a training step and an
    inference batch."""

    def __init__(self, model, x, y, lr: float = 1e-3, autocast_dtype: Optional[torch.dtype] = None):
        self.model, self.x, self.y = model, x, y
        self.jr = JacobianSteps(model, torch.initial_seed())   # JR draws of a Jacobian-regularised model (a-JR)
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)
        device = x.device.type
        self._autocast = (lambda: torch.autocast(device, dtype=autocast_dtype)) if autocast_dtype is not None \
            else (lambda: torch.autocast(device, enabled=False))

    def train_step(self, jr: Optional[bool] = None) -> None:
        """One training step; for a JR method ``jr`` picks a JR (True) or plain (False) step, None: the draw."""
        model = self.model
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            logits, jr_term = self.jr.forward(model, self.x, jr)
        with record_function("bench::loss"):
            loss = F.cross_entropy(logits.float(), self.y)
            if jr_term is not None:
                loss = loss + jr_term
        loss.backward()
        with record_function("bench::optimizer_step"):
            self.opt.step()
        if hasattr(model, "constraint_step"):
            with record_function("bench::constraint_step"):
                model.constraint_step()

    def infer(self) -> None:
        with torch.no_grad(), self._autocast():
            self.model(self.x)

    def marks(self):
        """The model's parts outside the solve that the profile names (stem and injection, head)."""
        return [(name, getattr(self.model, attr)) for name, attr in
                (("bench::stem", "stem"), ("bench::stem", "injection"), ("bench::head", "head"))
                if isinstance(getattr(self.model, attr, None), torch.nn.Module)]


def _peak_step_mib(fn, device) -> Optional[float]:
    """CUDA: peak memory of one call of ``fn`` above what was allocated before it (MiB); else None."""
    if device.type != "cuda":
        return None
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _peak_step_memory(fn, device, kind: str) -> Dict[str, Optional[float]]:
    """One call of ``fn``'s memory on CUDA (None elsewhere), as three fields: ``peak_<kind>_mib``, the peak
    allocated above what was allocated before the call (:func:`_peak_step_mib`); ``peak_<kind>_reserved_mib``,
    the peak of what the caching allocator holds from the driver (max_memory_reserved), which also counts
    the CUDA-graph pools that allocated memory does not see (a replayed graph allocates nothing new, so the
    first field flatters the graphed fast path); and ``held_<kind>_mib``, reserved less allocated before the call,
    i.e. those pools. Reserved memory is the whole process's: the methods live side by side, so it includes
    every model, optimiser state and graph pool. The cache is emptied first, so that blocks nothing holds
    any more (another method's freed activations) are not counted."""
    fields = {f"peak_{kind}_mib": None, f"peak_{kind}_reserved_mib": None, f"held_{kind}_mib": None}
    if device.type != "cuda":
        return fields
    sync(device)
    torch.cuda.empty_cache()
    fields[f"held_{kind}_mib"] = (torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)) / 2**20
    fields[f"peak_{kind}_mib"] = _peak_step_mib(fn, device)   # (resets the peaks, reserved included, first)
    fields[f"peak_{kind}_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    return fields


def _trains_jr(method) -> bool:
    jr = getattr(method, "jr", None)
    return jr is not None and jr.enabled


def measure(methods: Dict[str, Method], device, steps: int = 3, warmup: int = 1, profile: bool = False) -> Dict:
    """Interleaved timing of the methods' training steps, then of their inference batches (see the module
    docstring); solver stats from each method's last timed step. ``profile``: one more training step
    per method, after the timed ones, under torch.profiler (:func:`lmdeq.app.bench.profile.profile_step`).
    Returns {method: fields}, with the per-round times in ``train_ms_all`` / ``infer_ms_all``."""
    device = torch.device(device)
    out = {name: {} for name in methods}
    for m in methods.values():
        m.model.train()
    fns = {}
    for n, m in methods.items():
        if _trains_jr(m):   # (a-JR): one plain and one JR step per round (lmdeq.app.bench.jacobian_steps)
            fns[n], fns[n + JR_SUFFIX] = functools.partial(m.train_step, False), functools.partial(m.train_step, True)
        else:
            fns[n] = m.train_step
    train = interleaved_rounds(fns, steps, warmup, lambda: sync(device))
    jr = combine_rounds(methods, train)   # per round (1 - p) t_plain + p t_JR, and both kinds apart
    for name, m in methods.items():
        info = dict(m.model.last_info)
        out[name].update(f_evals=info.get("f_nstep"), b_evals=info.get("b_nstep"),
                         f_residual=info.get("f_residual"), b_residual=info.get("b_residual"),
                         train_cuda_graph=bool(info.get("cuda_graph")),
                         # a JR method's peak is its JR step's (the double backward holds the most)
                         **_peak_step_memory(functools.partial(m.train_step, True) if _trains_jr(m) else m.train_step,
                                             device, "train"))
        if profile:
            with marked_modules(m.marks()):
                out[name]["profile"] = profile_step(m.train_step, device)
        else:
            out[name]["profile"] = None
    for m in methods.values():
        m.model.eval()
    infer = interleaved_rounds({n: m.infer for n, m in methods.items()}, steps, warmup, lambda: sync(device))
    for name, m in methods.items():
        info = dict(m.model.last_info)
        row = out[name]
        row.update(infer_f_evals=info.get("f_nstep"), infer_f_residual=info.get("f_residual"),
                   **_peak_step_memory(m.infer, device, "infer"),
                   lipschitz_bound=m.model.lipschitz_bound() if hasattr(m.model, "lipschitz_bound") else None)
        row["cuda_graph"] = row.pop("train_cuda_graph") and bool(info.get("cuda_graph"))
        row["graph_captures"] = info.get("graph_captures")  # all of them, warm-up included (model.graph_stats())
        for kind, times in (("train", train[name]), ("infer", infer[name])):
            ms = [1e3 * t for t in times]
            row[f"{kind}_ms_all"] = ms
            row[f"{kind}_spread"] = spread(ms)
            row[f"{kind}_ms"] = row[f"{kind}_spread"]["median"]
        row.update(jr.get(name, {}))
    return out


# (numerator, denominator, name): t_num / t_den per round, the speed-up of den over num. aJR/b is our
# reproduction of the paper's speed-up (the authors' Lipschitz MDEQ over their MDEQ + JR baseline).
RATIOS = (("original", "authors", "a/b"), ("original", "lmdeq", "a/c"), ("authors", "lmdeq", "b/c"),
          ("original_jr", "authors", "aJR/b"), ("original_jr", "lmdeq", "aJR/c"))


def _ratios(rows: List[Dict]) -> Dict[str, Dict[str, float]]:
    """Per ratio name ('train a/c', ...): the spread of the per-round ratios of one interleaved run."""
    by = {r["method"]: r for r in rows}
    out = {}
    for num, den, name in RATIOS:
        if num in by and den in by:
            for kind in ("train", "infer"):
                out[f"{kind} {name}"] = ratio_spread(by[num][f"{kind}_ms_all"], by[den][f"{kind}_ms_all"])
    return out


def _random_batch(batch: int, shape, num_classes: int, seed: int, device):
    """N(0, 1) images of ``shape`` (C, H, W) and uniform labels, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g)
    return x.to(device), torch.randint(0, num_classes, (batch,), generator=g).to(device)


def _batch(preset_batch: int, device, data: Optional[str], seed: int, preset: str = "cifar10-small"):
    """One batch of images and labels: real images from ``data`` if given (normalised with the preset's
    statistics), else N(0, 1) images of the preset's input shape."""
    from ...models.presets import PRESET_DATA, PRESETS, input_shape

    spec, stats = PRESETS[preset], PRESET_DATA[preset]
    if not data:
        return _random_batch(preset_batch, input_shape(spec), spec["num_classes"], seed, device)
    from ..data.augment import normalize
    from ..data.batches import eval_batches
    from ..data.sources import load_source
    from ..data.split import stratified_subset

    images = load_source(data).train
    picked = images.subset(stratified_subset(images.labels, len(images.classes), preset_batch, seed, "bench"))
    images, y = next(iter(eval_batches(picked, preset_batch)))
    return normalize(images, stats["mean"], stats["std"]).to(device), y.to(device)


def weights_used(rows: List[Dict], weights: Optional[List[str]]) -> str:
    """One line saying which weights the rows really ran on: init for which methods, then, per method, the
    checkpoint it loaded, or that no ``--weights`` checkpoint fitted it (no trained row), or that none was
    given at all (a training that left no checkpoint must not pass silently as a run on trained weights)."""
    init = [r for r in rows if r["weights"] == "init"]
    trained = {r["method"]: r["weights_source"] for r in rows if r["weights"] == "trained"}
    line = (f"Weights: {init[0]['weights_source'] if init else 'none'} for "
            + (", ".join(LABELS.get(r["method"], r["method"]) for r in init) or "no method"))
    if not weights:
        return line + "; trained: none (no --weights given: init weights only)"
    parts = [f"{LABELS.get(m, m)} <- {src}" for m, src in trained.items()]
    parts += [f"{LABELS.get(r['method'], r['method'])}: no --weights checkpoint of its variant"
              for r in init if r["method"] not in trained]
    return line + "; trained: " + "; ".join(parts)


def run(preset: str = "cifar10-small", batch: int = 32, device="cpu", steps: int = 3, warmup: int = 1,
        weights: Optional[List[str]] = None, methods=METHODS, data: Optional[str] = None, seed: int = 0,
        channels_last: bool = True, bf16: bool = False, check_every: Optional[int] = None,
        solve_mode: Optional[str] = None, cuda_graphs: bool = True, cudnn_benchmark: bool = True,
        profile: bool = False, out_dir: Optional[str] = None, tag: str = "", log=None) -> Dict:
    """Run the benchmark; write JSON + PNG under ``out_dir`` (if given: :func:`result_stem` .json and .png, listed
    in ``result["files"]``); return the result dict. ``steps``: timed
    rounds (each method once per round), after ``warmup`` untimed rounds. ``solve_mode`` of the fast
    path defaults to 'apriori' on CUDA and 'checked' elsewhere. ``cudnn_benchmark`` (cuDNN's
    convolution autotuner, on in the original MDEQ's configs) applies to every method alike and is
    restored afterwards."""
    from ...models import mdeq

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    load_start = load_average()
    device = torch.device(device)
    solve_mode = solve_mode or ("apriori" if device.type == "cuda" else "checked")
    x, y = _batch(batch, device, data, seed, preset)
    checkpoints = []
    if weights:
        from ..train.checkpoint import load_checkpoint

        checkpoints = [{**load_checkpoint(path), "path": path} for path in weights]
    weight_sets = ["init"] + (["trained"] if checkpoints else [])
    rows: List[Dict] = []
    saved_cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark
    try:
        for wset in weight_sets:
            entries, sources = {}, {}
            for method in methods:
                torch.manual_seed(seed)
                config = method_config(method, preset, check_every, solve_mode, cuda_graphs)
                if wset == "trained":   # the shapes of the checkpoint it loads (a run trained with --set channels=...)
                    config = with_architecture(config, _fitting(config, checkpoints))
                model = mdeq(**config)
                sources[method] = "random init (seed %d)" % seed
                if wset == "trained":
                    loaded = _load_weights(model, checkpoints)
                    if loaded is None:
                        log(f"{method}: no --weights checkpoint of this variant/preset; skipped on trained weights")
                        continue
                    sources[method] = loaded
                model = model.to(device)
                xm, ym = x, y
                if tuple(x.shape[1:]) != tuple(model.input_shape):
                    if data:   # real images of another shape than the checkpoint's model: say so, do not resize
                        raise ConfigError(f"--weights {sources[method]}: its model takes {tuple(model.input_shape)} "
                                          f"images, --data {data} gives {tuple(x.shape[1:])}")
                    # a checkpoint trained with another --set image_size / in_channels: random images of its shape
                    xm, ym = _random_batch(batch, model.input_shape, model.config["num_classes"], seed, device)
                fast = method == "lmdeq"
                if fast and channels_last:
                    model = model.to(memory_format=torch.channels_last)
                    xm = xm.contiguous(memory_format=torch.channels_last)
                entries[method] = Method(model, xm, ym, autocast_dtype=torch.bfloat16 if (fast and bf16) else None)
            if not entries:
                continue
            log(f"[{wset}] {', '.join(LABELS[m] for m in entries)}: {warmup} warm-up and {steps} timed rounds of "
                f"training steps, then of inference batches, interleaved ...")
            measured = measure(entries, device, steps=steps, warmup=warmup, profile=profile)
            for method, m in measured.items():
                rows.append({"weights": wset, "weights_source": sources[method], "method": method,
                             "label": LABELS[method], **m})
                log(f"    {LABELS[method]}: train {fmt_spread(m['train_spread'])} ms  infer "
                    f"{fmt_spread(m['infer_spread'])} ms  f/b evals {m['f_evals']}/{m['b_evals']}  "
                    f"f_res {m['f_residual']}")
    finally:
        torch.backends.cudnn.benchmark = saved_cudnn_benchmark
    ratios = {w: _ratios([r for r in rows if r["weights"] == w]) for w in weight_sets}
    env = environment(device)
    load = load_record(load_start, load_average(), env["threads"])
    if load["warning"]:
        log("WARNING: " + load["warning"])
    result = {"benchmark": "speedup", "env": env, "load": load, "preset": preset, "batch": batch,
              "steps": steps, "warmup": warmup, "timing": "interleaved rounds", "data": data or "random N(0,1) images",
              "seed": seed, "cudnn_benchmark": cudnn_benchmark,
              "fast_path": {"channels_last": channels_last, "bf16_autocast": bf16, "solve_mode": solve_mode,
                            "cuda_graphs": any(r["cuda_graph"] for r in rows if r["method"] == "lmdeq"),
                            "check_every": check_every},
              "rows": rows, "ratios": ratios}
    result["weights_used"] = weights_used(rows, weights)
    log(result["weights_used"])
    result["table"] = table(result)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.join(out_dir, result_stem(device, tag))
        with open(stem + ".json", "w") as fh:
            json.dump(result, fh, indent=1)
        result["files"] = [stem + ".json", figure(result, stem + ".png")]
    return result


SHORT = {"original": "(a) MDEQ", "original_jr": "(a-JR) MDEQ+JR", "authors": "(b) authors'", "lmdeq": "(c) lmdeq"}
HEADLINE = ("a/c", "aJR/c", "b/c", "aJR/b")   # the ratios written on the figure


def result_stem(device, tag: str = "") -> str:
    """The result files' name without extension: speedup-<device slug><tag>."""
    return f"speedup-{device_slug(torch.device(device))}{tag}"


def ratio_notes(result: Dict) -> List[str]:
    """The headline ratios of a result, one line per weight set: the median of the per-round training-step
    ratios with their min-max (:data:`HEADLINE`, those present)."""
    lines = []
    for weights, ratios in result["ratios"].items():
        shown = [f"{name} {ratios['train ' + name]['median']:.2f}x ({ratios['train ' + name]['min']:.2f}-"
                 f"{ratios['train ' + name]['max']:.2f})" for name in HEADLINE if "train " + name in ratios]
        if shown:
            lines.append(f"training-step speed-up, {weights} weights: " + ", ".join(shown))
    if lines:
        lines.append("x/y: the time of x over the time of y in the same round (how many times faster y is), median "
                     "over the rounds (min-max)")
    return lines


def chart_notes(result: Dict) -> List[str]:
    """The lines written under the timing chart: the headline ratios, what the bars and whiskers are, and the
    load warning when the machine was busier than its threads."""
    return (ratio_notes(result)
            + [f"bars: median of {result['steps']} interleaved rounds (after {result['warmup']} warm-up rounds); "
               "whiskers: min-max over the rounds; log scale; (a) original MDEQ, (a-JR) with Jacobian regularisation, "
               "(b) the authors' Lipschitz MDEQ, (c) lmdeq"]
            + load_note(result["load"]))


def figure(result: Dict, path: str) -> str:
    """The PNG of a speed-up result. Profiled rows (``--profile``): where one training step's time goes, per
    method (:func:`lmdeq.app.bench.profile.phase_chart`); else the median ms per training step and per inference
    batch of each method, with whiskers, on a log axis. Both with the headline ratios and the load warning, all
    read from ``result`` (so that a committed JSON redraws its figure: lmdeq.app.bench.replot)."""
    rows = result["rows"]
    groups = [f"{r['weights']}\n{SHORT.get(r['method'], r['method'])}" for r in rows]
    where = f"{result['preset']}, batch {result['batch']}, {result['env']['device']}"
    profiled = [(g, r["profile"]) for g, r in zip(groups, rows) if r.get("profile")]
    if profiled:
        notes = ratio_notes(result) + [
            f"one profiled training step per method ({profiled[0][1]['clock']} clock), after the "
            f"{result['steps']} timed rounds; a bar is the busy time (the operators' self times), split by phase; "
            "each phase includes its autograd backward"] + load_note(result["load"])
        return phase_chart(path, f"Where a training step's time goes: {where}", profiled, notes)
    return bar_chart(path, f"Speed-up benchmark: {where}", groups,
                     {"train ms/step": [r["train_ms"] for r in rows],
                      "inference ms/batch": [r["infer_ms"] for r in rows]}, "milliseconds",
                     errors={"train ms/step": [r["train_spread"] for r in rows],
                             "inference ms/batch": [r["infer_spread"] for r in rows]},
                     log_y=True, notes=chart_notes(result))


def profile_table(rows: List[Dict]) -> str:
    """Where one training step's time goes, per profiled row: phases (with their backward passes) and
    operator classes as ms and share of the busy time, then each row's top operators."""
    heads = [f"{r['weights']} {r['label']}" for r in rows]
    keys = [f"col{i}" for i in range(len(rows))]

    def block(key, names):
        lines = []
        for name in names:
            cells = {"part": name}
            for k, r in zip(keys, rows):
                ms = r["profile"][key].get(name)
                cells[k] = None if ms is None else f"{ms:.3g} ({100 * ms / r['profile']['busy_ms']:.0f}%)"
            lines.append(cells)
        return lines

    present = {p for r in rows for p in r["profile"]["phases_ms"]}
    phases = [p for p in PHASE_ORDER if p in present]
    totals = [{"part": "wall / busy", **{k: f"{r['profile']['wall_ms']:.3g} / {r['profile']['busy_ms']:.3g}"
                                          for k, r in zip(keys, rows)}}]
    text = (f"One profiled training step ({rows[0]['profile']['clock']} clock), ms (share of busy time):\n\n"
            + markdown_table(totals + block("phases_ms", phases), ["part"] + keys, ["phase"] + heads)
            + "\n\n" + markdown_table(block("op_classes_ms", OP_CLASSES), ["part"] + keys,
                                      ["operator class"] + heads))
    for r in rows:
        ops = "; ".join(f"{op['name']} {op['self_ms']:.3g} ms x{op['calls']}" for op in r["profile"]["top_ops"])
        text += f"\n\ntop operators, {r['weights']} {r['label']}: {ops}"
    return text


def table(result: Dict) -> str:
    """The Markdown report: per-method rows (median, IQR, min-max), then the round-by-round ratios, the
    profile if any, and the machine load."""
    rows = [{**r, "train": fmt_spread(r["train_spread"]), "infer": fmt_spread(r["infer_spread"])}
            for r in result["rows"]]
    cols = ["weights", "label", "train", "infer", "f_evals", "b_evals", "f_residual", "b_residual",
            "infer_f_evals", "peak_train_mib", "peak_train_reserved_mib", "lipschitz_bound"]
    heads = ["weights", "method", "train ms/step", "infer ms/batch", "fwd f-evals", "bwd evals", "fwd rel res",
             "bwd rel res", "infer f-evals", "peak MiB (train step)", "peak reserved MiB (process)", "L bound"]
    text = markdown_table(rows, cols, heads)
    ratio_rows = [{"weights": w, **{k: fmt_spread(v) for k, v in r.items()}} for w, r in result["ratios"].items() if r]
    if ratio_rows:  # none when a single method ran
        keys = ["weights"] + [f"{kind} {name}" for kind in ("train", "infer") for _, _, name in RATIOS
                              if f"{kind} {name}" in ratio_rows[0]]
        text += "\n\nRatios of the interleaved rounds, per round t_num / t_den:\n\n" + markdown_table(ratio_rows, keys)
    text += jacobian_table(result["rows"])
    profiled = [r for r in result["rows"] if r.get("profile")]
    if profiled:
        text += "\n\n" + profile_table(profiled)
    env, load = result["env"], result["load"]
    header = (f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}; allocator "
              f"{'tuned' if env['allocator'].get('tuned') else 'glibc defaults'} ({env['allocator'].get('source')}); preset {result['preset']}, "
              f"batch {result['batch']}; {result['warmup']} warm-up + {result['steps']} timed rounds, methods "
              f"interleaved; cells: median (IQR; min-max)\nLoad average (1/5/15 min) at start {fmt_loads(load['loadavg_start'])}, "
              f"at end {fmt_loads(load['loadavg_end'])}; {load['threads']} threads")
    if load["warning"]:
        header += f"\nWARNING: {load['warning']}"
    if result.get("weights_used"):
        header += "\n" + result["weights_used"]
    if any(r.get("peak_train_reserved_mib") is not None for r in result["rows"]):
        header += ("\nPeak MiB: allocated by the step itself; peak reserved: what the whole process holds at the "
                   "step's peak, every method's model side by side and the CUDA-graph pools included (the pools "
                   "that the step's allocated peak does not see)")
    return header + "\n\n" + text
