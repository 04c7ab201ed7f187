"""Where the benchmarks write (lmdeq/app/bench/outputs.py, issue 27 item 5): by default a new run folder outside
the checkout ($LMDEQ_RUNS/<command>-<timestamp>/), never over an existing result file unless --force, and every
script's bad output path (empty, a file where a directory is expected, a missing parent, not writable) is a
one-line error (exit status 2) before any work. The benchmark work itself is replaced by a sentinel here: nothing
is timed."""
import argparse
import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch

from lmdeq.app.bench import kernels, outputs, solvers, speedup
from lmdeq.app.bench.device import device_slug
from lmdeq.app.cli import main as lmdeq_main
from lmdeq.errors import ConfigError

from .scripts import ROOT, load_script

SLUG = device_slug(torch.device("cpu"))


class WorkStarted(Exception):
    """Raised by the sentinel that stands for a benchmark's work."""


def _no_work(*args, **kwargs):
    raise WorkStarted


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """LMDEQ_RUNS in tmp_path, and the benchmarks' work replaced by the sentinel."""
    root = tmp_path / "runs"
    monkeypatch.setenv("LMDEQ_RUNS", str(root))
    monkeypatch.setattr(speedup, "run", _no_work)
    monkeypatch.setattr(solvers, "run", _no_work)
    monkeypatch.setattr(kernels, "run", _no_work)
    monkeypatch.setattr(kernels, "copy_bandwidth_gbps", _no_work)
    monkeypatch.setattr(kernels, "configure_or_exit", lambda prog: None)
    import lmdeq.app.data.run_data as run_data

    monkeypatch.setattr(run_data, "prepare_splits", _no_work)
    return root


