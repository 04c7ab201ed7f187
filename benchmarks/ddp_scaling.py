"""Data-parallel scaling of ``lmdeq train``'s step: training steps/s with one process against W gloo processes
(torchrun, DistributedDataParallel), each with T intra-op threads, at the same global batch.

    python benchmarks/ddp_scaling.py --data ../shared/data/cifar10-train-jpeg.tar.gz    # the measurement
    python benchmarks/ddp_scaling.py --quick                                           # smoke test (seconds)
    python benchmarks/ddp_scaling.py --device cuda --configs 1x1,2x1,4x1,8x1 --batch-size 128   # 1 -> N GPUs (nccl)

Every run of a configuration ``PxT`` (P processes, T threads each; default ``1x1,2x1``) is a fresh set of
processes: P = 1 runs this script as one plain process (lmdeq's single-process path, no process group),
P > 1 runs it under ``torchrun --standalone --nproc-per-node=P`` (the data-parallel path of ``lmdeq
train``: the global batch sharded across the ranks, DDP's gradient all-reduce, the summed step
statistics). Each worker pins its allocator as lmdeq's entry points do, sets OMP_NUM_THREADS and torch's
threads to T, builds the seeded model, trains ``--warmup`` steps, then times ``--steps`` steps between two
barriers; rank 0 reports. The configurations alternate round by round (ABAB..., the order reversed every
other round, so that load drift does not favour one); the summary is the median and range of steps/s
over the rounds, the median of the per-round ratios (each round's configurations ran back to back), the
solver iterations per step (each rank's solve stops when its shard has converged, so the work per step
can differ) and the 1-minute load average before every run. Results: a Markdown table on stdout and the JSON
``--out FILE``, by default ``ddp-scaling-<device>.json`` in a new run folder outside the checkout
(lmdeq/app/bench/outputs.py; ``--quick``: no JSON unless ``--out``); an existing file is refused before any
work unless ``--force``. With ``--device cuda`` every rank trains on its own GPU
(nccl) and the clocks are read after synchronising the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(channels=[8, 8], head_channels=[4, 8], final_channels=32, num_groups=4)


def parse_configs(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        p, sep, t = part.strip().partition("x")
        if not sep or not p.isdigit() or not t.isdigit() or int(p) < 1 or int(t) < 1:
            raise argparse.ArgumentTypeError(f"configs: expected PxT entries such as 1x1,2x1, got {part!r}")
        out.append((int(p), int(t)))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="ImageFolder / .tar.gz to take the batches from (default: random images)")
    p.add_argument("--cache-dir", help="where --data is extracted and decoded (default: lmdeq's cache)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu: gloo processes; cuda: one GPU per process, nccl (default: cpu)")
    p.add_argument("--preset", default="cifar10-small")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (default: 64)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per run (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per run first (default: 2)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of every configuration (default: 5)")
    p.add_argument("--configs", type=parse_configs, default=parse_configs("1x1,2x1"),
                   help="processes x threads per process, comma-separated (default: 1x1,2x1)")
    p.add_argument("--seed", type=int, default=0)
    from lmdeq.app.argtypes import output_file
    from lmdeq.app.bench.outputs import add_out_arguments

    add_out_arguments(p, "ddp-scaling", out_type=output_file, what="the result JSON (--quick: none unless given)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny model, batch 8, 1 warm-up and 2 timed steps, 1 round")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one measurement, write its JSON here
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    return p


# -- one measurement (a plain process, or every rank under torchrun) -------------------------------------------
def _batches_data(args, n: int):
    import torch

    from lmdeq.app.data import LabelledImages
    from lmdeq.app.train import TrainConfig
    from lmdeq.app.data.run_data import prepare_splits

    if args.data is None:
        g = torch.Generator().manual_seed(args.seed)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        return LabelledImages(images, torch.arange(n) % 10, tuple(f"c{i}" for i in range(10)))
    cfg = TrainConfig(data=args.data, val_fraction=0.0, limit_train=n, seed=args.seed)
    return prepare_splits(cfg, args.cache_dir).train


def worker(args) -> None:
    from lmdeq.app.allocator import configure_process

    configure_process()
    import torch

    torch.set_num_threads(args.threads)
    from lmdeq.app.bench.device import device_slug, environment, sync
    from lmdeq.app.train import TrainConfig
    from lmdeq.app.train import replicas
    from lmdeq.app.data.batches import train_batches
    from lmdeq.app.train.checkpoint import seed_everything
    from lmdeq.app.train.distributed import distributed
    from lmdeq.app.train.hooks import solver_stats
    from lmdeq.app.train.model import build_model
    from lmdeq.app.train.optim import build_optimizer, build_scheduler
    from lmdeq.app.train.step import train_step

    total = args.warmup + args.steps
    with distributed(torch.device(args.device), "auto") as (dist, device):
        data = dist.staggered(lambda: _batches_data(args, args.batch_size * total))
        cfg = TrainConfig(preset=args.preset, model_overrides=TINY if args.quick else {}, batch_size=args.batch_size,
                          epochs=1, seed=args.seed)
        seed_everything(cfg.seed)
        model = build_model(cfg).to(device)
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg, total)
        forward = model
        if dist.enabled:
            forward = replicas.wrap(model, dist, device)
            replicas.broadcast_state(model, dist)
        forward.train()
        loader = train_batches(data, cfg.batch_size, cfg.seed, 1, shard=(dist.rank, dist.world))
        barrier = torch.zeros(1, device=device)
        step_s, f_nstep, b_nstep = [], [], []
        start = None
        for k, (images, labels) in enumerate(loader):
            if k == args.warmup:
                sync(device)
                dist.all_sum(barrier)
                start = time.perf_counter()
            t0 = time.perf_counter()
            train_step(model, optimizer, scheduler, images, labels, device, len(data.classes), forward=forward,
                       dist=dist)
            sync(device)
            stats = solver_stats(model)
            counts = dist.all_sum(torch.tensor([stats.get("f_nstep", 0.0), stats.get("b_nstep", 0.0)],
                                               dtype=torch.float64)) / dist.world
            if k >= args.warmup:
                step_s.append(time.perf_counter() - t0)
                f_nstep.append(float(counts[0]))
                b_nstep.append(float(counts[1]))
        sync(device)
        dist.all_sum(barrier)
        elapsed = time.perf_counter() - start
        if dist.is_main:
            result = {"processes": dist.world, "threads": torch.get_num_threads(), "steps": len(step_s),
                      "elapsed_s": elapsed, "steps_per_s": len(step_s) / elapsed, "step_s": step_s,
                      "f_nstep": f_nstep, "b_nstep": b_nstep, "environment": environment(device),
                      "slug": device_slug(device)}
            Path(args.worker).write_text(json.dumps(result))


# -- the driver --------------------------------------------------------------------------------------------------
def _launch(args, processes: int, threads: int, result: Path) -> dict:
    passed = ["--device", args.device, "--preset", args.preset, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--seed", str(args.seed), "--threads", str(threads),
              "--worker", str(result)]
    passed += ["--data", args.data] if args.data else []
    passed += ["--cache-dir", args.cache_dir] if args.cache_dir else []
    passed += ["--quick"] if args.quick else []
    script = str(Path(__file__).resolve())
    cmd = ([sys.executable, script] if processes == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", script])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    load = os.getloadavg()[0]
    done = subprocess.run(cmd + passed, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ddp_scaling: the {processes}x{threads} run failed (exit {done.returncode}):\n"
                         + (done.stdout + done.stderr)[-4000:])
    out = json.loads(result.read_text())
    out["load_avg_1m_before"] = load
    return out


def _summary(runs: list[dict]) -> dict:
    sps = [r["steps_per_s"] for r in runs]
    return {"steps_per_s_median": statistics.median(sps), "steps_per_s_min": min(sps), "steps_per_s_max": max(sps),
            "step_ms_median": 1e3 * statistics.median(s for r in runs for s in r["step_s"]),
            "f_nstep_mean": statistics.fmean(x for r in runs for x in r["f_nstep"]),
            "b_nstep_mean": statistics.fmean(x for r in runs for x in r["b_nstep"]), "rounds": len(runs)}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.rounds = 8, 2, 1, 1
    out = None
    if args.out is not None or not args.quick:   # where the JSON goes, before any work
        import torch

        from lmdeq.app.bench.device import device_slug
        from lmdeq.app.bench.outputs import result_file
        from lmdeq.errors import ConfigError

        try:
            out = result_file(args.out, "ddp-scaling", f"ddp-scaling-{device_slug(torch.device(args.device))}.json",
                              args.force)
        except ConfigError as err:
            parser.error(str(err))
    configs = args.configs
    runs: dict[str, list[dict]] = {f"{p}x{t}": [] for p, t in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for p, t in order:
                res = _launch(args, p, t, Path(tmp) / f"r{r}-{p}x{t}.json")
                runs[f"{p}x{t}"].append(res)
                print(f"round {r + 1}/{args.rounds}: {p} process(es) x {t} thread(s): {res['steps_per_s']:.3f} steps/s "
                      f"(load {res['load_avg_1m_before']:.2f})", flush=True)
    base = f"{configs[0][0]}x{configs[0][1]}"
    summary = {name: _summary(rs) for name, rs in runs.items()}
    for name, rs in runs.items():
        ratios = [a["steps_per_s"] / b["steps_per_s"] for a, b in zip(rs, runs[base])]
        summary[name].update(ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
    env = runs[base][0]["environment"]
    print(f"\nglobal batch {args.batch_size}, {args.preset}{' (tiny)' if args.quick else ''}, "
          f"{'random images' if args.data is None else args.data}; {args.steps} timed steps after {args.warmup}, "
          f"{args.rounds} rounds; {env['device']}, torch {env['torch']}, allocator {env['allocator'].get('source')}\n")
    print(f"| processes x threads | steps/s median (min-max) | ms/step | vs {base} (min-max) | f_nstep | b_nstep |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, s in summary.items():
        print(f"| {name} | {s['steps_per_s_median']:.3f} ({s['steps_per_s_min']:.3f}-{s['steps_per_s_max']:.3f}) | "
              f"{s['step_ms_median']:.0f} | {s['ratio_median']:.2f}x ({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) | "
              f"{s['f_nstep_mean']:.1f} | {s['b_nstep_mean']:.1f} |")
    if out is not None:
        payload = {"benchmark": "ddp_scaling", "argv": sys.argv[1:], "device": args.device, "preset": args.preset,
                   "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
                   "data": args.data, "cpu_count": os.cpu_count(), "load_avg_end": os.getloadavg(),
                   "summary": summary, "runs": runs}
        out.write_text(json.dumps(payload, indent=1))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
