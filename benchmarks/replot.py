"""Redraw benchmark figures from their committed result files (lmdeq/app/bench/replot.py); nothing is measured.

    python benchmarks/replot.py benchmarks/results/{speedup,kernels,time_to_accuracy}-*.json \
        --out benchmarks/results --force                                                     # the committed figures
    python benchmarks/replot.py benchmarks/results/speedup-cpu-intel.json                    # into a new run folder
"""
import sys

from lmdeq.app.bench.replot import main

if __name__ == "__main__":
    sys.exit(main())
