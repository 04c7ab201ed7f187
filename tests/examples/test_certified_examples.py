"""The certified DEQ examples (examples/certified_deq_classifier.py, examples/certified_deq_inr.py) run as
processes on tiny settings: each reports a certified bound L < 1, its a-priori counts and a measured
||J_f(z*)|| <= L, and writes its curve (JSON and PNG); bad input is one line of error."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NUMBER = r"([0-9.]+)"


def _write_image_folder(root):
    """tests/train/train_helpers.py's write_image_folder (loaded from its file: tests/train is no package)."""
    spec = importlib.util.spec_from_file_location("_train_helpers_for_examples",
                                                  ROOT / "tests" / "train" / "train_helpers.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    return helpers.write_image_folder(root, per_class=10)


def _run(script, args, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "LMDEQ_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def _check_report(stdout):
    """The start line's bound and counts, and the final line's L, counts and measured ||J_f||."""
    start = re.search(rf"certified bound L = lipschitz_bound\(f\) = {NUMBER} .*forward (\d+), adjoint (\d+)", stdout)
    assert start, stdout
    L0, fwd, adj = float(start.group(1)), int(start.group(2)), int(start.group(3))
    assert 0 < L0 < 1 and fwd >= 1 and adj >= 1
    final = re.search(rf"final: .*L {NUMBER} < 1, counts (\d+)/(\d+), measured \|\|J_f\(z\*\)\|\| {NUMBER} <= L: yes",
                      stdout)
    assert final, stdout
    L, jac = float(final.group(1)), float(final.group(4))
    assert 0 < jac <= L < 1
    return L


def _check_curve(out, rows_key):
    curve = json.loads((out / "curve.json").read_text())
    assert (out / "curve.png").stat().st_size > 0
    assert curve["bound_holds"] is True
    rows = curve[rows_key]
    assert len(rows) >= 2
    for r in rows:
        assert 0 < r["jacobian_norm"] <= r["L"] < 1
        assert r["forward_count"] >= 1 and r["adjoint_count"] >= 1
    return curve


def test_classifier_example(tmp_path):
    data = _write_image_folder(tmp_path / "folder")
    out = tmp_path / "cls"
    proc = _run("certified_deq_classifier.py", ["--data", str(data), "--epochs", "2", "--width", "8", "--batch", "16",
                                                "--jacobian-iters", "10", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    _check_report(proc.stdout)
    assert re.search(r"epoch 2  train loss [0-9.]+  train acc .*val acc", proc.stdout), proc.stdout
    curve = _check_curve(out, "epochs")
    assert [r["epoch"] for r in curve["epochs"]] == [0, 1, 2]
    assert curve["data"]["classes"] == ["c0", "c1", "c2", "c3"]


def test_classifier_budget_lowers_the_counts(tmp_path):
    data = _write_image_folder(tmp_path / "folder")
    proc = _run("certified_deq_classifier.py", ["--data", str(data), "--epochs", "1", "--width", "8", "--batch", "16",
                                                "--jacobian-iters", "10", "--forward-budget", "9"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    _check_report(proc.stdout)
    final = re.search(r"final: .*counts (\d+)/(\d+)", proc.stdout)
    assert int(final.group(1)) <= 9


def test_classifier_bad_data_is_one_line(tmp_path):
    proc = _run("certified_deq_classifier.py", ["--data", str(tmp_path / "missing.tar.gz")], tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "missing.tar.gz" in lines[0] and "Traceback" not in proc.stderr


def test_inr_example(tmp_path):
    out = tmp_path / "inr"
    proc = _run("certified_deq_inr.py", ["--steps", "6", "--size", "8", "--channels", "12", "--log-every", "3",
                                         "--jacobian-iters", "10", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    L = _check_report(proc.stdout)
    assert L <= 0.8   # the default cap: the bound of f
    curve = _check_curve(out, "log")
    assert [r["step"] for r in curve["log"]] == [0, 3, 6]
    assert curve["log"][-1]["psnr"] > curve["log"][0]["psnr"]   # it fits


def test_inr_rejects_a_cap_of_one(tmp_path):
    proc = _run("certified_deq_inr.py", ["--cap", "1.0"], tmp_path)
    assert proc.returncode == 2 and "--cap must lie in (0, 1)" in proc.stderr


def test_classifier_unmeetable_budget_is_one_line(tmp_path):
    data = _write_image_folder(tmp_path / "folder")
    proc = _run("certified_deq_classifier.py", ["--data", str(data), "--forward-budget", "5"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: forward_budget=5 cannot be met")
