"""Time to accuracy on CIFAR-10: (a) original MDEQ, (b) the authors' Lipschitz MDEQ as released and (c)
lmdeq's fast path (plus the certificate-cost variants), interleaved round by round, validation accuracy
against training seconds and steps. The same as ``lmdeq bench tta``; see lmdeq/app/bench/tta_cli.py.

    python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10-train-jpeg.tar.gz            # CPU protocol
    python benchmarks/time_to_accuracy.py --data ... --protocol gpu                                  # GPU protocol
"""
import sys

from lmdeq.app.bench.tta_cli import main

if __name__ == "__main__":
    sys.exit(main())
