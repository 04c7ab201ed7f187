#!/usr/bin/env python3
"""Rerun the solver and contract tests under other CPU code paths; fail if a result changes class.

A test that compares with another library (TorchDEQ) or a stored number at the rounding floor passes or fails
by the CPU's rounding: the same clone failed on an AMD EPYC and passed on Intel Xeons. This check finds such
tests on any machine, by changing the rounding of the ops the tests use and comparing:

* every test's verdict (passed / failed / skipped), and
* the class of every solver call's result, lmdeq's and TorchDEQ's (finite state; converged samples), as
  recorded by tests/cpu_paths.py,

between the native run and runs under each code path below. A failed test, or any verdict or class that
changes, fails the check (exit 1) with a table of what changed.

Which knobs change rounding (measured on an AMD EPYC with torch 2.14.1's MKL 2024.2 and oneDNN 3.12 by
hashing the bits of float64/float32 matmul, conv2d, tanh, exp, sum and norm results):

    MKL_CBWR=COMPATIBLE        changes matmul/bmm (MKL's reproducible branch: the same bits on every CPU)
    MKL_CBWR=AVX2              MKL's AVX2 branch: the branch MKL runs on AMD, so on an Intel Xeon it
                               reproduces an AMD machine's matmul bits (no change on AMD itself)
    ONEDNN_MAX_CPU_ISA=AVX2    changes conv2d (oneDNN's AVX2 kernels instead of AVX-512)
    ATEN_CPU_CAPABILITY=avx2 / default
                               ATen's vectorised kernels (elementwise, reductions): no change of bits seen
                               for these ops, kept as cheap insurance for other builds

    python scripts/cpu_paths.py                  # the default test set under every code path
    python scripts/cpu_paths.py --paths native,mkl-compatible -- tests/solvers/test_torchdeq_contract.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PATHS: Dict[str, Dict[str, str]] = {
    "native": {},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "mkl-avx2": {"MKL_CBWR": "AVX2"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
}
# The tests that compare with TorchDEQ, with independent re-implementations or with float64 references at
# tight tolerances (the audit in tests/TOLERANCES.md).
DEFAULT_TESTS = [
    "tests/solvers",
    "tests/integrations/test_torchdeq_compat.py",
    "tests/deq",
    "tests/released",
    "tests/models/test_frozen_parameters.py",
    "tests/models/test_authors_cap.py",
    "tests/models/test_state_conv.py",
    "tests/models/test_forward.py",
    "tests/ops/test_shared_facts.py",
]
_KNOBS = sorted({k for env in PATHS.values() for k in env})


def run_path(name: str, tests: List[str], workdir: str, python: str) -> Tuple[int, str, float]:
    """Run pytest on ``tests`` under code path ``name``; return (exit status, outcome file, seconds)."""
    out = os.path.join(workdir, f"{name}.jsonl")
    env = {k: v for k, v in os.environ.items() if k not in _KNOBS}
    env.update(PATHS[name])
    env["LMDEQ_TEST_OUTCOMES"] = out
    start = time.monotonic()
    proc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode not in (0, 1):   # 1: tests failed (compared below); anything else: pytest itself failed
        sys.stdout.write(proc.stdout[-4000:])
    return proc.returncode, out, time.monotonic() - start


def load(path: str) -> Dict[Tuple[str, ...], str]:
    """{key: class} of an outcome file: (verdict, test, phase) -> outcome; (call, test, index, solver) -> class."""
    classes = {}
    if not os.path.exists(path):
        return classes
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if r["kind"] == "verdict":
                classes[("verdict", r["test"], r["when"])] = r["outcome"]
            else:
                classes[("call", r["test"], str(r["index"]), r["solver"])] = json.dumps(
                    {"finite": r["finite"], "converged": r["converged"]}, sort_keys=True)
    return classes


def compare(base: Dict, other: Dict) -> List[str]:
    """Lines describing every key whose class differs (or exists in only one run)."""
    lines = []
    for key in sorted(set(base) | set(other)):
        a, b = base.get(key, "(absent)"), other.get(key, "(absent)")
        if a != b:
            lines.append(f"{' '.join(key[:1] + key[2:])} {key[1]}: {a} -> {b}")
    return lines


def failures(classes: Dict) -> List[str]:
    return sorted(f"{k[1]} ({k[2]})" for k, v in classes.items() if k[0] == "verdict" and v == "failed")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {','.join(PATHS)}")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("tests", nargs="*", default=DEFAULT_TESTS, help="pytest paths (default: the audited set)")
    args = p.parse_args(argv)
    names = [n for n in args.paths.split(",") if n]
    unknown = [n for n in names if n not in PATHS]
    if unknown or not names:
        p.error(f"--paths: unknown {unknown}; choose from {','.join(PATHS)}")
    if names[0] != "native":
        names.insert(0, "native")
    with tempfile.TemporaryDirectory(prefix="lmdeq-cpu-paths-") as work:
        results = {}
        for name in names:
            rc, out, seconds = run_path(name, args.tests, work, args.python)
            results[name] = load(out)
            n_tests = sum(1 for k in results[name] if k[0] == "verdict" and k[2] == "call")
            n_calls = sum(1 for k in results[name] if k[0] == "call")
            print(f"cpu-paths: {name:15s} {' '.join(f'{k}={v}' for k, v in PATHS[name].items()) or '(as is)':28s} "
                  f"rc={rc} tests={n_tests} solver calls={n_calls} failed={len(failures(results[name]))} "
                  f"{seconds:.0f}s", flush=True)
            if rc not in (0, 1) or not results[name]:
                print(f"cpu-paths: pytest did not run under {name} (exit {rc})", file=sys.stderr)
                return 1
    bad = False
    for name in names:
        for line in failures(results[name]):
            print(f"cpu-paths: FAILED under {name}: {line}")
            bad = True
        if name != "native":
            changed = compare(results["native"], results[name])
            for line in changed[:40]:
                print(f"cpu-paths: CHANGED under {name}: {line}")
            if len(changed) > 40:
                print(f"cpu-paths: ... {len(changed) - 40} more changes under {name}")
            bad = bad or bool(changed)
    print("cpu-paths: " + ("FAIL: a test's verdict or a result's class depends on the CPU code path" if bad
                          else f"ok: {len(names)} code paths, same verdicts and result classes"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
