"""Redraw benchmark figures from their result files, running nothing: the committed results in benchmarks/results/
keep figures drawn by the current code, and every number on them comes from the JSON (which is only read).
Entry point: benchmarks/replot.py:

    python benchmarks/replot.py benchmarks/results/speedup-cpu-intel.json ... [--out DIR] [--force]

Per result file, by its ``"benchmark"`` field:

* ``speedup`` -> ``<name>.png`` (:func:`lmdeq.app.bench.speedup.figure`: the timing chart, or for a ``--profile``
  run the phase breakdown);
* ``kernels`` (older files have no field: known by their copy bandwidth) -> ``<name>.png`` and ``<name>.md``
  (:func:`lmdeq.app.bench.kernels.plot`, :func:`lmdeq.app.bench.kernels.markdown`);
* ``time_to_accuracy`` -> ``<name>.png`` (:func:`lmdeq.app.bench.tta_report.figure`).

The files go to ``--out`` (default: a new run folder outside the checkout, :mod:`lmdeq.app.bench.outputs`;
``--out benchmarks/results --force`` redraws the committed figures in place). A file that is not such a result
is a one-line error, before anything is drawn. Training curves: benchmarks/plot_training_curve.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from ...errors import ConfigError
from ..argtypes import path
from ..command import run_command
from .outputs import add_out_arguments, result_dir

__all__ = ["main", "kind_of", "redraw"]


def kind_of(result: Dict) -> str:
    """Which benchmark wrote ``result``: its ``"benchmark"`` field, or ``kernels`` for the older kernel files."""
    kind = result.get("benchmark") or ("kernels" if "copy_bandwidth_GBps" in result else None)
    return kind if kind in _DRAW else ""


def _speedup(result: Dict, stem: Path) -> List[str]:
    from .speedup import figure

    return [figure(result, f"{stem}.png")]


def _kernels(result: Dict, stem: Path) -> List[str]:
    from .kernels import markdown, plot

    Path(f"{stem}.md").write_text(markdown(result))
    return [plot(result, f"{stem}.png"), f"{stem}.md"]


def _tta(result: Dict, stem: Path) -> List[str]:
    from .tta_report import figure

    return [figure(result, f"{stem}.png")]


# kind -> (what it writes, the function that draws it)
_DRAW: Dict[str, Tuple[Tuple[str, ...], Callable[[Dict, Path], List[str]]]] = {
    "speedup": ((".png",), _speedup), "kernels": ((".png", ".md"), _kernels), "time_to_accuracy": ((".png",), _tta)}


def _load(file: str) -> Tuple[str, Dict]:
    try:
        with open(file) as fh:
            result = json.load(fh)
    except OSError as err:
        raise ConfigError(f"{file}: cannot read it ({err.strerror or err})") from None
    except ValueError as err:
        raise ConfigError(f"{file}: not a JSON file ({err})") from None
    kind = kind_of(result) if isinstance(result, dict) else ""
    if not kind:
        raise ConfigError(f"{file}: not a benchmark result this redraws (one of {', '.join(_DRAW)})")
    return kind, result


def redraw(args) -> int:
    """Every file of ``args.results`` read and checked first, the output names checked, then each redrawn."""
    loaded = [(Path(f), *_load(f)) for f in args.results]
    names = [f.stem + ext for f, kind, _ in loaded for ext in _DRAW[kind][0]]
    out = result_dir(args.out, "replot", names, args.force)
    for file, kind, result in loaded:
        print(f"{file} ({kind}): wrote " + ", ".join(_DRAW[kind][1](result, out / file.stem)))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="replot.py", description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=path, nargs="+", help="result JSON files (speed-up, kernels, time to accuracy)")
    add_out_arguments(p, "replot", what="directory for the figures")
    args = p.parse_args(argv)
    args.handler = redraw
    return run_command(args, "replot")


if __name__ == "__main__":
    sys.exit(main())
