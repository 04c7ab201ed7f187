"""The time-to-accuracy benchmark: interleaving does not change any method's results (bitwise on CPU), the
targets are evaluated from the data, and the script / ``lmdeq bench tta`` run end to end on a tiny
ImageFolder with tiny models (JSON with every point, PNG, Markdown, saved runs)."""
import json
import re

import pytest
import torch

from lmdeq.app.bench import tta_report
from lmdeq.app.flat_solves import model_arguments
from lmdeq.app.bench.speedup import LABELS, method_config
from lmdeq.app.bench.tta_run import MethodRun, MethodSpec, interval_bounds, run_interleaved, shared_init
from lmdeq.app.train.config import TrainConfig
from lmdeq.app.data.images import LabelledImages

from ..train.train_helpers import write_image_folder
from .scripts import load_script

TINY = dict(channels=[8, 8], expansion=2, num_groups=4, head_channels=[2, 4], final_channels=16)
TINY_ARGS = ["--model-set", "channels=[8,8]", "--model-set", "expansion=2", "--model-set", "num_groups=4",
             "--model-set", "head_channels=[2,4]", "--model-set", "final_channels=16"]
TIMES = ("train_s", "eval_s", "interval_s")


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return LabelledImages(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                          torch.arange(n) % 4, ("a", "b", "c", "d"))


def _specs():
    small = model_arguments("cifar10-small", False, dict(f_max_iter=4, b_max_iter=4))   # keep Broyden short
    return [MethodSpec("original", LABELS["original"],
                       {**method_config("original", "cifar10-small", unrolled_warmup_steps=2), **TINY, **small}),
            MethodSpec("authors", LABELS["authors"], {**method_config("authors", "cifar10-small"), **TINY}),
            MethodSpec("lmdeq", LABELS["lmdeq"], {**method_config("lmdeq", "cifar10-small"), **TINY},
                       channels_last=True)]


def _run(specs, order, check_init=False):
    cfg = TrainConfig(preset="cifar10-small", epochs=2, batch_size=3, seed=3)
    train, val = _images(6, 0), _images(4, 1)
    init = shared_init("cifar10-small", cfg.seed, TINY)
    runs = [MethodRun(s, cfg, train, val, torch.device("cpu"), init=init) for s in specs]
    if check_init:   # every method starts from the same weights
        for r in runs:
            assert all(torch.equal(p, init[n]) for n, p in r.model.named_parameters()), r.spec.name
    run_interleaved([runs[i] for i in order], evals_per_epoch=2)
    return runs


def test_interleaved_equals_alone_bitwise():
    """Every method keeps its own RNG stream, data order and clock: training the three methods round by
    round gives each exactly the points and weights it gets alone."""
    together = _run(_specs(), order=[2, 0, 1], check_init=True)
    for i, spec in enumerate(_specs()):
        (alone,) = _run([spec], order=[0])
        mixed = together[i]
        assert len(alone.points) == len(mixed.points) == 2 * len(interval_bounds(2, 2)) == 4
        for a, b in zip(alone.points, mixed.points):
            assert {k: v for k, v in a.items() if k not in TIMES} == {k: v for k, v in b.items() if k not in TIMES}
        for (name, a), (_, b) in zip(alone.model.state_dict().items(), mixed.model.state_dict().items()):
            assert torch.equal(a, b), f"{spec.name}: {name}"
        assert mixed.clock > 0 and mixed.points[-1]["train_s"] == mixed.clock
        assert sum(p["interval_s"] for p in mixed.points) == pytest.approx(mixed.clock, rel=1e-12)   # no eval
    original = together[0].points
    assert original[0]["unrolled"] and not original[-1]["unrolled"]   # 2 warm-up steps of 4, then DEQ mode
    assert original[0]["f_nstep"] == 10 and original[-1]["f_nstep"] <= 5   # Broyden: 4 updates + g(x0)


def test_interval_bounds():
    assert interval_bounds(157, 8) == [20, 39, 59, 78, 98, 118, 137, 157]
    assert interval_bounds(3, 8) == [1, 2, 3]
    with pytest.raises(ValueError, match="evals_per_epoch"):
        interval_bounds(10, 0)


def _curve(name, pts):
    return {"method": name, "label": name, "points": [
        {"step": 10 * (i + 1), "epoch": e, "train_s": t, "val_acc": a, "unrolled": False, "interval_steps": 10,
         "f_nstep": 3.0, "b_nstep": 2.0} for i, (e, t, a) in enumerate(pts)]}


