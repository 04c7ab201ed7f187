"""The small decisions of scripts/gpu_check.sh that are easier to get right in Python than in bash; each
subcommand does one job and prints lines the script reads (or writes into its summary).

    python scripts/gpu_check_helpers.py check-build [--want-cuda] [--info lmdeq/_build_info.json]
        is the build usable: the record says the extension (with CUDA, if wanted) was built, and lmdeq._C imports
    python scripts/gpu_check_helpers.py verdict --results DIR --logs DIR GROUP=STATUS...
        which backends (cuda, triton) and whether CUDA graphs failed their GPU tests
    python scripts/gpu_check_helpers.py methods
        the speed-up benchmark's methods for the GPU run: original, original_jr (where this lmdeq has it),
        authors, lmdeq
    python scripts/gpu_check_helpers.py summary --results DIR
        the key results for summary.txt: training, speed-up tables, kernel targets (partial results included)
"""
from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Set

# ---- check-build ---------------------------------------------------------------------------------------------


def build_problems(info_path: str, want_cuda: bool, module: str = "lmdeq._C") -> List[str]:
    """Why the in-place build is not usable (empty when it is): setup.py's exit status says nothing about
    what it built, so read its record and import the module, as every later step will."""
    problems = []
    try:
        with open(info_path) as fh:
            info = json.load(fh)
    except (OSError, ValueError) as exc:
        return [f"no readable build record {info_path} ({exc})"]
    if not info.get("extension"):
        problems.append(f"the build record says no extension was built ({info.get('reason')})")
    elif want_cuda and not info.get("with_cuda"):
        problems.append(f"the build record says the CUDA kernels were not built ({info.get('cuda_reason')})")
    try:
        importlib.import_module(module)
    except Exception as exc:  # an ImportError, or whatever a broken extension raises on load
        problems.append(f"import {module} fails: {type(exc).__name__}: {exc}")
    return problems


def cmd_check_build(args) -> int:
    problems = build_problems(args.info, args.want_cuda, args.module)
    for p in problems:
        print(f"build not usable: {p}")
    if not problems:
        print(f"build usable: {args.module} imports" + (", with CUDA kernels" if args.want_cuda else ""))
    return int(bool(problems))


# ---- verdict -------------------------------------------------------------------------------------------------

BACKENDS = ("cuda", "triton")
# pytest -v: "path::test[ids] PASSED [ 10%]"; a test still running when the process died has no outcome word
# after its id (the line ends there, or goes on with the crash's own output).
_RESULT_LINE = re.compile(r"^(\S+::\S+)(?:\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b)?")


def failed_tests(xml_path: str, log_path: str) -> List[str]:
    """The ids of the tests that failed or errored (JUnit XML), or, when the process died before writing it
    (a crash, an illegal memory access, a timeout), the failed ones and the one that was running (pytest -v log)."""
    if os.path.exists(xml_path):
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError:
            root = None
        if root is not None:
            return [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
                    if case.find("failure") is not None or case.find("error") is not None]
    out, running = [], None
    if os.path.exists(log_path):
        with open(log_path, errors="replace") as fh:
            for line in fh:
                m = _RESULT_LINE.match(line.rstrip("\n"))
                if m is None:
                    continue
                running = m[1] if m[2] is None else None
                if m[2] in ("FAILED", "ERROR"):
                    out.append(m[1])
    return out + ([running] if running else [])


def backend_of(test_id: str) -> Optional[str]:
    """The backend a test ran on, from its parameter ids ('...[cuda-float32]' -> 'cuda'), or None."""
    params = test_id.rsplit("[", 1)[1].rstrip("]") if "[" in test_id else ""
    hits = [b for b in BACKENDS if b in re.split(r"[-\[\],]", params)]
    return hits[0] if len(hits) == 1 else None


def verdict(groups: Dict[str, str], results: str, logs: str) -> Dict[str, object]:
    """From the GPU test groups' statuses and files: the backends that failed (a failure that names none is
    put on the group's own backend, triton for tests-triton, else cuda: the hand-written CUDA kernels have
    never run, Triton's compile for sm_90 is checked in CI) and whether the CUDA-graph tests failed; with one
    reason line per finding. tests-triton, when it did not finish (no JUnit XML), is left out: the later
    groups ran its tests again."""
    failed: Set[str] = set()
    graphs = False
    reasons = []
    for group, status in groups.items():
        if status.startswith(("ok", "skipped", "queued")):
            continue
        xml = os.path.join(results, f"{group}.xml")
        if group == "tests-triton" and not os.path.exists(xml):
            reasons.append(f"{group} {status}: did not finish; its tests ran again in the later groups")
            continue
        tests = failed_tests(xml, os.path.join(logs, f"{group}-pytest.log"))
        if group == "tests-graphs":
            graphs = True
            reasons.append(f"{group} {status}: {', '.join(tests) or 'no test named'} -> LMDEQ_CUDA_GRAPHS=0")
            continue
        named = {backend_of(t) for t in tests} - {None}
        own = "triton" if group == "tests-triton" else "cuda"
        blamed = named or {own}
        failed |= blamed
        reasons.append(f"{group} {status}: {', '.join(tests) or 'no test named'} -> {'/'.join(sorted(blamed))}"
                       + ("" if named else f" (no backend named: {own} suspected)"))
    return {"failed_backends": sorted(failed), "graphs_failed": graphs, "reasons": reasons}


