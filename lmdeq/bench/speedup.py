"""The speed-up benchmark (``lmdeq bench``): original MDEQ vs the authors' Lipschitz MDEQ vs lmdeq's fast path.

Measured on one device, in one run, with the same batch, the same weights policy and the same data:

* (a) ``original`` — lmdeq's faithful original MDEQ: Broyden, 18/20 (large) or 22/22 (small) iterations,
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

Per method: ms per training step (forward solve + backward solve + optimiser step + constraint upkeep),
ms per inference batch, forward/backward f-evaluations and final relative residuals (from the last
timed step), peak device memory, and the ratios a/b, a/c, b/c; on random-init weights and, with
``--weights CHECKPOINT`` (from ``lmdeq train``; repeatable, one per variant), on trained weights.
With ``--profile``, one more training step per method runs under torch.profiler and the report adds
where its time goes (solve phases and top operators, :mod:`lmdeq.bench.profile`).
"""
from __future__ import annotations

import copy
import json
import os
import sys
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from .device import device_slug, environment, median, time_call
from .profile import PHASES, profile_step
from .report import bar_chart, markdown_table

__all__ = ["METHODS", "method_config", "measure", "run"]

METHODS = ("original", "authors", "lmdeq")
# What the certificate costs: (c)'s architecture and solver with another conv constraint. Without a
# certified bound there is no a-priori count, so their checked fixed-point solves stop at the released
# thresholds (18/20 f-evaluations).
VARIANTS = ("lmdeq_nocap", "lmdeq_released_cap")
LABELS = {"original": "(a) original MDEQ", "authors": "(b) authors' Lipschitz MDEQ as released",
          "lmdeq": "(c) lmdeq fast path", "lmdeq_nocap": "(c) architecture, no conv cap",
          "lmdeq_released_cap": "(c) architecture, (b)'s cap as released"}
_VARIANT_CONSTRAINT = {"lmdeq_nocap": "none", "lmdeq_released_cap": "released"}


def method_config(method: str, preset: str, check_every: Optional[int] = None, solve_mode: str = "checked",
                  cuda_graphs: bool = True, unrolled_warmup_steps: int = 0) -> dict:
    """mdeq() keyword arguments of a benchmark method (``check_every``, ``solve_mode`` and ``cuda_graphs``
    apply to the fast path only, ``unrolled_warmup_steps`` to the original MDEQ only)."""
    from ..models import AUTHORS_SOLVER

    if method == "original":
        return dict(preset=preset, lipschitz=False, unrolled_warmup_steps=unrolled_warmup_steps)
    if method == "authors":
        return dict(preset=preset, lipschitz=True, constraint="released", **copy.deepcopy(AUTHORS_SOLVER))
    if method == "lmdeq":
        kw = dict(preset=preset, lipschitz=True, solve_mode=solve_mode, cuda_graphs=cuda_graphs)
        if check_every is not None:
            kw.update(solver_kwargs={"check_every": check_every}, b_solver_kwargs={"check_every": check_every})
        return kw
    if method in VARIANTS:
        return dict(preset=preset, lipschitz=True, constraint=_VARIANT_CONSTRAINT[method], f_max_iter=18,
                    b_max_iter=20, solve_mode="checked")
    raise ValueError(f"method must be one of {METHODS + VARIANTS}, got {method!r}")


def _load_weights(model, checkpoints: List[dict]) -> Optional[str]:
    """Load the first checkpoint of the model's variant (original / Lipschitz); return its path."""
    for ckpt in checkpoints:
        if bool(ckpt["model_config"].get("lipschitz")) == bool(model.config["lipschitz"]) and \
                ckpt["model_config"].get("preset") == model.config["preset"]:
            missing, unexpected = model.load_state_dict(ckpt["model_state"], strict=False)
            # Buffers of the certified parametrisation (norm estimates) may be absent in (b); parameters may not.
            params = {n for n, _ in model.named_parameters()}
            if params & set(missing):
                raise ValueError(f"checkpoint {ckpt['path']} lacks parameters {sorted(params & set(missing))[:5]}")
            return ckpt["path"]
    return None


