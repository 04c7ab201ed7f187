"""The speed-up benchmark's --quick path runs end to end and reports consistent fields (no timing
thresholds), the methods' steps alternate round by round (fake steps), ratios come from the rounds, the
load is recorded, and the sync-free solve gives the same result as the checked solve."""
import json
import math

import pytest
import torch

from lmdeq.app.bench import speedup
from lmdeq.app.cli import main
from lmdeq.models import APRIORI_SOLVES, mdeq
from lmdeq.solvers import FixedPoint


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return speedup.run(preset="cifar10-small", batch=2, steps=1, warmup=0, methods=("original", "authors", "lmdeq"),
                       out_dir=str(out), log=lambda m: None)


def test_rows_and_fields(result):
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["original", "authors", "lmdeq"]
    for r in rows:
        assert r["weights"] == "init"
        assert r["train_ms"] > 0 and r["infer_ms"] > 0 and len(r["train_ms_all"]) == 1
        assert r["train_spread"]["median"] == r["train_ms"] == r["train_ms_all"][0]
        assert r["infer_spread"]["n"] == 1 and r["infer_spread"]["iqr"] == 0.0
        assert isinstance(r["f_evals"], int) and r["f_evals"] >= 1
        assert isinstance(r["b_evals"], int) and r["b_evals"] >= 1
        assert math.isfinite(r["f_residual"]) and math.isfinite(r["b_residual"])
        assert r["cuda_graph"] is False  # CPU: no CUDA graphs
    by = {r["method"]: r for r in rows}
    # The original MDEQ runs its fixed Broyden budget (22/22 updates for cifar10-small, each solve one
    # f-evaluation more: g(x0)) unless it converges.
    assert by["original"]["f_evals"] <= 23 and by["original"]["b_evals"] <= 23
    assert by["authors"]["f_evals"] <= 18 and by["authors"]["b_evals"] <= 20
    assert math.isinf(by["original"]["lipschitz_bound"])
    assert by["lmdeq"]["lipschitz_bound"] < 1.0
    assert result["fast_path"]["solve_mode"] == "checked" and result["fast_path"]["cuda_graphs"] is False
    assert result["fast_path"]["channels_last"] is True
    ratios = result["ratios"]["init"]
    assert set(ratios) == {f"{k} {r}" for k in ("train", "infer") for r in ("a/b", "a/c", "b/c")}
    assert ratios["train a/c"]["median"] == pytest.approx(by["original"]["train_ms"] / by["lmdeq"]["train_ms"])
    load = result["load"]
    assert load["threads"] == torch.get_num_threads() == result["env"]["threads"]
    assert len(load["loadavg_start"]) == 3 and len(load["loadavg_end"]) == 3
    assert result["env"]["allocator"]["source"] in ("mallopt", "environment", "off", "unsupported", "default")
    assert result["timing"] == "interleaved rounds"


def test_files_written(result):
    js, png = result["files"]
    with open(js) as fh:
        saved = json.load(fh)
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert saved["env"]["torch"] == torch.__version__
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "(c) lmdeq fast path" in result["table"] and "train a/c" in result["table"]