def _exit_code(fn):
    """fn()'s exit status (a return value or SystemExit) and its stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = fn()
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue()


def _error_lines(stderr: str):
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(("usage", " "))
            and ": writing results to " not in line]


# ---- the helpers ----------------------------------------------------------------------------------------------

def test_runs_root_and_fresh_run_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("LMDEQ_RUNS", str(tmp_path / "r"))
    assert outputs.runs_root() == tmp_path / "r"
    a, b = outputs.new_run_folder("speedup"), outputs.new_run_folder("speedup")
    assert a != b and a.parent == b.parent == tmp_path / "r" and a.name.startswith("speedup-")
    assert b.name == a.name + "-2" or b.name > a.name   # (the same second: a suffix)
    assert not list(a.iterdir()) and not list(b.iterdir())
    monkeypatch.delenv("LMDEQ_RUNS")
    assert outputs.runs_root() == Path.home() / ".cache" / "lmdeq" / "bench"
    assert ROOT not in outputs.runs_root().parents   # outside the checkout


def test_result_dir_refuses_existing_files_unless_forced(tmp_path, capsys):
    (tmp_path / "speedup-x.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"--out .*: speedup-x\.json exists already; pass --force"):
        outputs.result_dir(str(tmp_path), "speedup", ["speedup-x.png", "speedup-x.json"])
    assert outputs.result_dir(str(tmp_path), "speedup", ["speedup-x.json"], force=True) == tmp_path
    assert outputs.result_dir(str(tmp_path / "new"), "speedup", ["speedup-x.json"]) == tmp_path / "new"
    assert f"speedup: writing results to {tmp_path / 'new'}" in capsys.readouterr().err
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"--out .*a\.json exists already"):
        outputs.result_file(str(tmp_path / "a.json"), "jfb-lever", "jfb-lever.json")
    with pytest.raises(ConfigError, match=r"stem\.png exists already"):
        (tmp_path / "stem.png").write_text("")
        outputs.result_file(str(tmp_path / "stem"), "train-curve", "curve", suffixes=(".png", ".md"))


def test_an_unusable_runs_root_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("LMDEQ_RUNS", str(tmp_path / "file" / "runs"))
    with pytest.raises(ConfigError, match="cannot make the run folder under .*set LMDEQ_RUNS"):
        outputs.new_run_folder("speedup")


@pytest.mark.parametrize("kind", ["empty", "file", "missing parent", "unwritable"])
def test_out_dir_type_refuses_bad_directories(kind, tmp_path, monkeypatch):
    value = _bad_value(kind, tmp_path, monkeypatch, directory=True)
    with pytest.raises(argparse.ArgumentTypeError):
        outputs.out_dir(value)
    assert outputs.out_dir(str(tmp_path / "new")) == str(tmp_path / "new")   # made by the run, in an existing parent


def _bad_value(kind, tmp_path, monkeypatch, directory: bool) -> str:
    """A bad output path of ``kind`` for a directory (or a file) argument."""
    if kind == "empty":
        return ""
    if kind == "file":   # a file where a directory is expected; a directory where a file is
        if directory:
            (tmp_path / "a-file").write_text("")
            return str(tmp_path / "a-file")
        return str(tmp_path)
    if kind == "missing parent":
        return str(tmp_path / "no" / "such" / "out")
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p) == str(locked) else real(p, mode))
    return str(locked / "out")


# ---- every command ----------------------------------------------------------------------------------------------

def _script(relative):
    return load_script(relative).main


# name -> (argv before --out, how to call, whether --out is a directory, the files a run writes there)
COMMANDS = {
    "lmdeq bench": (["bench", "--quick"], lambda argv: lmdeq_main(argv), True,
                    [f"speedup-{SLUG}.json", f"speedup-{SLUG}.png"]),
    "lmdeq bench solvers": (["bench", "solvers", "--quick"], lambda argv: lmdeq_main(argv), True,
                            [f"solvers-{SLUG}.json"]),
    "lmdeq bench tta": (["bench", "tta", "--data", "x", "--device", "cpu"], lambda argv: lmdeq_main(argv), True,
                        [f"time_to_accuracy-{SLUG}.json"]),
    "benchmarks/time_to_accuracy.py": (["--data", "x", "--device", "cpu"],
                                       lambda argv: _script("benchmarks/time_to_accuracy.py")(argv), True,
                                       [f"time_to_accuracy-{SLUG}.png"]),
    "scripts/gpu_train.py": (["--data", "x", "--device", "cpu", "--save-runs", "{tmp}/saved"],
                             lambda argv: _script("scripts/gpu_train.py")(argv), True,
                             [f"time_to_accuracy-{SLUG}.md"]),
    "benchmarks/kernels.py": (["--device", "cpu"], lambda argv: _script("benchmarks/kernels.py")(argv), True,
                              [f"kernels-{SLUG}.json", f"kernels-{SLUG}.md"]),
    "benchmarks/replot.py": ([str(ROOT / "benchmarks/results/speedup-cpu-intel.json")],
                             lambda argv: _script("benchmarks/replot.py")(argv), True, ["speedup-cpu-intel.png"]),
    "benchmarks/jfb_lever.py": (["--weights", "{tmp}/missing.pt"], lambda argv: _script("benchmarks/jfb_lever.py")(argv),
                                False, None),
    "benchmarks/ddp_scaling.py": ([], lambda argv: _script("benchmarks/ddp_scaling.py")(argv), False, None),
    "benchmarks/independent/time_baselines.py": (
        ["--device", "cpu"], lambda argv: _script("benchmarks/independent/time_baselines.py")(argv), False, None),
    "benchmarks/plot_training_curve.py": ([str(ROOT / "benchmarks/results/train-gray32-mnist-small.metrics.jsonl")],
                                          lambda argv: _script("benchmarks/plot_training_curve.py")(argv), False,
                                          None),
    "scripts/prepare_gpu_carry.py": (["--source", "{tmp}/missing.tar.gz"],
                                     lambda argv: _script("scripts/prepare_gpu_carry.py")(argv), False, None),
}


def _argv(name, tmp_path, *extra):
    return [a.format(tmp=tmp_path) for a in COMMANDS[name][0]] + list(extra)


@pytest.mark.parametrize("kind", ["empty", "file", "missing parent", "unwritable"])
@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_bad_output_path_is_a_one_line_error_before_any_work(name, kind, runs, tmp_path, monkeypatch):
    _, call, directory, _ = COMMANDS[name]
    value = _bad_value(kind, tmp_path, monkeypatch, directory)
    rc, err = _exit_code(lambda: call(_argv(name, tmp_path, f"--out={value}")))
    lines = _error_lines(err)
    assert rc == 2 and len(lines) == 1 and "--out" in lines[0], (name, kind, err)
    assert "Traceback" not in err
    assert not runs.exists()   # no run folder made either


@pytest.mark.parametrize("name", [n for n, c in COMMANDS.items() if c[2]])
def test_an_existing_result_file_is_refused_unless_forced(name, runs, tmp_path):
    _, call, _, files = COMMANDS[name]
    out = tmp_path / "out"
    out.mkdir()
    committed = out / files[-1]
    committed.write_text("committed")
    rc, err = _exit_code(lambda: call(_argv(name, tmp_path, "--out", str(out))))
    lines = _error_lines(err)
    assert rc == 2 and len(lines) == 1 and f"{files[-1]} exists already" in lines[0] and "--force" in lines[0], err
    assert committed.read_text() == "committed" and not runs.exists()
    if name == "benchmarks/replot.py":
        return   # (its work is real, and checked below)
    with pytest.raises(WorkStarted):   # --force: the check passes and the work starts
        call(_argv(name, tmp_path, "--out", str(out), "--force"))


@pytest.mark.parametrize("name", [n for n, c in COMMANDS.items() if c[2] and n != "benchmarks/replot.py"])
def test_by_default_a_new_run_folder_outside_the_checkout(name, runs, tmp_path, capsys):
    _, call, _, _ = COMMANDS[name]
    with pytest.raises(WorkStarted):
        call(_argv(name, tmp_path))
    (folder,) = runs.iterdir()
    assert ROOT not in folder.parents and not list(folder.iterdir())
    assert f"writing results to {folder}" in capsys.readouterr().err


def test_tta_resume_needs_out_and_continues_existing_files(runs, tmp_path):
    rc, err = _exit_code(lambda: lmdeq_main(_argv("lmdeq bench tta", tmp_path, "--resume")))
    assert rc == 2 and "--resume needs --out" in err and not runs.exists()
    out = tmp_path / "out"
    out.mkdir()
    (out / f"time_to_accuracy-{SLUG}.state.pt").write_text("")
    with pytest.raises(WorkStarted):   # the run's own files are expected there
        lmdeq_main(_argv("lmdeq bench tta", tmp_path, "--out", str(out), "--resume"))


def test_file_outputs_default_to_a_run_folder_and_refuse_existing_files(runs, tmp_path, capsys):
    draw = _script("benchmarks/plot_training_curve.py")
    metrics = str(ROOT / "benchmarks/results/train-gray32-mnist-small.metrics.jsonl")
    assert draw([metrics, "--label", "x"]) == 0
    (folder,) = runs.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["curve.md", "curve.png"]
    stem = tmp_path / "curve"
    (tmp_path / "curve.md").write_text("kept")
    rc, err = _exit_code(lambda: draw([metrics, "--out", str(stem)]))
    assert rc == 2 and "curve.md exists already" in err and (tmp_path / "curve.md").read_text() == "kept"
    assert draw([metrics, "--out", str(stem), "--png-only"]) == 0 and (tmp_path / "curve.md").read_text() == "kept"


def test_gpu_check_writes_only_into_its_folders():
    """scripts/gpu_check.sh: every benchmark step names --out in its work folder (emptied first); without $OUT the
    archive and summary go to a run folder outside the checkout."""
    text = (ROOT / "scripts" / "gpu_check.sh").read_text()
    assert "benchmarks/results" not in text.split("set -uo pipefail", 1)[1]
    assert 'FINAL=${OUT:-${LMDEQ_RUNS:-${HOME:-/tmp}/.cache/lmdeq/bench}/gpu-check-' in text
    commands = [line for line in text.replace("\\\n", " ").splitlines()
                if "pycmd" in line and any(c in line for c in ("kernels.py", "gpu_train.py", "lmdeq.app.cli bench"))]
    assert len(commands) == 4   # bench(), the training, the kernels and their torch.compile step
    for line in commands:
        assert '--out "$RESULTS' in line, line


def test_replot_reads_the_committed_json_and_leaves_it_alone(tmp_path, capsys):
    """Every committed benchmark figure redraws from its JSON (unchanged), into --out (the examples' figures are
    drawn by the examples themselves)."""
    from lmdeq.app.bench.replot import kind_of

    results = ROOT / "benchmarks" / "results"
    files = sorted(p for p in results.glob("*.json") if p.stem + ".png" in {q.name for q in results.glob("*.png")}
                   and kind_of(json.loads(p.read_text())))
    assert {p.stem for p in files} >= {"speedup-cpu-intel", "speedup-cpu-intel-profile", "kernels-cpu-intel",
                                       "time_to_accuracy-cpu-intel"}
    before = {p: p.read_bytes() for p in files}
    assert _script("benchmarks/replot.py")([*map(str, files), "--out", str(tmp_path)]) == 0
    assert {p: p.read_bytes() for p in files} == before
    for p in files:
        assert (tmp_path / (p.stem + ".png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "kernels-cpu-intel.md").exists()
    (tmp_path / "not-a-result.json").write_text(json.dumps({"x": 1}))
    rc, err = _exit_code(lambda: _script("benchmarks/replot.py")([str(tmp_path / "not-a-result.json"),
                                                                    "--out", str(tmp_path / "o")]))
    assert rc == 2 and "not a benchmark result this redraws" in err and not (tmp_path / "o").exists()