def measure(model, x, y, device, steps: int = 3, warmup: int = 1, lr: float = 1e-3,
            autocast_dtype: Optional[torch.dtype] = None, profile: bool = False) -> Dict:
    """Time training steps and inference batches of ``model`` on (x, y); solver stats from the last step.
    ``profile``: one more training step, after the timed ones, under torch.profiler (see
    :func:`lmdeq.bench.profile.profile_step`), reported as ``profile``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else torch.autocast(device.type, enabled=False))

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        with record_function("bench::optimizer_step"):
            opt.step()
        if hasattr(model, "constraint_step"):
            with record_function("bench::constraint_step"):
                model.constraint_step()

    def infer():
        with torch.no_grad(), autocast:
            model(x)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    train_times = time_call(train_step, device, repeats=steps, warmup=warmup)
    train_info = dict(model.last_info)
    peak_train = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    step_profile = profile_step(train_step, device) if profile else None
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    infer_times = time_call(infer, device, repeats=steps, warmup=warmup)
    eval_info = dict(model.last_info)
    peak_eval = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "train_ms": 1e3 * median(train_times), "infer_ms": 1e3 * median(infer_times),
        "train_ms_all": [1e3 * t for t in train_times], "infer_ms_all": [1e3 * t for t in infer_times],
        "f_evals": train_info.get("f_nstep"), "b_evals": train_info.get("b_nstep"),
        "f_residual": train_info.get("f_residual"), "b_residual": train_info.get("b_residual"),
        "infer_f_evals": eval_info.get("f_nstep"), "infer_f_residual": eval_info.get("f_residual"),
        "cuda_graph": bool(train_info.get("cuda_graph")) and bool(eval_info.get("cuda_graph")),
        "graph_captures": eval_info.get("graph_captures"),  # all of them, warm-up included (model.graph_stats())
        "peak_train_mib": peak_train, "peak_infer_mib": peak_eval,
        "lipschitz_bound": model.lipschitz_bound() if hasattr(model, "lipschitz_bound") else None,
        "profile": step_profile,
    }


def _ratios(rows: List[Dict]) -> Dict[str, float]:
    by = {r["method"]: r for r in rows}
    out = {}
    for num, den, name in (("original", "authors", "a/b"), ("original", "lmdeq", "a/c"), ("authors", "lmdeq", "b/c")):
        if num in by and den in by:
            out[f"train {name}"] = by[num]["train_ms"] / by[den]["train_ms"]
            out[f"infer {name}"] = by[num]["infer_ms"] / by[den]["infer_ms"]
    return out


def _batch(preset_batch: int, device, data: Optional[str], seed: int):
    """One batch of images and labels: real CIFAR-10 images from ``data`` if given, else N(0, 1) images."""
    g = torch.Generator().manual_seed(seed)
    if data:
        from ..train.augment import normalize
        from ..train.batches import eval_batches
        from ..train.sources import load_source
        from ..train.split import stratified_subset

        images = load_source(data).train
        picked = images.subset(stratified_subset(images.labels, len(images.classes), preset_batch, seed, "bench"))
        images, y = next(iter(eval_batches(picked, preset_batch)))
        x = normalize(images)
    else:
        x = torch.randn(preset_batch, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (preset_batch,), generator=g)
    return x.to(device), y.to(device)


def run(preset: str = "cifar10-small", batch: int = 32, device="cpu", steps: int = 3, warmup: int = 1,
        weights: Optional[List[str]] = None, methods=METHODS, data: Optional[str] = None, seed: int = 0,
        channels_last: bool = True, bf16: bool = False, check_every: Optional[int] = None,
        solve_mode: Optional[str] = None, cuda_graphs: bool = True, cudnn_benchmark: bool = True,
        profile: bool = False, out_dir: Optional[str] = "benchmarks/results", tag: str = "", log=None) -> Dict:
    """Run the benchmark; write JSON + PNG under ``out_dir``; return the result dict. ``solve_mode`` of the
    fast path defaults to 'apriori' on CUDA and 'checked' elsewhere. ``cudnn_benchmark`` (cuDNN's
    convolution autotuner, on in the original MDEQ's configs) applies to every method alike and is
    restored afterwards."""
    from ..models import mdeq

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    device = torch.device(device)
    solve_mode = solve_mode or ("apriori" if device.type == "cuda" else "checked")
    x, y = _batch(batch, device, data, seed)
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
            for method in methods:
                torch.manual_seed(seed)
                model = mdeq(**method_config(method, preset, check_every, solve_mode, cuda_graphs))
                source = "random init (seed %d)" % seed
                if wset == "trained":
                    loaded = _load_weights(model, checkpoints)
                    if loaded is None:
                        log(f"{method}: no --weights checkpoint of this variant/preset; skipped on trained weights")
                        continue
                    source = loaded
                model = model.to(device)
                xm = x
                fast = method == "lmdeq"
                if fast and channels_last:
                    model = model.to(memory_format=torch.channels_last)
                    xm = x.contiguous(memory_format=torch.channels_last)
                log(f"[{wset}] {LABELS[method]}: timing {steps} training steps and {steps} inference batches ...")
                m = measure(model, xm, y, device, steps=steps, warmup=warmup,
                            autocast_dtype=torch.bfloat16 if (fast and bf16) else None, profile=profile)
                row = {"weights": wset, "weights_source": source, "method": method, "label": LABELS[method], **m}
                rows.append(row)
                log(f"    train {m['train_ms']:.1f} ms  infer {m['infer_ms']:.1f} ms  f/b evals "
                    f"{m['f_evals']}/{m['b_evals']}  f_res {m['f_residual']}")
    finally:
        torch.backends.cudnn.benchmark = saved_cudnn_benchmark
    ratios = {w: _ratios([r for r in rows if r["weights"] == w]) for w in weight_sets}
    result = {"benchmark": "speedup", "env": environment(device), "preset": preset, "batch": batch,
              "steps": steps, "warmup": warmup, "data": data or "random N(0,1) images", "seed": seed,
              "cudnn_benchmark": cudnn_benchmark,
              "fast_path": {"channels_last": channels_last, "bf16_autocast": bf16, "solve_mode": solve_mode,
                            "cuda_graphs": any(r["cuda_graph"] for r in rows if r["method"] == "lmdeq"),
                            "check_every": check_every},
              "rows": rows, "ratios": ratios}
    result["table"] = table(result)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.join(out_dir, f"speedup-{device_slug(device)}{tag}")
        with open(stem + ".json", "w") as fh:
            json.dump(result, fh, indent=1)
        groups = [f"{r['weights']}\n{r['method']}" for r in rows]
        bar_chart(stem + ".png", f"lmdeq speed-up, {preset}, batch {batch}, {result['env']['device']}",
                  groups, {"train ms/step": [r["train_ms"] for r in rows],
                           "inference ms/batch": [r["infer_ms"] for r in rows]}, "milliseconds")
        result["files"] = [stem + ".json", stem + ".png"]
    return result


def profile_table(rows: List[Dict]) -> str:
    """Where one training step's time goes, per profiled row: phases (ms), then each row's top operators."""
    phases = list(PHASES.values()) + ["rest"]
    flat = [{"weights": r["weights"], "label": r["label"], "clock": r["profile"]["clock"],
             "wall_ms": r["profile"]["wall_ms"], "busy_ms": r["profile"]["busy_ms"], **r["profile"]["phases_ms"]}
            for r in rows]
    text = ("One profiled training step (ms; device time on GPU, host time on CPU):\n\n"
            + markdown_table(flat, ["weights", "label", "clock", "wall_ms", "busy_ms"] + phases,
                             ["weights", "method", "clock", "wall", "busy"] + phases))
    for r in rows:
        ops = "; ".join(f"{op['name']} {op['self_ms']:.3g} ms x{op['calls']}" for op in r["profile"]["top_ops"])
        text += f"\n\ntop operators, {r['weights']} {r['label']}: {ops}"
    return text


def table(result: Dict) -> str:
    """The Markdown report: per-method rows, then the ratios."""
    cols = ["weights", "label", "train_ms", "infer_ms", "f_evals", "b_evals", "f_residual", "b_residual",
            "infer_f_evals", "peak_train_mib", "lipschitz_bound"]
    heads = ["weights", "method", "train ms/step", "infer ms/batch", "fwd f-evals", "bwd evals", "fwd rel res",
             "bwd rel res", "infer f-evals", "peak MiB (train)", "L bound"]
    text = markdown_table(result["rows"], cols, heads)
    ratio_rows = [{"weights": w, **r} for w, r in result["ratios"].items() if r]
    if ratio_rows:  # none when a single method ran
        keys = ["weights"] + sorted({k for r in ratio_rows for k in r if k != "weights"})
        text += "\n\n" + markdown_table(ratio_rows, keys)
    profiled = [r for r in result["rows"] if r.get("profile")]
    if profiled:
        text += "\n\n" + profile_table(profiled)
    env = result["env"]
    return (f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}; preset {result['preset']}, "
            f"batch {result['batch']}, median of {result['steps']} steps\n\n" + text)
