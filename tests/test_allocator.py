"""CPU allocator tuning (lmdeq.app.allocator): lmdeq's own processes pin glibc's thresholds, ``import lmdeq``
does not, and the effect is the one claimed: steady-state training steps stop page-faulting."""
import json
import os
import platform
import subprocess
import sys

import pytest

from lmdeq.app import allocator

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt tuning applies to Linux/glibc only")

# Page faults per steady-state training step of the Lipschitz MDEQ-small (batch 16), in a fresh process.
_FAULTS = r"""
import json, resource, sys, torch
from lmdeq.app.allocator import allocator_state, configure_process
configure_process()
from lmdeq.models import mdeq
torch.set_num_threads(1); torch.manual_seed(0)
model = mdeq("cifar10-small")
opt = torch.optim.Adam(model.parameters())
x = torch.randn(16, 3, 32, 32); y = torch.randint(0, 10, (16,))
def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step(); model.constraint_step()
for _ in range(3):
    step()
faults = []
for _ in range(4):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"faults": sorted(faults)[1:3], "state": allocator_state()}))
"""


def _run(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in allocator._GLIBC_ENV and k != allocator.ENV_VAR}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_configured_process_stops_page_faulting_and_the_opt_out_restores_defaults():
    tuned = _run(_FAULTS)
    default = _run(_FAULTS, LMDEQ_TUNE_ALLOCATOR="0")
    assert tuned["state"]["tuned"] and tuned["state"]["source"] == "mallopt"
    assert not default["state"]["tuned"] and default["state"]["source"] == "off"
    # Middle two of four steady-state steps. Measured here: a few faults per step tuned, ~10,000-20,000 with
    # glibc's defaults (one per fresh 4 KiB page).
    assert max(tuned["faults"]) < 0.1 * min(default["faults"]), (tuned, default)


def test_import_lmdeq_leaves_the_allocator_alone_and_the_opt_in_tunes_it():
    code = ("import json, lmdeq; from lmdeq.app.allocator import allocator_state, tune_cpu_allocator; "
            "before = allocator_state(); after = tune_cpu_allocator(); print(json.dumps([before, after]))")
    before, after = _run(code)
    assert before["source"] == "default" and not before["tuned"]
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert after["tuned"] and after["mmap_threshold"] == allocator.DEFAULT_MMAP_THRESHOLD
    else:
        assert after["source"] == "unsupported"


def test_lmdeq_processes_configure_the_allocator_first():
    code = ("import json, contextlib, io; from lmdeq.app import cli; from lmdeq.app.allocator import allocator_state\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out: cli.main(['info'])\n"
            "print(json.dumps([allocator_state(), 'CPU allocator:' in out.getvalue()]))")
    state, reported = _run(code)
    assert reported
    assert state["source"] in ("mallopt", "unsupported")
    state, _ = _run(code, MALLOC_MMAP_THRESHOLD_="65536")   # glibc's own variable stands
    assert state["source"] == "environment" and state["malloc_mmap_threshold"] == 65536


def test_bad_values_are_refused_naming_the_argument(monkeypatch):
    with pytest.raises(ValueError, match="mmap_threshold"):
        allocator.tune_cpu_allocator(mmap_threshold=-1)
    with pytest.raises(ValueError, match="mmap_threshold"):
        allocator.tune_cpu_allocator(mmap_threshold=2**30)
    with pytest.raises(ValueError, match="trim_threshold"):
        allocator.tune_cpu_allocator(trim_threshold=2**31)
    monkeypatch.setenv(allocator.ENV_VAR, "yes")
    with pytest.raises(ValueError, match=allocator.ENV_VAR):
        allocator.configure_process()


@pytest.mark.parametrize("value", ["garbage", "-1", "1e6", " ", str(2 ** 64)])
def test_glibc_thresholds_that_are_no_byte_count_are_refused_by_name(value, monkeypatch):
    """glibc ignores such a value; lmdeq must neither report it as a setting nor read it with a traceback."""
    from lmdeq.errors import ConfigError

    monkeypatch.setattr(allocator, "_state", {})   # this process's own tuning (by an earlier test) not in the way
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", value)
    with pytest.raises(ConfigError, match="MALLOC_TRIM_THRESHOLD_"):
        allocator.allocator_state()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4096")
    assert allocator.allocator_state()["malloc_trim_threshold"] == 4096
