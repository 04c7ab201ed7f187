"""A DEQ-zoo-style TorchDEQ training script (examples/torchdeq_inr.py, TorchDEQ's API only, solver
skipped with solver_kwargs={'f_max_iter': 0} after its first step) runs unchanged on lmdeq's solvers:
as a process started with ``python -m lmdeq.integrations.torchdeq``, and in-process after
``register(replace=True)``, training as it does on TorchDEQ's solvers."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchdeq.solver
from lmdeq.integrations import torchdeq as interop

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "torchdeq_inr.py"
TINY = ["--steps", "5", "--size", "8", "--channels", "12", "--resolve_every", "3", "--log_every", "1"]
TORCHDEQ_KEYS = ["abs_lowest", "abs_trace", "nstep", "rel_lowest", "rel_trace", "sradius"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _records(path):
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return lines[:-1], lines[-1]


def _check_loop(steps, final, unmeasured=1e8):
    assert [r["skip_solver"] for r in steps] == [False, True, True, False, True]
    for r in steps:
        assert set(TORCHDEQ_KEYS) <= set(r)   # the generic logger saw TorchDEQ's keys, all numbers
        if r["skip_solver"]:
            # f_max_iter=0: x0 back; TorchDEQ reports 1e8 as its residual (simple_fixed_point_iter: 0)
            assert r["forward_steps"] == 0.0 and r["rel_lowest"] == unmeasured
        else:
            assert r["forward_steps"] > 0 and r["rel_lowest"] < 1e-2
    assert steps[-1]["loss"] < steps[0]["loss"] and final["eval_nstep"] > 0


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def test_script_runs_unchanged_as_a_process(tmp_path):
    args = [*TINY, "--f_solver", "anderson", "--b_solver", "anderson", "--ift"]
    ours_log, theirs_log = tmp_path / "lmdeq.jsonl", tmp_path / "torchdeq.jsonl"
    proc = subprocess.run([sys.executable, "-m", "lmdeq.integrations.torchdeq", str(SCRIPT), *args,
                           "--log_json", str(ours_log)], env=_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "eval  psnr" in proc.stdout
    assert _main()([*args, "--log_json", str(theirs_log)]) == 0   # the same script on TorchDEQ's solvers
    runs = {"lmdeq": _records(ours_log), "torchdeq": _records(theirs_log)}
    for steps, final in runs.values():
        _check_loop(steps, final)
    # The same training, within the solvers' tolerance (f_tol 1e-3).
    for a, b in zip(runs["torchdeq"][0], runs["lmdeq"][0]):
        assert abs(a["loss"] - b["loss"]) <= 1e-2 * a["loss"]


def _main():
    return runpy.run_path(str(SCRIPT), run_name="torchdeq_inr")["main"]


def _counting(monkeypatch):
    calls = {}
    for name, fn in list(interop.TORCHDEQ_NAMES.items()):
        def counted(*a, _fn=fn, _name=name, **kw):
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(*a, **kw)
        monkeypatch.setitem(interop.TORCHDEQ_NAMES, name, counted)
    return calls


@pytest.mark.parametrize("solver_args,compare", [
    (["--f_solver", "fixed_point_iter", "--b_solver", "fixed_point_iter", "--ift"], "exact"),
    (["--f_solver", "simple_fixed_point_iter", "--f_max_iter", "12"], "exact"),
    (["--f_solver", "broyden", "--b_solver", "broyden", "--ift", "--core", "indexing"], "close"),
    # Two states at steps 20 and 40; the solves stop earlier. TorchDEQ's Anderson then returns one
    # state (the core drops the second gradient step), lmdeq's returns both: a different loss, by design.
    (["--f_solver", "anderson", "--core", "indexing", "--n_states", "2", "--grad", "2"], "states"),
])
def test_script_in_process_after_register(tmp_path, monkeypatch, solver_args, compare):
    main = _main()
    args = [*TINY, *solver_args]
    assert main([*args, "--log_json", str(tmp_path / "theirs.jsonl")]) == 0
    calls = _counting(monkeypatch)
    if compare == "exact":   # through the runner, as `python -m lmdeq.integrations.torchdeq SCRIPT ...` does
        monkeypatch.setattr(sys, "argv", list(sys.argv))
        monkeypatch.setattr(sys, "path", list(sys.path))
        assert interop.main([str(SCRIPT), *args, "--log_json", str(tmp_path / "ours.jsonl")]) == 0
        interop.unregister()
    else:
        with interop.registered(replace=True):
            assert main([*args, "--log_json", str(tmp_path / "ours.jsonl")]) == 0
    assert torchdeq.solver.get_solver("anderson") is torchdeq.solver.anderson_solver   # undone
    f_solver = solver_args[1]
    assert calls.get(f_solver, 0) >= 3                  # lmdeq's solvers did the work...
    (theirs, t_final), (ours, o_final) = _records(tmp_path / "theirs.jsonl"), _records(tmp_path / "ours.jsonl")
    unmeasured = 0.0 if f_solver == "simple_fixed_point_iter" else 1e8
    _check_loop(ours, o_final, unmeasured)
    _check_loop(theirs, t_final, unmeasured)
    for a, b in zip(theirs, ours):                      # ...and trained the same model
        if compare == "exact":
            assert abs(a["loss"] - b["loss"]) <= 1e-5 * a["loss"] and a["forward_steps"] == b["forward_steps"]
        elif compare == "close":
            assert abs(a["loss"] - b["loss"]) <= 1e-2 * a["loss"]
        else:   # (f_max_iter=0 leaves one index, 0, for both)
            assert a["states"] == 1 and b["states"] == (1 if a["skip_solver"] else 2)


def test_runner_errors_name_the_script(capsys):
    assert interop.main([]) == 2 and "usage" in capsys.readouterr().err
    assert interop.main(["no_such_script.py"]) == 2 and "'no_such_script.py' is not a file" in capsys.readouterr().err
    assert interop.main(["--help"]) == 0
