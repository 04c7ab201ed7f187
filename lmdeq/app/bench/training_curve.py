"""The validation curve of an ``lmdeq train`` run: a PNG (validation accuracy vs training seconds, log x, and vs
epochs, integer ticks) and a Markdown table of the epochs, for the README. The run is read from its
metrics.jsonl, or from the log that ``lmdeq train`` printed (its epoch lines and summary: the same numbers, at the
log's precision), so that a committed log redraws its figure. Entry point: benchmarks/plot_training_curve.py:

    python benchmarks/plot_training_curve.py runs/c-small-full/metrics.jsonl --label "(c) lmdeq fast path" \
        --out benchmarks/results/train-cifar10-small-lipschitz

``--out STEM`` (.png and .md are added; default: ``curve`` in a new run folder outside the checkout,
:mod:`lmdeq.app.bench.outputs`); an existing file is refused unless ``--force``; ``--png-only`` redraws the figure
and leaves the table alone (a log's rounded losses would change a table made from metrics.jsonl).
"""
import argparse
import json
import re
import sys
from typing import Dict, List

from ...errors import ConfigError
from ..argtypes import output_file, path, text
from ..command import run_command
from .outputs import add_out_arguments, result_file
from .report import markdown_table
from .tta_report import plot_curves

__all__ = ["main", "read_records"]

_EPOCH = re.compile(r"^epoch (\d+)/\d+: train loss (\S+) acc \S+ \(([\d.]+)s\) val loss \S+ acc ([\d.]+) "
                    r"\([\d.]+s\) f_nstep (\S+) b_nstep (\S+)")
_SUMMARY = re.compile(r"^summary: \d+ epochs, (\d+) steps in")


def _number(text: str):
    return None if text in ("-", "n/a", "nan") else float(text)


def read_records(file: str) -> List[Dict]:
    """The epoch records of a run (epoch, step, train_time_s, train_loss, val_acc, f_nstep, b_nstep): the lines of
    a metrics.jsonl, or the epoch lines of an ``lmdeq train`` log (the step of the last one from its summary
    line). ConfigError naming ``file`` when it holds no epoch with a validation accuracy."""
    with open(file) as fh:
        lines = [line.strip() for line in fh if line.strip()]
    if lines and lines[0].startswith("{"):
        try:
            records = [json.loads(line) for line in lines]
        except ValueError as err:
            raise ConfigError(f"{file}: not a metrics.jsonl ({err})") from None
    else:
        records, steps = [], None
        for line in lines:
            m, s = _EPOCH.match(line), _SUMMARY.match(line)
            if m:
                records.append({"epoch": int(m[1]), "train_loss": float(m[2]), "train_time_s": float(m[3]),
                                "val_acc": float(m[4]), "f_nstep": _number(m[5]), "b_nstep": _number(m[6])})
            elif s:
                steps = int(s[1])
        if records:
            records[-1]["step"] = steps
    if not records or any("val_acc" not in r for r in records):
        raise ConfigError(f"{file}: every epoch record needs val_acc (a run with validation images; a metrics.jsonl "
                          "or the log of lmdeq train)")
    return records


def _bound(value) -> str:
    """A certified bound for the table ('-' where the record has none: a log, or the original MDEQ's inf)."""
    return "-" if value is None or value == float("inf") else f"{value:.4f}"


def draw(args) -> int:
    """Read the run, check where the files go, write the PNG (and the table unless --png-only)."""
    records = read_records(args.metrics)
    exts = [".png"] + ([] if args.png_only else [".md"])
    stem = result_file(args.out, "train-curve", "curve", args.force, exts)
    clock, points = 0.0, []
    for r in records:
        clock += r["train_time_s"]
        points.append({"epoch": r["epoch"], "train_s": clock, "val_acc": r["val_acc"]})
    steps = records[-1].get("step")
    plot_curves(f"{stem}.png", [{"label": args.label, "points": points}], [],
                f"{args.label}: validation accuracy" + (f", {steps} steps" if steps else ""))
    written = [f"{stem}.png"]
    if not args.png_only:
        rows = [{"epoch": r["epoch"], "train": f"{p['train_s'] / 60:.1f} min", "loss": f"{r['train_loss']:.3f}",
                 "acc": f"{r['val_acc']:.4f}", "f": r.get("f_nstep"), "b": r.get("b_nstep"),
                 "L": _bound(r.get("lipschitz_bound")), "L_eval": _bound(r.get("lipschitz_bound_eval")),
                 "V_eval": _bound(r.get("lipschitz_bound_eval_verified"))}
                for r, p in zip(records, points)]
        keys = ["epoch", "train", "loss", "acc", "f", "b", "L", "L_eval"]
        heads = ["epoch", "training time", "train loss", "val acc", "f-evals / step", "b-evals / step",
                 "certified L (training)", "certified L (inference)"]
        if any("lipschitz_bound_eval_verified" in r for r in records):   # runs since the verified bound exists
            keys, heads = keys + ["V_eval"], heads + ["verified L (inference)"]
        table = markdown_table(rows, keys, heads)
        with open(f"{stem}.md", "w") as fh:
            fh.write(table + "\n")
        print(table)
        written.append(f"{stem}.md")
    print("\nwrote " + ", ".join(written))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("metrics", type=path, help="metrics.jsonl of an lmdeq train run, or the log it printed")
    p.add_argument("--label", type=text("a label"), default="lmdeq train", help="the curve's name")
    add_out_arguments(p, "train-curve", out_type=output_file,
                      what="output path without extension (.png and .md are added)")
    p.add_argument("--png-only", action="store_true", help="write the figure only, not the table")
    args = p.parse_args(argv)
    args.handler = draw
    return run_command(args, "plot_training_curve")


if __name__ == "__main__":
    sys.exit(main())