def cmd_verdict(args) -> int:
    groups = dict(g.split("=", 1) for g in args.groups)
    v = verdict(groups, args.results, args.logs)
    for line in v["reasons"]:
        print(f"# {line}")
    print(f"failed_backends={' '.join(v['failed_backends'])}")
    print(f"graphs_failed={int(v['graphs_failed'])}")
    return 0


# ---- methods -------------------------------------------------------------------------------------------------

WANTED_METHODS = ("original", "original_jr", "authors", "lmdeq")


def bench_methods() -> List[str]:
    """The wanted methods that this lmdeq's speed-up benchmark knows, in its order (original_jr, MDEQ with
    Jacobian regularization, only once lmdeq.app.bench.speedup.METHODS has it)."""
    from lmdeq.app.bench.speedup import METHODS

    return [m for m in METHODS if m in WANTED_METHODS]


def cmd_methods(args) -> int:
    methods = bench_methods()
    missing = [m for m in WANTED_METHODS if m not in methods]
    print(",".join(methods))
    if missing:
        print(f"(not in lmdeq.app.bench.speedup.METHODS: {', '.join(missing)})", file=sys.stderr)
    return 0


# ---- summary -------------------------------------------------------------------------------------------------


def _load(path: str) -> Optional[dict]:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def training_lines(results: str) -> List[str]:
    """Per method of each time-to-accuracy result: steps, training seconds and the last validation accuracy
    (the result is rewritten after every round, so a training stopped at its cap still shows), then the tables
    of a finished one."""
    lines = []
    for path in sorted(glob.glob(os.path.join(results, "time_to_accuracy-*.json"))):
        result = _load(path)
        if result is None:
            continue
        s = result.get("settings", {})
        done = "table" in result
        lines.append(f"training ({os.path.basename(path)}, {'finished' if done else 'cut short: rounds so far'}): "
                     f"{s.get('preset')}, batch {s.get('batch_size')}, {s.get('train_images')} training / "
                     f"{s.get('val_images')} validation images")
        for m in result.get("methods", []):
            points = m.get("points") or []
            if not points:
                lines.append(f"  {m.get('label')}: no evaluation point")
                continue
            p = points[-1]
            lines.append(f"  {m.get('label')}: {p['step']} steps ({p['epoch']:.2f} epochs), {p['train_s']:.1f} s of "
                         f"training, val acc {p['val_acc']:.4f} (best {max(q['val_acc'] for q in points):.4f})")
        if done:
            lines.append(result["table"])
    return lines


def speedup_lines(results: str) -> List[str]:
    lines = []
    for path in sorted(glob.glob(os.path.join(results, "speedup-*.json"))):
        result = _load(path)
        if result is not None and result.get("table"):
            lines += [f"--- {os.path.basename(path)}", result["table"]]
    return lines


def kernel_lines(results: str) -> List[str]:
    lines = []
    for path in sorted(glob.glob(os.path.join(results, "**", "kernels-*.json"), recursive=True)):
        result = _load(path)
        if result is None:
            continue
        cases = sorted({f"{r['size']}:{r['batch']}" for r in result.get("rows", [])})
        state = "complete" if result.get("complete") else f"cut short: {len(result.get('rows', []))} rows"
        skipped = result.get("skipped_backends") or []
        lines.append(f"kernels ({os.path.relpath(path, results)}, {state}; cases {', '.join(cases) or 'none'}"
                     + (f"; left out: {', '.join(skipped)}" if skipped else "") + "), targets:")
        lines += [f"  {t}" for t in result.get("targets", [])] or ["  (none measured)"]
    return lines


def cmd_summary(args) -> int:
    for line in training_lines(args.results) + speedup_lines(args.results) + kernel_lines(args.results):
        print(line)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-build")
    p.add_argument("--want-cuda", action="store_true")
    p.add_argument("--info", default="lmdeq/_build_info.json")
    p.add_argument("--module", default="lmdeq._C")
    p.set_defaults(fn=cmd_check_build)
    p = sub.add_parser("verdict")
    p.add_argument("--results", required=True)
    p.add_argument("--logs", required=True)
    p.add_argument("groups", nargs="+", metavar="GROUP=STATUS")
    p.set_defaults(fn=cmd_verdict)
    sub.add_parser("methods").set_defaults(fn=cmd_methods)
    p = sub.add_parser("summary")
    p.add_argument("--results", required=True)
    p.set_defaults(fn=cmd_summary)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