@pytest.mark.parametrize("fast", [True, False])
def test_targets_are_evaluated_from_the_data(fast):
    a = _curve("original", [(0.5, 100, 0.20), (1.0, 200, 0.35), (1.5, 300, 0.40), (2.0, 400, 0.42)])
    scale = 10 if fast else 1
    c = _curve("lmdeq", [(0.5, 50 / scale, 0.25), (1.0, 100 / scale, 0.38), (1.5, 150 / scale, 0.45),
                         (2.0, 200 / scale, 0.43 if fast else 0.30)])
    b = _curve("authors", [(0.5, 8, 0.22), (1.0, 16, 0.30), (1.5, 24, 0.36), (2.0, 32, 0.40)])
    methods = [a, b, c]
    summary = tta_report.summarise(methods, [0.3, 0.4])
    verdicts = {v["target"][:10]: v["verdict"] for v in tta_report.targets(methods, summary)}
    rows = {r["method"]: r for r in summary["rows"]}
    assert summary["equal_epochs"] == 2 and rows["original"]["time_to"]["0.3"] == 200
    assert rows["lmdeq"]["acc_equal_epochs"] == (0.43 if fast else 0.30)
    if fast:   # (a) reaches 0.42 at 400 s, (c) at 15 s; at equal epochs 0.43 vs 0.42; (c) >= (b) at all times
        assert list(verdicts.values()) == ["MET", "MET", "MET"]
    else:      # (c) reaches 0.42 at 150 s (not <= 50 s), ends 12 points below (a), is below (b) from 50 s on
        assert list(verdicts.values()) == ["MISSED", "MISSED", "MISSED"]
    text = tta_report.tables(summary, tta_report.targets(methods, summary), [0.3, 0.4])
    assert "time to 30%" in text and text.count("**MET**") == (3 if fast else 0)


def test_missing_methods_give_na():
    methods = [_curve("lmdeq", [(1.0, 10, 0.5)])]
    summary = tta_report.summarise(methods, [0.3])
    assert [v["verdict"] for v in tta_report.targets(methods, summary)] == ["N/A", "N/A", "N/A"]


@pytest.fixture
def tiny_folder(tmp_path):
    return write_image_folder(tmp_path / "images", per_class=3)


def test_script_runs_end_to_end(tiny_folder, tmp_path, monkeypatch, capsys):
    from lmdeq.app.bench.speedup import _load_weights
    from lmdeq.models import mdeq
    from lmdeq.app.train.checkpoint import load_checkpoint

    monkeypatch.setenv("LMDEQ_CACHE", str(tmp_path / "cache"))
    tta = load_script("benchmarks/time_to_accuracy.py")
    out, runs = tmp_path / "results", tmp_path / "runs"
    rc = tta.main(["--data", str(tiny_folder), "--device", "cpu", "--epochs", "1", "--batch", "4",
                   "--val-fraction", "0.2", "--full-split", "--evals-per-epoch", "2", "--methods", "authors,lmdeq",
                   "--variants", "lmdeq_nocap", "--target", "0.45", "--no-progress", "--out", str(out),
                   "--save-runs", str(runs), "--tag=-tiny", *TINY_ARGS])
    assert rc == 0
    (path,) = out.glob("time_to_accuracy-*-tiny.json")
    result = json.loads(path.read_text())
    assert result["settings"]["targets"] == [0.3, 0.4, 0.45, 0.5, 0.6] and result["settings"]["batch_size"] == 4
    assert result["settings"]["train_images"] == 10 and result["settings"]["val_images"] == 2
    assert [m["method"] for m in result["methods"]] == ["authors", "lmdeq", "lmdeq_nocap"]
    for m in result["methods"]:
        assert [p["step"] for p in m["points"]] == [2, 3] and all(p["val_acc"] is not None for p in m["points"])
    assert "allocator" in result["env"] and len(result["load_average_start"]) == 3 and result["load_average_end"]
    assert [v["verdict"] for v in result["targets"]][0] == "N/A"   # no (a) in this run
    assert path.with_suffix(".png").stat().st_size > 0 and "Targets:" in path.with_suffix(".md").read_text()
    printed = capsys.readouterr().out
    assert "(c) lmdeq fast path" in printed and "What the certificate costs" in printed and "Targets:" in printed
    ckpt = load_checkpoint(runs / "lmdeq" / "last.pt")
    assert ckpt["kind"] == "best" and ckpt["step"] == 3 and "optimizer" not in ckpt
    model = mdeq(**ckpt["model_config"])
    assert _load_weights(model, [{**ckpt, "path": "x"}]) == "x"
    lines = (runs / "lmdeq" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 3]


