"""scripts/fault_table.py on a representative subset (one or more cases of each kind that needs no training, and
of each generated fuzz category of scripts/fault_fuzz.py, with the outcome each must have), its classification of
outcomes (a traceback, a silent success and a leftover are each caught), the fuzz judges (a wrong gradient, a
nonsense value that reached the work, an error not naming the flag are each caught) and the generators' coverage."""
import pytest

from tests.bench.scripts import ROOT, load_script

SUBSET = [
    "train --epochs 0", "train --lr nan", "train --device tpu", "train --set s=5 fails before any data is read",
    "train --set dropuot=0.1", "train --data a one-class ImageFolder", "train --data 4 classes for a 10-way head set explicitly",
    "train --data with unreadable images --strict", "train --data only unreadable images", "train --cache-dir a file",
    "train --data truncated.tar.gz", "train --data bomb.tar.gz (member over the cap)", "train --data traversal.tar.gz",
    "train --data absolute.tar.gz", "train --data symlink.tar.gz", "train --resume a pickle payload",
    "train --out a file", "train that fails before epoch 1", "eval --checkpoint a pickle payload",
    "eval --checkpoint random bytes", "bench --batch 0", "bench --steps -1", "bench --warmup -1",
    "bench --device tpu", "bench --preset nope", "bench --weights {w}/payload.pt", "bench solvers --repeats 0",
]


@pytest.fixture(scope="module")
def table():
    return load_script("scripts/fault_table.py")


def test_the_subset_gives_only_clear_errors(table, tmp_path):
    import fault_cases

    by_name = {c.name: c for c in fault_cases.cases()}
    assert set(SUBSET) <= set(by_name), sorted(set(SUBSET) - set(by_name))
    results = table.run_cases([by_name[n] for n in SUBSET], tmp_path, log=lambda s: None)
    bad = [(r["name"], r["outcome"], r["detail"]) for r in results if r["outcome"] != "clear"]
    assert bad == []
    rows = {r["category"]: r for r in table.summary_rows(results)}
    assert rows["total"]["tried"] == len(SUBSET) and rows["total"]["security"] == rows["total"]["data lost"] == 0
    assert "| total | 27 | 27 |" in table.table(results)


def test_the_classification_catches_failures(table):
    import fault_cases

    error = fault_cases.Case("x", "c", [], expect="error", needle="--epochs")
    crash = "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n"
    assert table.classify(error, 1, crash, None)[0] == "traceback"
    assert table.classify(error, 0, "", None)[0] == "silent"
    assert table.classify(error, 2, "lmdeq train: error: something else\n", None)[0] == "other"
    assert table.classify(error, 2, "usage: ...\nlmdeq train: error: argument --epochs: bad\n", None)[0] == "clear"
    assert table.classify(error, None, "", None) == ("hang", "timed out (killed)")   # killed at its timeout
    assert table.classify(error, 2, "lmdeq: error: --epochs", ("security", "payload ran"))[0] == "security"
    warn = fault_cases.Case("y", "c", [], expect="warn", needle="skipped")
    assert table.classify(warn, 0, "lmdeq train: warning: data: skipped 1 of 2\n", None)[0] == "clear"
    assert table.classify(warn, 0, "all fine\n", None)[0] == "silent"
    assert table.classify(fault_cases.Case("z", "c", [], expect="ok"), 0, "", None)[0] == "handled"


def test_the_checks_see_damage(tmp_path):
    import fault_cases

    (tmp_path / "w").mkdir()
    w = tmp_path / "w"
    assert fault_cases.nothing_escaped(w) is None
    (w / fault_cases.PAYLOAD_MARK).write_text("")
    assert fault_cases.nothing_escaped(w)[0] == "security"
    (w / fault_cases.PAYLOAD_MARK).unlink()
    (tmp_path / "escaped-traversal").write_text("x")
    assert fault_cases.cache_clean(w)[0] == "security"
    (tmp_path / "escaped-traversal").unlink()
    (w / "cache" / ".set-partial-1-abc").mkdir(parents=True)
    assert fault_cases.cache_clean(w)[0] == "other"


# One or more generated cases of each fuzz category (scripts/fault_fuzz.py), with the outcome each must have.
FUZZ_SUBSET = {
    "lmdeq train --epochs zero": "clear", "lmdeq train --lr nan": "clear", "lmdeq train --data unicode": "clear",
    "lmdeq train --seed zero": "handled", "lmdeq eval --limit huge": "clear", "lmdeq bench --steps NUL": "clear",
    "lmdeq bench --repeats negative": "clear", "lmdeq bench --evals-per-epoch empty": "clear",
    "LMDEQ_TUNE_ALLOCATOR garbage": "clear", "LMDEQ_BACKEND unicode": "clear", "RANK huge": "clear",
    "LMDEQ_BACKEND empty": "handled",
    "eval best.pt: model_state removed": "clear", "eval best.pt: record a None": "handled",
    "train --resume last.pt: optimizer a text": "clear",
    "train on a folder with: FIFO": "clear", "train on a folder with: dangling symlink": "clear",
    "train on a folder with: directory symlink to another class": "clear",
    "train on a folder with: palette PNG": "handled", "train on a folder with: 1x1 image": "clear",
    ".backward() through deq_solve (Implicit)": "handled",
    "forward-mode AD (dual numbers) through deq_solve (Implicit)": "clear",
    "forward-mode AD (dual numbers) through DEQ (JFB)": "handled",
    "torch.autograd.functional.jacobian(vectorize=True) through deq_solve (Implicit)": "clear",
    "double backward (create_graph) through DEQ (Phantom)": "handled",
    "torch.func.linearize through deq_solve (JFB)": "clear",
    "torch.autograd.gradcheck (float64) through deq_solve (Implicit)": "handled",
}


