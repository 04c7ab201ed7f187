"""Every Triton kernel launch the ops make (all dtypes, 1-4 state parts, Anderson histories 1-6, matrix
and convolution power iteration) compiles to an sm_90 cubin: the kernels are checked for Hopper in CI,
where no GPU runs them (see tests/ops/hopper_compile.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmdeq import ops
from lmdeq.ops import backends

from .helpers import DTYPES, randn
from .hopper_compile import distinct, record_launches

pytestmark = pytest.mark.skipif(backends.unavailable_reason("triton", "cpu") is not None,
                                reason=str(backends.unavailable_reason("triton", "cpu")))

KERNELS = {("anderson", "_gram_partial_kernel"), ("anderson", "_gram_finalize_kernel"), ("anderson", "_mix_kernel"),
           ("conv_power_iteration", "_normalize_segments_kernel"), ("fixed_point_update", "_update_kernel"),
           ("fixed_point_update", "_finalize_kernel"), ("power_iteration", "_transposed_kernel"),
           ("power_iteration", "_forward_kernel"), ("power_iteration", "_finalize_kernel")}


def _launch_every_kernel():
    """Small calls that reach every kernel and every specialisation the ops choose."""
    for i, dtype in enumerate(DTYPES):
        parts = [randn((2, 3, 5, 4), dtype, i), randn((2, 7), dtype, i + 1), randn((2, 2, 3), dtype, i + 2),
                 randn((2, 5), dtype, i + 3)]
        for used in range(1, 5):
            ops.fixed_point_update_multi(parts[:used], [p.flip(0) for p in parts[:used]], 0.7)
        for m in range(1, 7):
            X, F = randn((2, m, 9), dtype, i + 4), randn((2, m, 9), dtype, i + 5)
            ops.anderson_gram_row(X, F, m - 1)
            ops.anderson_mix(X, F, torch.full((2, m), 1.0 / m, dtype=dtype), 0.8)
        ops.power_iteration_matrices([randn((4, 3), dtype, i + 6), randn((2, 3, 3, 3), dtype, i + 7)],
                                     [randn((4,), dtype, i + 8), randn((2,), dtype, i + 9)], 2)
        ops.conv_power_iteration([randn((4, 3, 3, 3), dtype, i + 10)], [randn((1, 3, 6, 6), dtype, i + 11)],
                                 [2], [1], 1)


def test_every_launch_compiles_for_sm90(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "triton")
    records = []
    with record_launches(records):
        _launch_every_kernel()
    launches = distinct(records)
    assert {(r["module"].rsplit(".", 1)[-1], r["kernel"]) for r in launches} == KERNELS
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("hopper_compile.py")
    proc = subprocess.run([sys.executable, str(script)], input=json.dumps(launches), capture_output=True,
                          text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert len(results) == len(launches)
    failed = [r for r in results if "error" in r]
    assert not failed, f"{len(failed)} of {len(results)} launches do not compile for sm_90: {failed[:3]}"
    assert all(r["cubin_bytes"] > 0 for r in results)