def test_lmdeq_bench_tta_subcommand(tiny_folder, tmp_path, monkeypatch, capsys):
    from lmdeq.app.cli import main

    monkeypatch.setenv("LMDEQ_CACHE", str(tmp_path / "cache"))
    rc = main(["bench", "tta", "--data", str(tiny_folder), "--device", "cpu", "--epochs", "1", "--batch", "8",
               "--full-split", "--evals-per-epoch", "1", "--methods", "lmdeq", "--variants", "",
               "--out", str(tmp_path / "out"), "--no-progress", *TINY_ARGS])
    assert rc == 0 and "| (c) lmdeq fast path |" in capsys.readouterr().out


def test_data_of_another_shape_than_the_preset_is_named(tiny_folder, tmp_path, monkeypatch, capsys):
    from lmdeq.app.cli import main

    monkeypatch.setenv("LMDEQ_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "tta", "--data", str(tiny_folder), "--device", "cpu", "--epochs", "1", "--batch", "8",
              "--full-split", "--methods", "lmdeq", "--variants", "", "--preset", "mnist-small",
              "--out", str(tmp_path / "out"), "--no-progress", *TINY_ARGS])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "its images are (3, 32, 32) (C, H, W); preset mnist-small takes (1, 28, 28)" in err


@pytest.mark.parametrize("argv,match", [(["--methods", "fastest"], "--methods must be"),
                                        (["--variants", "lmdeq_uncapped"], "--methods must be"),
                                        (["--epochs", "0"], "argument --epochs: expected a positive integer"),
                                        (["--targets", "1.5"], None)])
def test_bad_arguments_are_named(tiny_folder, tmp_path, monkeypatch, argv, match, capsys):
    monkeypatch.setenv("LMDEQ_CACHE", str(tmp_path / "cache"))
    tta = load_script("benchmarks/time_to_accuracy.py")
    with pytest.raises(SystemExit) as exc:
        tta.main(["--data", str(tiny_folder), "--device", "cpu", "--out", str(tmp_path), "--no-progress", *argv])
    message = str(exc.value) + capsys.readouterr().err
    assert (match or "accuracies in (0, 1)") in message


def _fails(call, capsys, match):
    """A documented error: exit status 2 and one line naming it."""
    with pytest.raises(SystemExit) as exc:
        call()
    last = capsys.readouterr().err.strip().splitlines()[-1]   # (progress lines may come first)
    assert exc.value.code == 2 and last.startswith("time to accuracy: error: ") and re.search(match, last), \
        (exc.value.code, last)


def test_data_is_required_and_must_exist(tmp_path, capsys):
    tta = load_script("benchmarks/time_to_accuracy.py")
    _fails(lambda: tta.main(["--device", "cpu", "--out", str(tmp_path)]), capsys, "--data is required")
    _fails(lambda: tta.main(["--data", str(tmp_path / "missing"), "--device", "cpu", "--out", str(tmp_path)]),
           capsys, "time to accuracy: error: .*missing")


