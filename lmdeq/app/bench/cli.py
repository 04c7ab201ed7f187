"""``lmdeq bench``: argument parsing, validation and dispatch to the benchmark suites.

``lmdeq bench`` (suite ``speedup``, the main job) on a GPU runs cifar10-large at batch 128; without a GPU,
or with ``--quick``, the CPU configuration: cifar10-small, batch 32, 3 timed steps per method.
``lmdeq bench solvers`` times lmdeq's solvers against TorchDEQ's. ``lmdeq bench tta`` is the
time-to-accuracy benchmark (lmdeq/app/bench/tta_cli.py).

Results go to a new run folder outside the checkout, ``$LMDEQ_RUNS/<suite>-<timestamp>/`` (LMDEQ_RUNS unset:
``~/.cache/lmdeq/bench``), unless ``--out DIR`` names another directory; a result file that exists there already
is refused unless ``--force`` (:mod:`lmdeq.app.bench.outputs`). The command prints where it writes.

Every argument is checked before a benchmark starts: counts must be positive (``--warmup``
non-negative), the device must exist, the preset and methods must be known, ``--weights`` must be
readable checkpoints whose weights are finite and fit the model their ``model_config`` builds, and
``--out`` must be a writable directory (or one to make, in an existing parent) without the run's result files;
a bad one is a one-line error naming it (exit status 2).
"""
from __future__ import annotations

import argparse
import json

from ..argtypes import file_tag, non_negative_int, path, positive_int, text
from ...errors import ConfigError
from .outputs import add_out_arguments, result_dir

SUITES = ("speedup", "solvers", "tta")


def add_arguments(parser):
    parser.add_argument("suite", nargs="?", default="speedup", choices=SUITES,
                        help="which benchmark (default: %(default)s)")
    parser.add_argument("--device", type=text("a device"), default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--batch", type=positive_int, default=None,
                        help="batch size (default: 128 on GPU, 32 on CPU / --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="the CPU configuration (speedup: cifar10-small, batch 32, 3 steps)")
    add_out_arguments(parser, "<suite>")
    sp = parser.add_argument_group("speedup")
    sp.add_argument("--preset", type=text("a preset name"), default=None, help="model preset (default: cifar10-large on GPU, cifar10-small on CPU)")
    sp.add_argument("--steps", type=positive_int, default=None, help="timed steps per method (default: 10 GPU, 3 CPU)")
    sp.add_argument("--warmup", type=non_negative_int, default=None,
                    help="untimed warm-up steps (default: 3 GPU, 2 CPU)")
    sp.add_argument("--weights", type=path, action="append", default=[], metavar="CHECKPOINT",
                    help="trained checkpoint from `lmdeq train` (repeat: one original, one Lipschitz)")
    sp.add_argument("--data", type=path, default=None, help="take the batch from this dataset (default: random images)")
    sp.add_argument("--methods", type=text("comma-separated methods"), default="original,original_jr,authors,lmdeq",
                    help="comma-separated subset of methods")
    sp.add_argument("--profile", action="store_true",
                    help="profile one more training step per method: where the time goes")
    sp.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                    help="cuDNN autotuning for every method (default: on, as the original MDEQ's configs)")
    sp.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="fast path: channels_last memory format (default: on; measured faster on CPU)")
    sp.add_argument("--bf16", action="store_true", help="fast path: bf16 autocast for f (GPU)")
    sp.add_argument("--check-every", type=positive_int, default=None, help="fast path: convergence read-back period")
    sp.add_argument("--solve-mode", choices=("apriori", "checked"), default=None,
                    help="fast path: exact a-priori counts, no syncs (default on GPU) or checked solves (CPU)")
    sp.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                    help="fast path: do not replay the solves as CUDA graphs")
    sp.add_argument("--tag", type=file_tag, default="", help="suffix for result file names")
    so = parser.add_argument_group("solvers")
    so.add_argument("--max-iter", type=positive_int, default=18, help="f-evaluations per solve (default: %(default)s)")
    so.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per case (median reported)")
    from .tta_cli import add_arguments as add_tta_arguments

    add_tta_arguments(parser.add_argument_group("tta (time to accuracy; also uses --data, --preset, --batch, "
                                                "--methods, --device, --out, --tag)"))


def check_weights(paths) -> None:
    """Each ``--weights`` file: a readable lmdeq checkpoint whose finite weights fit its model_config."""
    from ..train.checkpoint import load_checkpoint
    from ..train.model import check_solvable, load_weights, model_from_config

    for weights in paths:
        source = f"--weights {weights}"
        ckpt = load_checkpoint(weights)
        model = model_from_config(ckpt["model_config"], source)
        load_weights(model, ckpt["model_state"], source)
        check_solvable(model, source, ConfigError)


def check_data(spec: str, preset: str) -> None:
    """``--data`` must load (decoded once into the cache, which the benchmark then reuses) as images of the
    preset's input size."""
    from ...models import PRESETS
    from ...models.presets import input_shape
    from ..data.sources import load_source

    shape = input_shape(PRESETS[preset])
    images = load_source(spec).train.images
    if tuple(images.shape[1:]) != shape:
        raise ConfigError(f"--data {spec}: its images are {tuple(images.shape[1:])} (C, H, W); preset {preset} "
                          f"takes {shape}")


def run(args) -> int:
    if args.suite == "tta":
        from .tta_cli import run as run_tta

        return run_tta(args)
    from ..train.run import resolve_device

    device = resolve_device(args.device or "auto")
    gpu = device.type == "cuda" and not args.quick
    batch = args.batch or (128 if gpu else 32)
    if args.suite == "solvers":
        from .solvers import result_name, run as run_solvers

        out = result_dir(args.out, "solvers", [result_name(device)], args.force)
        kw = dict(device=device, batch=batch, max_iter=args.max_iter, repeats=args.repeats, out_dir=str(out))
        if args.quick:
            kw.update(batch=min(batch, 2), max_iter=min(args.max_iter, 4), repeats=1, problems=["mdeq-small"])
        result = run_solvers(**kw)
        print(json.dumps(result, indent=1))
        print(f"\nwrote {result['path']}")
        return 0
    from ...models import PRESETS
    from .speedup import METHODS, result_stem, run as run_speedup

    preset = args.preset or ("cifar10-large" if gpu else "cifar10-small")
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r} is not a preset; choose one of {sorted(PRESETS)}")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"--methods must be a comma-separated subset of {','.join(METHODS)}, got {args.methods!r}")
    check_weights(args.weights)
    if args.data:
        check_data(args.data, preset)
    stem = result_stem(device, args.tag)
    out = result_dir(args.out, "speedup", [stem + ".json", stem + ".png"], args.force)
    result = run_speedup(preset=preset, batch=batch,
                         device=device, steps=args.steps or (10 if gpu else 3),
                         warmup=args.warmup if args.warmup is not None else (3 if gpu else 2),
                         weights=args.weights, methods=methods, data=args.data,
                         channels_last=args.channels_last, bf16=args.bf16, check_every=args.check_every,
                         solve_mode=args.solve_mode, cuda_graphs=args.cuda_graphs,
                         cudnn_benchmark=args.cudnn_benchmark, profile=args.profile, out_dir=str(out), tag=args.tag)
    print(result["table"])
    if result.get("files"):
        print("\nwrote " + ", ".join(result["files"]))
    return 0
