"""The fault table: try every bad input and fault of scripts/fault_cases.py (written by hand) and
scripts/fault_fuzz.py (generated: every input channel fuzzed) against ``lmdeq train``, ``lmdeq eval``,
``lmdeq bench``, the benchmark scripts and the library, and count what a user sees.

    python scripts/fault_table.py [--only SUBSTRING] [--workdir DIR] [--json PATH] [-v]

Each case runs the command line (or a library call) in a forked child (its own environment, stdout and
stderr captured; a kill at a fault point stays in the child) and is classified as one of:

* ``clear``: the expected one-line error (exit status != 0) or warning (exit 0) naming the argument or
  file (it contains the case's needle);
* ``handled``: the expected success (``--resume`` of a finished run, a killed run resumed to exactly the
  uninterrupted result: every tensor and number of last.pt and best.pt, and metrics.jsonl);
* ``traceback``: a Python traceback reached the user;
* ``silent``: exit 0 where an error or warning was due (a substitution, a misbehaviour without a word);
* ``other``: an unclear message, a leftover file, a wrong exit status;
* ``hang``: the case did not finish within its timeout (killed);
* ``data lost``: a run's files damaged, rewound, or not recovered exactly after a kill;
* ``security``: a hostile input had an effect (a file written outside the cache, a pickle payload that ran).

A generated case judges its own outcome with the same words (scripts/fault_fuzz.py says how for each category).
Prints one row per category and the totals; ``--json`` writes every case's outcome. The hand-written cases take
about a minute on 2 CPU cores (tiny models and data; the kill cases train a tiny MDEQ for 3 epochs, twice each),
the generated ones a few minutes more.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fault_fuzz  # noqa: E402
from fault_cases import Case, build, cases, error_line  # noqa: E402

OUTCOMES = ("clear", "handled", "traceback", "silent", "other", "data lost", "security", "hang")
HEADERS = ("category", "tried", "clear errors", "handled", "tracebacks", "silent", "other", "data lost",
           "security failures", "hangs")


def run_child(fn, env: dict, timeout: float = 600.0) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``fn()`` (returning the exit status) in a forked child; -N: killed by
    signal N; None: timed out. An exception reaching the top is printed with its traceback (status 1)."""
    out_fd, out_path = tempfile.mkstemp()
    err_fd, err_path = tempfile.mkstemp()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # not a caller's replacement (pytest's capture)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            os.environ.update(env)
            import torch

            torch.set_num_threads(1)  # the same arithmetic in every child (and fork-safe, as loader workers do)
            code = fn()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(out_fd)
    os.close(err_fd)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
            break
        time.sleep(0.02)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    texts = [Path(p).read_text(errors="replace") for p in (out_path, err_path)]
    for p in (out_path, err_path):
        os.unlink(p)
    return status, texts[0], texts[1]


def run_cli(argv: list, env: dict, timeout: float = 600.0) -> tuple[int, str, str]:
    """:func:`run_child` of ``lmdeq.app.cli.main(argv)``."""
    def cli():
        from lmdeq.app.cli import main

        return main(argv)
    return run_child(cli, env, timeout)


def run_call(call, w: Path, env: dict, timeout: float = 600.0) -> tuple[int, str, str]:
    """:func:`run_child` of a library call ``call(w)`` (its exit status: what it returns, else 0): a documented
    error is printed as the CLI does (status 2)."""
    def library():
        from lmdeq.errors import LmdeqError

        try:
            rc = call(w)
        except LmdeqError as err:
            print(f"lmdeq: error: {err}", file=sys.stderr)
            return 2
        return rc if isinstance(rc, int) else 0
    return run_child(library, env, timeout)


def classify(case: Case, rc, err: str, problem, out: str = "", w: Path | None = None) -> tuple[str, str]:
    """(outcome, detail) of one finished case (``out``: its stdout; ``w``: the work directory, for a judge)."""
    if rc is None:
        return "hang", "timed out (killed)"
    if "Traceback (most recent call last)" in err:
        return "traceback", error_line(err)
    if problem is not None:
        return problem
    if case.judge is not None:
        return case.judge(w, rc, out, err)
    last = error_line(err)
    if case.expect == "error":
        if rc == 0:
            return "silent", "exit 0"
        if case.needle in last and ": error:" in last:
            return "clear", last
        return "other", f"exit {rc}: {last}"
    if case.expect == "warn":
        if rc != 0:
            return "other", f"exit {rc}: {last}"
        warned = [ln for ln in err.splitlines() if ": warning:" in ln and case.needle in ln]
        return ("clear", warned[0]) if warned else ("silent", "no warning")
    return ("handled", "exit 0") if rc == 0 else ("other", f"exit {rc}: {last}")


def _format(argv: list, w: Path) -> list:
    return [a.replace("{w}", str(w)) for a in argv]


