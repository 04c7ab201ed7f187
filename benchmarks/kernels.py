"""Kernel benchmark: every op's fused backends against the eager composite (lmdeq/app/bench/kernels.py).

    python benchmarks/kernels.py [--device cpu|cuda] [--quick] [--rounds N] [--compile-for all|none|large:128,...]
                                 [--out DIR] [--force]

Results (JSON, PNG, Markdown table) go to a new run folder outside the checkout ($LMDEQ_RUNS/kernels-<timestamp>/,
LMDEQ_RUNS unset: ~/.cache/lmdeq/bench) unless --out names a directory (benchmarks/results to update the
committed ones; an existing result file is refused unless --force).
"""
import sys

from lmdeq.app.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main())
