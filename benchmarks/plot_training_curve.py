"""The validation curve of an ``lmdeq train`` run (lmdeq/app/bench/training_curve.py): a PNG and a Markdown table.

    python benchmarks/plot_training_curve.py runs/c-small-full/metrics.jsonl --label "(c) lmdeq fast path" \
        --out benchmarks/results/train-cifar10-small-lipschitz
"""
import sys

from lmdeq.app.bench.training_curve import main

if __name__ == "__main__":
    sys.exit(main())