def run_kill_case(case: Case, w: Path, reference: Path) -> tuple[str, str]:
    """Kill the run at ``case.fault``, resume it (or start it again when nothing was committed), compare."""
    from lmdeq.app.train.rundir import compare_runs

    out = w / f"kill-{case.fault.replace(':', '-').replace('@', '-')}"
    argv = _format(case.argv, w) + ["--out", str(out)]
    rc, _, err = run_cli(argv, {**case.env, "LMDEQ_FAULT_AT": case.fault})
    if rc != -signal.SIGKILL:
        return "other", f"the fault point was not reached (exit {rc}): {error_line(err)}"
    resume = ["--resume"] if (out / "last.pt").exists() else []
    rc, _, err = run_cli(argv + resume, {k: v for k, v in case.env.items() if k != "LMDEQ_FAULT_AT"})
    if rc != 0:
        return classify(case, rc, err, None)
    problems = compare_runs(reference, out)
    return ("data lost", "; ".join(problems)) if problems else ("handled", "resumed to the uninterrupted result")


def _preload() -> None:
    """Import what the commands use once, here: every forked child then starts with it loaded."""
    import lmdeq.app.bench.kernels  # noqa: F401
    import lmdeq.app.bench.solvers  # noqa: F401
    import lmdeq.app.bench.speedup  # noqa: F401
    import lmdeq.app.bench.tta_cli  # noqa: F401
    import lmdeq.app.bench.tta_run  # noqa: F401
    import lmdeq.app.train.run  # noqa: F401
    from lmdeq.app.cli import build_parser

    build_parser()


def fixtures(w: Path):
    """``ensure(need)``: build the fixture ``need`` in the work directory ``w`` unless it was built already (by
    scripts/fault_fuzz.py for its own fixtures, else scripts/fault_cases.py)."""
    built: set = set()

    def ensure(need: str) -> None:
        if need not in built:
            if not fault_fuzz.build(w, need, lambda argv: run_cli(argv, {}), ensure):
                build(w, need, lambda argv: run_cli(argv, {})[::2])
            built.add(need)
    return ensure


def all_cases(w: Path, ensure) -> list[Case]:
    """The hand-written cases and the generated ones (whose checkpoint fields come from a tiny run built in ``w``)."""
    _preload()
    return cases() + fault_fuzz.cases(w, ensure)


def run_cases(selected: list[Case], w: Path, log=print, ensure=None) -> list[dict]:
    """Run ``selected`` in the work directory ``w`` (fixtures built as needed by ``ensure``, default
    :func:`fixtures`); one result dict per case."""
    os.environ.pop("LMDEQ_FAULT_AT", None)
    _preload()
    ensure = ensure or fixtures(w)
    reference = None
    results = []
    for case in selected:
        for need in case.needs:
            ensure(need)
        start = time.perf_counter()
        if case.fault is not None:
            if reference is None:
                reference = w / "kill-reference"
                rc, _, err = run_cli(_format(case.argv, w) + ["--out", str(reference)], {})
                if rc != 0:
                    raise RuntimeError(f"the reference run failed: {err[-2000:]}")
            outcome, detail = run_kill_case(case, w, reference)
        else:
            env = {k: v.replace("{w}", str(w)) for k, v in case.env.items()}
            rc, out, err = (run_call(case.call, w, env, case.timeout) if case.call is not None
                            else run_cli(_format(case.argv, w), env, case.timeout))
            problem = case.check(w) if case.check is not None else None
            outcome, detail = classify(case, rc, err, problem, out, w)
        results.append({"name": case.name, "category": case.category, "outcome": outcome, "detail": detail,
                        "seconds": round(time.perf_counter() - start, 2)})
        log(f"  {outcome:9s} {case.name}: {detail}")
    return results


def summary_rows(results: list[dict]) -> list[dict]:
    cats = list(dict.fromkeys(r["category"] for r in results))
    rows = []
    for cat in cats + ["total"]:
        picked = [r for r in results if cat in ("total", r["category"])]
        row = {"category": cat, "tried": len(picked)}
        row.update({o: sum(r["outcome"] == o for r in picked) for o in OUTCOMES})
        rows.append(row)
    return rows


def table(results: list[dict]) -> str:
    keys = ("category", "tried") + OUTCOMES
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(" --- " for _ in HEADERS) + "|"]
    for row in summary_rows(results):
        lines.append("| " + " | ".join(str(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="lmdeq's fault table (issue 13)")
    p.add_argument("--only", action="append", default=[], help="run the cases whose name contains this (repeatable)")
    p.add_argument("--workdir", help="work directory (default: a temporary one, deleted afterwards)")
    p.add_argument("--json", help="write every case's outcome to this file")
    p.add_argument("-v", "--verbose", action="store_true", help="print each case as it finishes")
    args = p.parse_args(argv)
    w = Path(args.workdir or tempfile.mkdtemp(prefix="lmdeq-faults-"))
    w.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        ensure = fixtures(w)
        selected = [c for c in all_cases(w, ensure) if not args.only or any(s in c.name for s in args.only)]
        results = run_cases(selected, w, log=print if args.verbose else (lambda s: None), ensure=ensure)
    finally:
        if not args.workdir:
            shutil.rmtree(w, ignore_errors=True)
    print(table(results))
    bad = [r for r in results if r["outcome"] not in ("clear", "handled")]
    for r in bad:
        print(f"- {r['outcome']}: {r['name']}: {r['detail']}")
    print(f"\n{len(results)} cases in {time.perf_counter() - start:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "summary": summary_rows(results)}, indent=1))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