def test_a_subset_of_each_fuzz_category_is_clear_or_handled(table, tmp_path):
    import fault_fuzz

    ensure = table.fixtures(tmp_path)
    by_name = {c.name: c for c in table.all_cases(tmp_path, ensure)}
    assert set(FUZZ_SUBSET) <= set(by_name), sorted(set(FUZZ_SUBSET) - set(by_name))
    results = table.run_cases([by_name[n] for n in FUZZ_SUBSET], tmp_path, log=lambda s: None, ensure=ensure)
    got = {r["name"]: (r["outcome"], r["detail"]) for r in results}
    wrong = {n: got[n] for n in FUZZ_SUBSET if got[n][0] != FUZZ_SUBSET[n]}
    assert not wrong, wrong
    cats = {r["category"] for r in results}
    assert cats == {fault_fuzz.CLI, fault_fuzz.ENV, fault_fuzz.CKPT, fault_fuzz.DATA, fault_fuzz.AUTOGRAD}
    assert "--epochs" in got["lmdeq train --epochs zero"][1] and "LMDEQ_BACKEND" in got["LMDEQ_BACKEND unicode"][1]
    assert "zz-dangling.png" in got["train on a folder with: dangling symlink"][1]


def test_every_flag_value_field_and_variable_is_enumerated(table):
    """The generators cover every value flag of every parser with every hostile value, every LMDEQ_ variable the
    library's source names, every data-file kind and every transform with each backward and entry."""
    import re

    import fault_fuzz

    names = {c.name for c in fault_fuzz.cli_cases()}
    for pname, parser in fault_fuzz.parsers().items():
        for action in fault_fuzz.value_flags(parser):
            assert {f"{pname} {action.option_strings[0]} {label}" for label, _ in fault_fuzz.HOSTILE_VALUES} <= names
    source = "\n".join(p.read_text() for p in (ROOT / "lmdeq").rglob("*.py"))
    globals_ = set(re.findall(r"^(LMDEQ_[A-Z_]+) =", source, re.M))   # names of module globals, not variables
    named = set(re.findall(r"[\"'](LMDEQ_[A-Z_]+)[\"']", source)) - globals_
    assert named and named <= set(fault_fuzz.ENV_VARIABLES), named - set(fault_fuzz.ENV_VARIABLES)
    assert len(fault_fuzz.env_cases()) == len(fault_fuzz.ENV_VARIABLES) * len(fault_fuzz.ENV_VALUES)
    assert len(fault_fuzz.data_file_cases()) == len(fault_fuzz.data_files())
    per = len(fault_fuzz.ENTRIES) * len(fault_fuzz.BACKWARDS)
    assert len(fault_fuzz.autograd_cases()) == per * len(fault_fuzz.TRANSFORMS) - \
        len(fault_fuzz.EXACT_ONLY) * len(fault_fuzz.ENTRIES) * (len(fault_fuzz.BACKWARDS) - 1)
    damages = list(fault_fuzz.checkpoint_damages({"epoch": 3, "run_id": "abc"}))
    assert [(f, h) for f, h, _ in damages] == [("epoch", "removed"), ("epoch", "a text"), ("epoch", "a None"),
                                                ("epoch", "a list"), ("epoch", "a dict"), ("epoch", "a tensor"),
                                                ("run_id", "removed"), ("run_id", "a int"), ("run_id", "a None"),
                                                ("run_id", "a list"), ("run_id", "a dict"), ("run_id", "a tensor")]


def test_the_fuzz_judges_catch_failures(table):
    import fault_fuzz

    flag = fault_fuzz._flag_judge("--resume", "resume", "CHECKPOINT")
    reached = f"{fault_fuzz.ACCEPTED} --resume='x'\n{fault_fuzz.REACHED} training\n"
    assert flag(None, 2, "", "usage: ...\nlmdeq train: error: checkpoint: x does not exist\n")[0] == "clear"
    assert flag(None, 2, "", "lmdeq train: error: something without the name\n")[0] == "other"
    assert flag(None, 0, reached, "")[0] == "handled"
    assert flag(None, 0, f"{fault_fuzz.ACCEPTED} --resume=''\n", "")[0] == "other"   # exit 0, no work reached
    assert flag(None, 0, reached + f"{fault_fuzz.NONSENSE} the parser accepted ''\n", "")[0] == "silent"
    assert fault_fuzz._flag_judge("--out", "out", None)(None, 2, "", "x: error: without a word\n")[0] == "other"
    env = fault_fuzz._env_judge("LMDEQ_BACKEND", "garbage", "backend")
    assert env(None, 0, "", "")[0] == "silent"
    assert env(None, 2, "", "lmdeq: error: LMDEQ_BACKEND='garbage'")[0] == "clear"
    assert fault_fuzz._env_judge("LMDEQ_BACKEND", "cpu", "backend")(None, 0, "", "")[0] == "handled"
    assert fault_fuzz._autograd_judge(None, 0, f"{fault_fuzz.PROBLEM} relative error 1e-1\n", "")[0] == "silent"
    assert fault_fuzz._autograd_judge(None, 2, "", "lmdeq: error: not supported\n")[0] == "clear"
    assert fault_fuzz.nonsense_in(([1, {"a": (2, float("nan"))}],), "args") is not None
    assert fault_fuzz.nonsense_in(([1, {"a": (2, 1e300)}], "ok", None), "args") is not None
    assert fault_fuzz.nonsense_in(([1, {"a": (2, 0.5)}], "", None), "args") is None
