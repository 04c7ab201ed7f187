"""Every flag of every lmdeq command line, fed empty, huge, negative, non-finite, unicode and wrong-type values:
each either parses to a value of the flag's type or is an argparse error (exit status 2, one line naming the
flag), never a traceback and never "taken as not given" (issue 28 item 4). The parsers, the values and the test of
an accepted value are the fault table's (scripts/fault_fuzz.py), which also runs each case through the command."""
import contextlib
import io

import pytest

from tests.bench.scripts import load_script

fuzz = load_script("scripts/fault_fuzz.py")
CASES = [(name, flag.option_strings[0]) for name, p in fuzz.parsers().items() for flag in fuzz.value_flags(p)]


@pytest.mark.parametrize("name,flag", CASES, ids=[f"{n}:{f}" for n, f in CASES])
def test_every_flag_refuses_bad_values_in_one_line(name, flag):
    parser = fuzz.parsers()[name]
    action = next(a for a in fuzz.value_flags(parser) if flag in a.option_strings)
    for _, value in fuzz.HOSTILE_VALUES:
        err = io.StringIO()
        argv = [a for a in fuzz.minimal(parser) if a] + [f"{flag}={value}"]
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
        # Accepted: the value is not an empty or NUL-carrying string, nor a non-finite or huge number.
        assert fuzz.nonsense(flag, getattr(ns, action.dest, None)) is None, (flag, repr(value))


def test_an_accepted_nonsense_value_is_seen():
    """The test of an accepted value fails on each kind of nonsense (and passes a documented empty value)."""
    for flag, got in [("--data", ""), ("--data", [" "]), ("--data", "a\x00b"), ("--lr", float("nan")),
                      ("--lr", float("-inf")), ("--lr", 2.0 ** 70), ("--seed", 2 ** 70), ("--tag", "a\x00")]:
        assert fuzz.nonsense(flag, got) is not None, (flag, got)
    for flag, got in [("--tag", ""), ("--variants", ""), ("--seed", 2 ** 63 - 1), ("--lr", 1e-3), ("--data", "../x"),
                      ("--set", [("dropout", 0.1)]), ("--limit", None)]:
        assert fuzz.nonsense(flag, got) is None, (flag, got)


@pytest.mark.parametrize("value", [v for _, v in fuzz.ENV_VALUES] + ["maybe", " 1x"],
                         ids=[label for label, _ in fuzz.ENV_VALUES] + ["maybe", "1x"])
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
