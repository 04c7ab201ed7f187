"""Solver benchmark (lmdeq vs TorchDEQ at equal f-evals); same as ``lmdeq bench solvers``.

    python benchmarks/solvers.py [--device cuda] [--batch 128] [--max-iter 18] [--quick]
"""
import sys

from lmdeq.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "solvers", *sys.argv[1:]]))
