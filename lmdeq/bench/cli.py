"""``lmdeq bench``: argument parsing and dispatch to the benchmark suites."""
from __future__ import annotations

import json

import torch

SUITES = ("solvers",)


def add_arguments(parser):
    parser.add_argument("suite", nargs="?", default="solvers", choices=SUITES,
                        help="which benchmark (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 128 on GPU, 32 on CPU)")
    parser.add_argument("--max-iter", type=int, default=18, help="f-evaluations per solve (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case (median reported)")
    parser.add_argument("--quick", action="store_true", help="small configuration (smoke test)")
    parser.add_argument("--out", default="benchmarks/results", help="directory for result files")


def run(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("lmdeq bench: --device cuda requested but no CUDA device is visible")
    batch = args.batch or (128 if device.type == "cuda" else 32)
    if args.suite == "solvers":
        from .solvers import run as run_solvers

        kw = dict(device=device, batch=batch, max_iter=args.max_iter, repeats=args.repeats, out_dir=args.out)
        if args.quick:
            kw.update(batch=min(batch, 2), max_iter=min(args.max_iter, 4), repeats=1, problems=["mdeq-small"])
        result = run_solvers(**kw)
        print(json.dumps(result, indent=1))
    return 0
