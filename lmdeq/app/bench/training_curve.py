"""The validation curve of an ``lmdeq train`` run (its metrics.jsonl): a PNG (validation accuracy vs training
seconds, log x, and vs epochs) and a Markdown table of the epochs, for the README. Entry point:
benchmarks/plot_training_curve.py:

    python benchmarks/plot_training_curve.py runs/c-small-full/metrics.jsonl --label "(c) lmdeq fast path" \
        --out benchmarks/results/train-cifar10-small-lipschitz
"""
import argparse
import json
import sys

from ..argtypes import output_file, path, text
from .report import markdown_table
from .tta_report import plot_curves

__all__ = ["main"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("metrics", type=path, help="metrics.jsonl of an lmdeq train run")
    p.add_argument("--label", type=text("a label"), default="lmdeq train", help="the curve's name")
    p.add_argument("--out", type=output_file, required=True, help="output path without extension (.png and .md are written)")
    args = p.parse_args(argv)
    with open(args.metrics) as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    if not records or any("val_acc" not in r for r in records):
        print(f"{args.metrics}: every epoch record needs val_acc (a run with validation images)", file=sys.stderr)
        return 2
    clock, points = 0.0, []
    for r in records:
        clock += r["train_time_s"]
        points.append({"epoch": r["epoch"], "train_s": clock, "val_acc": r["val_acc"]})
    plot_curves(args.out + ".png", [{"label": args.label, "points": points}], [],
                f"{args.label}: validation accuracy, {records[-1]['step']} steps")
    rows = [{"epoch": r["epoch"], "train": f"{p['train_s'] / 60:.1f} min", "loss": f"{r['train_loss']:.3f}",
             "acc": f"{r['val_acc']:.4f}", "f": r.get("f_nstep"), "b": r.get("b_nstep")} for r, p in zip(records, points)]
    table = markdown_table(rows, ["epoch", "train", "loss", "acc", "f", "b"],
                           ["epoch", "training time", "train loss", "val acc", "f-evals / step", "b-evals / step"])
    with open(args.out + ".md", "w") as fh:
        fh.write(table + "\n")
    print(table)
    print(f"\nwrote {args.out}.png, {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
