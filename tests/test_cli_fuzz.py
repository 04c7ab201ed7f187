"""Every flag of every lmdeq command line, fed empty, huge, negative, non-finite, unicode and wrong-type values:
each either parses to a value of the flag's type or is an argparse error (exit status 2, one line naming the
flag), never a traceback and never "taken as not given" (issue 28 item 4)."""
import argparse
import contextlib
import io

import pytest

# Flags whose empty value means something documented: no file-name suffix, no certificate-cost variants.
EMPTY_OK = {"--tag", "--variants"}
VALUES = ["", " ", "-1", "0", str(2 ** 70), "nan", "inf", "1e309", "ünïcødé", "x", "a\x00b", "../x", "[1,"]


def _parsers():
    from lmdeq.app.bench import kernels, tta_cli
    from lmdeq.app.cli import build_parser

    out = {}
    top = build_parser()
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[f"lmdeq {name}"] = sub
                for a in sub._actions:
                    if isinstance(a, argparse._SubParsersAction):
                        out.update({f"lmdeq {name} {n}": s for n, s in a.choices.items()})
    out["benchmarks/kernels.py"] = kernels.build_parser()
    out["lmdeq bench tta (script)"] = tta_cli.build_parser()
    return out


def _value_flags(parser):
    for a in parser._actions:
        if a.option_strings and a.nargs != 0 and not isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            yield a


def _minimal(parser):
    """Arguments the parser requires, with valid values."""
    argv = []
    for a in parser._actions:
        if a.required and a.option_strings:
            argv += [a.option_strings[0], "x"]
        elif not a.option_strings and a.nargs is None and a.dest not in ("command", "subcommand"):
            argv.append("x")
    return argv


CASES = [(name, flag.option_strings[0]) for name, p in _parsers().items() for flag in _value_flags(p)]


@pytest.mark.parametrize("name,flag", CASES, ids=[f"{n}:{f}" for n, f in CASES])
def test_every_flag_refuses_bad_values_in_one_line(name, flag):
    parser = _parsers()[name]
    action = next(a for a in _value_flags(parser) if flag in a.option_strings)
    for value in VALUES:
        err = io.StringIO()
        argv = [a for a in _minimal(parser) if a] + [f"{flag}={value}"]
        with contextlib.redirect_stderr(err):
            try:
                ns = parser.parse_args(argv)
            except SystemExit as exc:
                assert exc.code == 2, (flag, value, exc.code)
                lines = [line for line in err.getvalue().splitlines()
                         if line.strip() and not line.startswith(("usage", " "))]
                assert len(lines) == 1 and flag.lstrip("-") in lines[0], (flag, value, err.getvalue())
                assert "Traceback" not in err.getvalue()
                continue
        got = getattr(ns, action.dest)
        if isinstance(got, list):
            got = got[-1] if got else None
        # Accepted: the value is not an empty or NUL-carrying string, nor a non-finite or huge number.
        assert got not in ("", " ") or flag in EMPTY_OK, (flag, repr(value))
        assert not (isinstance(got, str) and "\x00" in got), flag
        if isinstance(got, float):
            assert got == got and abs(got) != float("inf"), (flag, value)
        if isinstance(got, int) and not isinstance(got, bool):
            assert abs(got) < 2 ** 63, (flag, value)


@pytest.mark.parametrize("value", ["", "maybe", "2", "ünï", " 1x"])
def test_bad_lmdeq_switches_are_one_line_errors(value, monkeypatch):
    """LMDEQ_TUNE_ALLOCATOR / LMDEQ_CUDA_GRAPHS take 0 or 1: anything else is a ConfigError naming the variable,
    and a command line prints it as one line with exit status 2."""
    import subprocess
    import sys

    from lmdeq import checks, cuda_graphs
    from lmdeq.errors import ConfigError

    for name in ("LMDEQ_TUNE_ALLOCATOR", "LMDEQ_CUDA_GRAPHS"):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=name):
            checks.env_flag(name, True)
    with pytest.raises(ConfigError, match="LMDEQ_CUDA_GRAPHS"):
        cuda_graphs.enabled_by_env()
    env = {"LMDEQ_TUNE_ALLOCATOR": value, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "lmdeq.app.cli", "info"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "LMDEQ_TUNE_ALLOCATOR must be 0 or 1" in out.stderr and "Traceback" not in out.stderr


def test_a_forced_backend_that_cannot_run_is_a_documented_error(monkeypatch):
    import torch

    from lmdeq.errors import BackendError, LmdeqError
    from lmdeq.ops import backends

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    monkeypatch.setenv("LMDEQ_BACKEND", "cuda")
    with pytest.raises(BackendError, match="LMDEQ_BACKEND=cuda cannot run on cpu tensors") as exc:
        backends.choose(torch.device("cpu"))
    assert isinstance(exc.value, LmdeqError) and isinstance(exc.value, RuntimeError)
