"""The benchmark figures (issue 27 item 6), on the committed results and on made-up ones: every number written on a
figure comes from the result (the headline ratios, the phase breakdown of a --profile run, the load warning when
the load average exceeded the thread count, torch.compile against the fused kernels), titles and notes are
wrapped to the figure's width, and each figure is a PNG."""
import copy
import json

import pytest

from lmdeq.app.bench import kernels, profile, report, speedup, tta_report

from .scripts import ROOT

RESULTS = ROOT / "benchmarks" / "results"
PNG = b"\x89PNG\r\n\x1a\n"
WARNING = "machine load 3.08 (1-minute average, start 1.07, end 3.08) is above the 1 threads used"


def _json(name):
    return json.loads((RESULTS / name).read_text())


def test_speedup_notes_are_the_results_ratios_and_say_what_the_whiskers_are():
    result = _json("speedup-cpu-intel.json")
    notes = speedup.chart_notes(result)
    a_c = result["ratios"]["trained"]["train a/c"]
    assert any(f"a/c {a_c['median']:.2f}x ({a_c['min']:.2f}-{a_c['max']:.2f})" in n and "trained" in n for n in notes)
    assert any("whiskers: min-max" in n and f"median of {result['steps']} interleaved rounds" in n for n in notes)
    assert not any("WARNING" in n for n in notes)   # the load stayed below the threads
    loaded = copy.deepcopy(result)
    loaded["load"]["warning"] = WARNING
    assert speedup.chart_notes(loaded)[-1] == "WARNING: " + WARNING


def test_a_profile_result_draws_the_phase_breakdown(tmp_path, monkeypatch):
    result = _json("speedup-cpu-intel-profile.json")
    for r in result["rows"]:
        parts = profile.segments(r["profile"]["phases_ms"])
        assert [name for name, _ in profile.SEGMENTS] == list(parts)
        assert sum(parts.values()) == pytest.approx(r["profile"]["busy_ms"])
        assert parts["forward solve"] >= r["profile"]["phases_ms"]["forward solve"]
    seen = {}
    real = speedup.phase_chart

    def spy(path, title, profiles, notes):
        seen.update(title=title, names=[n for n, _ in profiles], notes=notes)
        return real(path, title, profiles, notes)

    monkeypatch.setattr(speedup, "phase_chart", spy)
    path = speedup.figure(result, str(tmp_path / "p.png"))
    assert open(path, "rb").read(8) == PNG
    assert seen["names"] == ["init\n(a) MDEQ", "init\n(b) authors'", "init\n(c) lmdeq"]
    assert "Where a training step's time goes" in seen["title"] and any("a/c 8.85x" in n for n in seen["notes"])
    plain = {**result, "rows": [{**r, "profile": None} for r in result["rows"]]}
    monkeypatch.setattr(speedup, "phase_chart", lambda *a: pytest.fail("no profile: the timing chart"))
    assert open(speedup.figure(plain, str(tmp_path / "t.png")), "rb").read(8) == PNG


def test_time_to_accuracy_figure_warns_when_the_load_exceeded_the_threads(tmp_path):
    result = _json("time_to_accuracy-cpu-intel-variants.json")
    assert result["env"]["threads"] == 1 and result["load_average_end"][0] > 1
    (note,) = tta_report.load_notes(result)
    assert note == "WARNING: " + WARNING + (": other work competed for the cores, so these timings are not those "
                                            "of a quiet machine")
    resumed = _json("time_to_accuracy-cpu-amd-epyc-8ep.json")   # four sittings: the worst one is named
    (note,) = tta_report.load_notes(resumed)
    assert note.startswith("WARNING: 4 of 4 sittings, the worst (sitting 1): machine load 1.78")
    quiet = {**result, "load_average_start": [0.5] * 3, "load_average_end": [0.9] * 3}
    assert tta_report.load_notes(quiet) == []
    assert open(tta_report.figure(result, str(tmp_path / "c.png")), "rb").read(8) == PNG


def test_kernel_table_says_both_speed_ups_and_where_torch_compile_wins():
    result = _json("kernels-cpu-intel.json")
    table = kernels.markdown(result)
    mix = next(c for c in kernels.compile_comparison(result) if c["case"] == ("anderson_mix", "large", 128, "float32"))
    row = next(line for line in table.splitlines() if line.startswith("| op 2: Anderson mix, MDEQ-large B=128"))
    assert f"({mix['fused_x']:.2f}x)" in row and f"({mix['compile_x']:.2f}x)" in row
    assert f"cpu: {mix['ratio']['median']:.2f}" in row and mix["ratio"]["median"] < 1   # torch.compile is faster
    wins = [c for c in kernels.compile_comparison(result) if c["ratio"]["median"] < 1]
    assert f"in {len(wins)} of the 12 cases with a compile baseline" in table
    assert (RESULTS / "kernels-cpu-intel.md").read_text() == table   # the committed table is this JSON's


def test_titles_and_notes_are_wrapped_to_the_figure():
    long = "x" * 40 + " " + "y" * 300
    lines = report._wrapped([long, "short"], 6.0, 8.0)
    assert lines[-1] == "short" and all(len(line) <= int(6.0 * 72 / (0.55 * 8.0)) for line in lines[:-1])
    fig, axes = report.figure("t " * 200, (6.0, 3.0), ["n " * 200], ncols=2)
    assert len(axes) == 2 and fig._suptitle.get_text().count("\n") >= 2
    import matplotlib.pyplot as plt

    plt.close(fig)
