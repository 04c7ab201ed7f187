"""scripts/cpu_paths.py: the code-path check finds verdicts and result classes that change, and passes otherwise."""
import importlib.util
import json
import os
import subprocess
import sys

import torch

from .cpu_paths import outcome_class

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "cpu_paths.py")


def _script():
    spec = importlib.util.spec_from_file_location("cpu_paths_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path, records):
    with open(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def test_a_class_change_and_a_verdict_change_are_reported(tmp_path):
    mod = _script()
    call = dict(kind="call", test="t::a", index=0, solver="torchdeq:broyden")
    base, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write(base, [dict(call, finite=False, converged=[False]), dict(kind="verdict", test="t::a", when="call",
                                                                   outcome="failed")])
    _write(other, [dict(call, finite=True, converged=[True]), dict(kind="verdict", test="t::a", when="call",
                                                                  outcome="passed")])
    a, b = mod.load(str(base)), mod.load(str(other))
    changed = mod.compare(a, b)
    assert len(changed) == 2 and any("torchdeq:broyden" in c and "false" in c for c in changed)
    assert mod.failures(a) == ["t::a (call)"] and mod.failures(b) == []
    assert mod.compare(a, a) == []


def test_outcome_class_of_tensor_and_list_states():
    info = {"abs_lowest": torch.tensor([1e-7, 1e-3]), "rel_lowest": torch.tensor([1e-9, 1e-9])}
    z64 = torch.zeros(2, 3, dtype=torch.float64)
    assert outcome_class(z64, info, "abs", 1e-5) == {"finite": True, "converged": [True, False]}
    assert outcome_class([z64, torch.tensor([float("inf"), 0.0], dtype=torch.float64)], info, "rel", 1e-5) == \
        {"finite": False, "converged": [True, True]}
    # a tol below the dtype's rounding floor asks for noise: no converged class
    assert outcome_class(z64, info, "abs", 1e-30)["converged"] is None
    assert outcome_class(torch.zeros(2, 3), info, "abs", 1e-5)["converged"] is None   # float32: floor 1.2e-4


def test_the_check_runs_and_passes_on_the_floor_tests(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--paths", "native,mkl-compatible",
                          "tests/solvers/test_torchdeq_contract.py::test_broyden_breakdown_at_the_floor",
                          "tests/solvers/test_torchdeq_contract.py::test_the_floor_rule_keeps_the_comparisons"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tests=2 solver calls=3" in out.stdout and "ok: 2 code paths" in out.stdout


def test_unknown_path_is_a_usage_error():
    out = subprocess.run([sys.executable, SCRIPT, "--paths", "native,bogus"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "bogus" in out.stderr
