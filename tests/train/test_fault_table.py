"""scripts/fault_table.py on a representative subset (one or more cases of each kind that needs no training),
and its classification of outcomes: a traceback, a silent success and a leftover are each caught."""
import pytest

from tests.bench.scripts import load_script

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