def test_the_jr_baseline_trains_with_its_own_draws():
    """(a-JR) in the time-to-accuracy run: its JR decisions come from its own seeded schedule (the number of
    JR steps in its points is the schedule's), and interleaving it with another method changes nothing."""
    from lmdeq.app.bench.tta_cli import _method_names
    from lmdeq.app.train.jacobian import JacobianSchedule

    assert _method_names("original,original_jr", "") == ["original", "original_jr"]
    config = {**method_config("original_jr", "cifar10-small"), **TINY, "jac_loss_freq": 0.5, "jac_stop_fraction": 1.0}
    spec = MethodSpec("original_jr", LABELS["original_jr"], config)
    (alone,) = _run([spec], order=[0])
    together = _run([spec, _specs()[2]], order=[1, 0])[0]
    schedule = JacobianSchedule(alone.model.config, seed=3, total_steps=4)
    expected = sum(schedule.draw(t).jac_loss for t in range(4))
    assert alone.points[-1]["jr_steps"] == expected > 0
    for a, b in zip(alone.points, together.points):
        assert {k: v for k, v in a.items() if k not in TIMES} == {k: v for k, v in b.items() if k not in TIMES}
    for (name, a), (_, b) in zip(alone.model.state_dict().items(), together.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_an_interrupted_run_resumes_to_the_same_curves(tiny_folder, tmp_path, monkeypatch, capsys):
    """Killed after its first round (mid-epoch: 2 points per epoch) and continued with --resume, the run
    gives every method the points of an uninterrupted run (times aside); other settings are refused."""
    from lmdeq.app.bench import tta_cli

    monkeypatch.setenv("LMDEQ_CACHE", str(tmp_path / "cache"))
    tta = load_script("benchmarks/time_to_accuracy.py")

    def argv(out, *extra):
        return ["--data", str(tiny_folder), "--device", "cpu", "--epochs", "2", "--batch", "5", "--val-fraction",
                "0.2", "--full-split", "--evals-per-epoch", "2", "--methods", "original_jr,lmdeq", "--variants", "",
                "--no-progress", "--out", str(out), "--model-set", "jac_loss_freq=0.7", *TINY_ARGS, *extra]

    assert tta.main(argv(tmp_path / "whole")) == 0
    real_save, saves = tta_cli._save_state, []

    def save_then_die(*a, **k):
        real_save(*a, **k)
        saves.append(1)
        if len(saves) == 1:
            raise KeyboardInterrupt("killed after round 1")

    monkeypatch.setattr(tta_cli, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tta.main(argv(tmp_path / "cut"))
    monkeypatch.setattr(tta_cli, "_save_state", real_save)
    capsys.readouterr()
    _fails(lambda: tta.main(argv(tmp_path / "cut", "--resume", "--seed", "1")), capsys, "other settings: seed 0 -> 1")
    assert tta.main(argv(tmp_path / "cut", "--resume")) == 0
    whole, cut = [json.loads(next((tmp_path / d).glob("*.json")).read_text()) for d in ("whole", "cut")]
    assert [s["start_round"] for s in cut["sittings"]] == [0, 1] and len(whole["sittings"]) == 1
    assert sum(p["jr_steps"] > 0 for p in whole["methods"][0]["points"]) > 0
    for a, b in zip(whole["methods"], cut["methods"]):
        assert len(a["points"]) == len(b["points"]) == 4
        for pa, pb in zip(a["points"], b["points"]):
            assert {k: v for k, v in pa.items() if k not in TIMES + ("train_s",)} == \
                {k: v for k, v in pb.items() if k not in TIMES + ("train_s",)}
    capsys.readouterr()
    _fails(lambda: tta.main(argv(tmp_path / "never", "--resume")), capsys, "no saved state")


def test_targets_against_the_jr_baseline():
    """Targets 4 and 5: (c) vs (a-JR), time to (a-JR)'s best (<= 1/3) and every evaluation from epoch 4."""
    def curve(name, pts):
        return {"method": name, "label": name, "points": [
            {"step": 10 * e, "epoch": e, "train_s": t, "val_acc": a, "unrolled": False, "interval_steps": 10}
            for e, t, a in pts]}

    jr = curve("original_jr", [(2, 100.0, 0.30), (4, 200.0, 0.40), (6, 300.0, 0.50)])
    good = curve("lmdeq", [(2, 20.0, 0.31), (4, 40.0, 0.395), (6, 60.0, 0.51)])
    bad = curve("lmdeq", [(2, 20.0, 0.31), (4, 40.0, 0.38), (6, 150.0, 0.50)])
    for c, verdicts in ((good, ["MET", "MET"]), (bad, ["MISSED", "MISSED"])):
        methods = [jr, c]
        out = tta_report.targets(methods, tta_report.summarise(methods, [0.3]))[-2:]
        assert [v["verdict"] for v in out] == verdicts, out
    assert "2 evaluations from epoch 4" in out[1]["detail"] and "-2.0 points at epoch 4" in out[1]["detail"]
    methods = [jr]
    assert [v["verdict"] for v in tta_report.targets(methods, tta_report.summarise(methods, [0.3]))[-2:]] == \
        ["N/A", "N/A"]


def test_budget_methods_get_their_table_with_time_per_step():
    def timed(name, seconds, acc, bound):
        c = _curve(name, [(1.0, seconds, acc - 0.05), (2.0, 2 * seconds, acc)])
        for i, p in enumerate(c["points"]):
            p.update(interval_s=seconds * (1 + 0.5 * i), lipschitz_bound=bound)   # 10 steps per interval
        return c

    methods = [timed("lmdeq", 5.0, 0.40, 0.25), timed("lmdeq_budget3", 4.0, 0.37, 0.09),
               timed("lmdeq_budget2", 3.0, 0.30, 0.03)]
    summary = tta_report.summarise(methods, [0.3])
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["lmdeq_budget3"]["step_ms"] == {"median": 500.0, "min": 400.0, "max": 600.0}
    text = tta_report.tables(summary, tta_report.targets(methods, summary), [0.3])
    table = text.split("Iteration budgets")[1].split("Targets:")[0]
    lines = [ln for ln in table.splitlines() if ln.startswith("| lmdeq")]
    assert [ln.split(" | ")[0] for ln in lines] == ["| lmdeq", "| lmdeq_budget2", "| lmdeq_budget3"]   # k ascending
    assert "0.030" in lines[1] and "375 (300-450)" in lines[1] and "-10.0" in lines[1]


@pytest.mark.parametrize("value", ["0", "2,x", "", "3,-1"])
def test_bad_budgets_are_named(value):
    from lmdeq.app.bench.tta_cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--budgets", value])