def test_cli_quick_path(tmp_path, capsys):
    rc = main(["bench", "--quick", "--batch", "2", "--steps", "1", "--warmup", "0", "--methods", "lmdeq",
               "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "(c) lmdeq fast path" in out and "cifar10-small" in out
    assert out.count("| weights") == 1  # one method: the rows table only, no (empty) ratio table
    assert (tmp_path / next(p.name for p in tmp_path.iterdir() if p.suffix == ".json")).exists()


def test_cli_fast_path_options(tmp_path, capsys):
    rc = main(["bench", "--quick", "--batch", "2", "--steps", "1", "--warmup", "0", "--methods", "lmdeq",
               "--solve-mode", "apriori", "--no-cuda-graphs", "--no-channels-last", "--no-cudnn-benchmark",
               "--out", str(tmp_path), "--tag=-opt"])
    assert rc == 0
    (path,) = tmp_path.glob("speedup-*-opt.json")
    with open(path) as fh:
        saved = json.load(fh)
    assert saved["fast_path"]["solve_mode"] == "apriori" and saved["fast_path"]["cuda_graphs"] is False
    assert saved["fast_path"]["channels_last"] is False and saved["cudnn_benchmark"] is False
    # apriori: the certified counts, the adjoint's (from g0 = v) never longer than the forward's
    row = saved["rows"][0]
    assert 1 <= row["b_evals"] <= row["f_evals"]


@pytest.mark.parametrize("flag", [True, False])
def test_cudnn_benchmark_applies_to_every_method_and_is_restored(flag, monkeypatch):
    seen = []

    def fake_measure(methods, device, **kw):
        seen.append(torch.backends.cudnn.benchmark)
        one = {"train_ms_all": [1.0], "infer_ms_all": [1.0], "train_spread": speedup.spread([1.0]),
               "infer_spread": speedup.spread([1.0]), "train_ms": 1.0, "infer_ms": 1.0, "f_evals": 1,
               "b_evals": 1, "f_residual": 0.0, "cuda_graph": False}
        return {name: dict(one) for name in methods}

    monkeypatch.setattr(speedup, "measure", fake_measure)
    before = torch.backends.cudnn.benchmark
    result = speedup.run(preset="cifar10-small", batch=2, cudnn_benchmark=flag, out_dir=None, log=lambda m: None)
    assert seen == [flag] and result["cudnn_benchmark"] is flag   # one interleaved measurement of all three
    assert [r["method"] for r in result["rows"]] == list(speedup.METHODS)
    assert torch.backends.cudnn.benchmark is before


def test_cli_rejects_unknown_method(tmp_path, capsys):
    assert main(["bench", "--quick", "--methods", "fast", "--out", str(tmp_path)]) == 2
    assert "lmdeq bench: error: --methods" in capsys.readouterr().err


class FakeModel(torch.nn.Module):
    def __init__(self, name, calls):
        super().__init__()
        self.name, self.calls = name, calls

    @property
    def last_info(self):
        return {"f_nstep": len(self.name), "b_nstep": 1, "f_residual": 0.0, "b_residual": 0.0}


class FakeMethod:
    """A benchmark method whose steps only log (mode, name)."""

    def __init__(self, name, calls):
        self.model = FakeModel(name, calls)
        self.name, self.calls = name, calls

    def train_step(self):
        self.calls.append(("train" if self.model.training else "eval?", self.name))

    def infer(self):
        self.calls.append(("infer" if not self.model.training else "train?", self.name))

    def marks(self):
        return []


def test_measure_interleaves_training_then_inference_rounds():
    calls = []
    methods = {n: FakeMethod(n, calls) for n in ("original", "authors", "lmdeq")}
    out = speedup.measure(methods, torch.device("cpu"), steps=3, warmup=1)
    names = ["original", "authors", "lmdeq"]
    assert calls == [("train", n) for _ in range(4) for n in names] + [("infer", n) for _ in range(4) for n in names]
    assert set(out) == set(names)
    for n in names:
        assert len(out[n]["train_ms_all"]) == 3 and len(out[n]["infer_ms_all"]) == 3
        assert out[n]["train_spread"]["n"] == 3 and out[n]["train_ms"] == out[n]["train_spread"]["median"]
        assert out[n]["f_evals"] == len(n) and out[n]["profile"] is None


def test_ratios_are_per_round():
    rows = [{"method": "original", "train_ms_all": [100.0, 200.0, 300.0], "infer_ms_all": [10.0, 10.0, 10.0]},
            {"method": "lmdeq", "train_ms_all": [10.0, 40.0, 20.0], "infer_ms_all": [1.0, 2.0, 5.0]}]
    ratios = speedup._ratios(rows)
    assert set(ratios) == {"train a/c", "infer a/c"}   # only the pairs that ran
    assert ratios["train a/c"] == speedup.spread([10.0, 5.0, 15.0])
    assert ratios["infer a/c"]["median"] == 5.0 and ratios["infer a/c"]["min"] == 2.0


def test_load_warning_when_the_load_is_above_the_thread_count(tmp_path, monkeypatch):
    loads = iter([[0.5, 0.5, 0.5], [3.5, 1.0, 0.7]])
    monkeypatch.setattr(speedup, "load_average", lambda: next(loads))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    logged = []
    result = speedup.run(preset="cifar10-small", batch=2, steps=1, warmup=0, methods=("lmdeq",), out_dir=None,
                         log=logged.append)
    load = result["load"]
    assert load["loadavg_start"] == [0.5, 0.5, 0.5] and load["loadavg_end"] == [3.5, 1.0, 0.7]
    assert "3.50" in load["warning"] and "2 threads" in load["warning"]
    assert "WARNING" in result["table"] and any("WARNING" in m for m in logged)
    quiet = speedup.load_record([0.2, 0.2, 0.2], [1.9, 1.0, 0.5], 2)
    assert quiet["warning"] is None


def test_sync_free_solve_matches_checked_solve():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    free = mdeq("cifar10-small", **APRIORI_SOLVES).eval()
    with torch.no_grad():
        logits_free = free(x)
    n = free.last_info["f_nstep"]
    # a checked solve that cannot stop early (tol 1e-30) returns the lowest-residual iterate, which for a
    # contraction is the last one
    checked = mdeq("cifar10-small", forward=FixedPoint(max_iter=n, tol=1e-30, stop_mode="rel")).eval()
    checked.load_state_dict(free.state_dict())
    with torch.no_grad():
        logits_checked = checked(x)
    assert checked.last_info["f_nstep"] == n
    assert torch.equal(logits_free, logits_checked)


def test_benchmark_batch_from_an_image_folder(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("LMDEQ_CACHE", str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        folder = tmp_path / "data" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(2):
            pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{i}.png")
    x, y = speedup._batch(10, torch.device("cpu"), str(tmp_path / "data"), seed=0)
    assert x.dtype == torch.float32 and x.shape == (10, 3, 32, 32)
    assert sorted(y.tolist()) == list(range(10))  # a stratified batch: one image per class
    assert -3.0 < float(x.mean()) < 3.0  # normalised, not raw 0..255 pixels


def test_jr_method_times_both_kinds_of_step_every_round():
    """(a-JR): every timed round runs one plain and one JR step; the method's time per round is their mean at
    the JR frequency, the two kinds are kept apart, and a JR step trains on the JR term (a changed loss)."""
    from lmdeq.app.bench.jacobian_steps import combine_rounds

    from ..models.tiny import TINY2

    torch.manual_seed(0)
    config = {**speedup.method_config("original_jr", "cifar10-small"), **TINY2}
    model = mdeq(**config)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    methods = {"original_jr": speedup.Method(model, x, y)}
    out = speedup.measure(methods, torch.device("cpu"), steps=4, warmup=1)["original_jr"]
    assert methods["original_jr"].jr.flags[:10] == [False, True] * 5   # warm-up + timed rounds, then the infer-free rest
    p = out["jr_frequency"]
    assert p == config["jac_loss_freq"] == 0.05
    for t, a, b in zip(out["train_ms_all"], out["train_plain_ms_all"], out["train_jr_ms_all"]):
        assert t == pytest.approx((1 - p) * a + p * b)
    assert out["train_jr_spread"]["n"] == out["train_plain_spread"]["n"] == 4
    row = {"weights": "init", "label": speedup.LABELS["original_jr"], **out}
    assert "x JR step (median" in speedup.jacobian_table([row])
    with pytest.raises(ValueError, match="one of each per round"):
        combine_rounds(methods, {"original_jr": [0.1], "original_jr:jr": [0.1, 0.2]})


def test_a_forced_jr_step_adds_the_jr_term():
    from lmdeq.app.bench.jacobian_steps import JacobianSteps

    from ..models.tiny import TINY2

    torch.manual_seed(0)
    model = mdeq(**{**speedup.method_config("original_jr", "cifar10-small"), **TINY2})
    x = torch.randn(2, 3, 32, 32)
    steps = JacobianSteps(model, 0)
    logits, term = steps.forward(model, x, True)
    assert term is not None and term.requires_grad and float(term.detach()) > 0
    assert steps.forward(model, x, False)[1] is None and steps.flags == [True, False]
    plain = JacobianSteps(mdeq(**{**speedup.method_config("original", "cifar10-small"), **TINY2}), 0)
    assert not plain.enabled and plain.forward(model, x, True)[1] is None


def test_cli_accepts_the_jr_method(tmp_path, capsys):
    rc = main(["bench", "--quick", "--batch", "2", "--steps", "1", "--warmup", "0", "--methods", "original_jr",
               "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "(a-JR) MDEQ + Jacobian reg. (authors' baseline config)" in out
    assert "Jacobian-regularised training steps" in out
    (path,) = tmp_path.glob("speedup-*.json")
    row = json.loads(path.read_text())["rows"][0]
    assert len(row["train_jr_ms_all"]) == len(row["train_plain_ms_all"]) == 1 and row["jr_frequency"] == 0.05


def test_the_result_says_which_weights_each_method_ran_on(result):
    assert result["weights_used"].startswith("Weights: random init (seed 0) for ")
    assert result["weights_used"].endswith("trained: none (no --weights given: init weights only)")
    assert result["weights_used"] in result["table"]
    rows = [{"weights": "init", "weights_source": "random init (seed 0)", "method": m} for m in ("original", "lmdeq")]
    rows.append({"weights": "trained", "weights_source": "runs/c/last.pt", "method": "lmdeq"})
    line = speedup.weights_used(rows, ["runs/c/last.pt"])
    assert line.endswith("trained: (c) lmdeq fast path <- runs/c/last.pt; (a) original MDEQ: no --weights checkpoint "
                         "of its variant")


def test_reserved_memory_is_reported_beside_allocated(result):
    """On CUDA, the peak reserved memory (CUDA-graph pools included) beside the step's allocated peak; None here."""
    assert "peak reserved MiB (process)" in result["table"]
    for r in result["rows"]:
        assert r["peak_train_reserved_mib"] is None and r["held_train_mib"] is None
        assert r["peak_infer_reserved_mib"] is None and r["peak_train_mib"] is None
    assert speedup._peak_step_memory(lambda: None, torch.device("cpu"), "train") == {
        "peak_train_mib": None, "peak_train_reserved_mib": None, "held_train_mib": None}


def test_weights_of_another_preset_and_input_size_are_benchmarked_on_their_shape(tmp_path):
    """A checkpoint trained with another input (mnist-small with --set image_size=32) runs on images of its own
    shape; the preset's own init row runs on the preset's (1x28x28)."""
    from lmdeq.app.train.checkpoint import BEST, save_checkpoint
    from lmdeq.app.train.config import TrainConfig
    from lmdeq.app.train.export import model_checkpoint

    tiny = dict(channels=[8, 8], head_channels=[4, 8], final_channels=16, num_groups=4)
    model = mdeq("mnist-small", image_size=32, **tiny)
    save_checkpoint(tmp_path / "w.pt", model_checkpoint(model, TrainConfig(preset="mnist-small"), 1, 1,
                                                        [str(i) for i in range(10)]), BEST)
    result = speedup.run(preset="mnist-small", batch=2, steps=1, warmup=0, methods=("lmdeq",),
                         weights=[str(tmp_path / "w.pt")], out_dir=None, log=lambda m: None)
    assert [r["weights"] for r in result["rows"]] == ["init", "trained"]
