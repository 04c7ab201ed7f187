"""Kernel benchmark: every op's fused backends against the eager composite (lmdeq/app/bench/kernels.py).

    python benchmarks/kernels.py [--device cpu|cuda] [--quick] [--rounds N] [--compile-for all|none|large:128,...]

Results go to benchmarks/results/ (next to this script) unless --out says otherwise.
"""
import sys
from pathlib import Path

from lmdeq.app.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main(results=Path(__file__).resolve().parent / "results"))
