"""The GPU check's training step: the time-to-accuracy benchmark (``lmdeq bench tta``, the same flags), with
every method's weights and curve saved after every round (``--save-runs DIR``: DIR/<method>/last.pt and
metrics.jsonl) instead of only at the very end, after the report and the plot. The speed-up step runs on these
checkpoints, so a training stopped at its time cap leaves the weights of its last whole round instead of none.

    python scripts/gpu_train.py --data gpu_carry/cifar10-subset.tar.gz --save-runs DIR [time_to_accuracy.py flags]

(The benchmark's own --save-runs saves after the plot; this wraps its round loop rather than changing it.)
"""
from __future__ import annotations

import os
import sys

from lmdeq.app.bench import tta_cli, tta_run


def saving_every_round(save_runs: str):
    """``tta_run.run_interleaved``, saving each run (its checkpoint and curve) after every round, right after
    the benchmark's own end-of-round work (which only rewrites its JSON: milliseconds)."""
    inner = tta_run.run_interleaved

    def run_interleaved(runs, evals_per_epoch, budget_s=None, on_point=None, on_round=None):
        def then_save(done, total):
            if on_round is not None:
                on_round(done, total)
            for r in runs:
                tta_cli._save_run(os.path.join(save_runs, r.spec.name), r, r.cfg)
            print(f"round {done}: saved {', '.join(r.spec.name for r in runs)} under {save_runs}", file=sys.stderr,
                  flush=True)

        return inner(runs, evals_per_epoch, budget_s, on_point, then_save)

    return run_interleaved


def main(argv=None) -> int:
    from lmdeq.app.allocator import configure_process

    configure_process()   # as the benchmark's own entry point: before the first large tensor
    parser = tta_cli.build_parser()
    parser.prog = "gpu_train.py"
    args = parser.parse_args(argv)
    if not args.save_runs:
        parser.error("--save-runs DIR is required: the checkpoints are what this step is for")
    tta_run.run_interleaved = saving_every_round(args.save_runs)   # tta_cli.run imports it when it runs
    return tta_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
