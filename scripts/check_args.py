"""Parse a command line exactly as the command would, then stop before it does any work.

scripts/gpu_check.sh --smoke uses this for the commands that only a GPU runs in reasonable time, so that a
misspelt or removed flag fails on the CPU machine instead of in the GPU window:

    python scripts/check_args.py -m lmdeq.app.cli bench --steps 5 --bf16 ...
    python scripts/check_args.py benchmarks/kernels.py --quick --compile-for large:128 ...
    python scripts/check_args.py --queue FILE    # many, in one process (lines: STEP<tab>shell-quoted args)

The command is imported and started as ``__main__`` (so its imports are checked too); the first
``argparse`` parse that succeeds ends it with status 0, and a bad argument ends it with argparse's
message and status 2, as the real run would. A queued ``-m pytest ...`` line (a test selection with
``--collect-only``) runs pytest in-process and must exit 0 (5, nothing selected, is a failure).
With ``--queue``, one line per command is printed: STEP<tab>ok|FAILED<tab>detail.
"""
from __future__ import annotations

import argparse
import runpy
import sys


class _Parsed(Exception):
    pass


def check(argv: list) -> int:
    """0 if ``argv`` (``-m MODULE ARGS`` or ``SCRIPT ARGS``) parses; argparse's status otherwise."""
    if not argv or argv[0] == "-m" and len(argv) < 2:
        print("usage: check_args.py (-m MODULE | SCRIPT) [ARGS...] | --queue FILE", file=sys.stderr)
        return 2
    if argv[:2] == ["-m", "pytest"]:
        import pytest

        class Count:
            def pytest_collection_finish(self, session):
                print(f"selected {len(session.items)} tests: {' '.join(argv[2:])}")

        return int(pytest.main(argv[2:], plugins=[Count()]))
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)  # exits 2 with argparse's message on a bad argument
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop
    saved = sys.argv
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except _Parsed:
        print(f"arguments accepted: {' '.join(argv)}")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        argparse.ArgumentParser.parse_args = parse
        sys.argv = saved
    print(f"check_args: {' '.join(argv)} finished without parsing arguments", file=sys.stderr)
    return 1


def check_queue(path: str) -> int:
    import shlex

    failed = 0
    with open(path) as fh:
        lines = [line.rstrip("\n").split("\t", 1) for line in fh if line.strip()]
    for step, command in lines:
        rc = check(shlex.split(command))
        failed |= rc != 0
        print(f"{step}\t{'ok' if rc == 0 else 'FAILED'}\texit {rc}: {command}", flush=True)
    return int(failed)


def main(argv: list) -> int:
    if argv[:1] == ["--queue"] and len(argv) == 2:
        return check_queue(argv[1])
    return check(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
