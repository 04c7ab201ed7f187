"""Every Triton kernel launch the ops make (all dtypes, 1-4 state parts, Anderson histories 1-6, matrix
and convolution power iteration; odd sizes and sizes that are multiples of 16, batch 1 and 2) compiles to
an sm_90 cubin, both with the general signature and specialised as Triton's JIT specialises it on a GPU
(ints equal to 1 as constexprs, 16-divisible ints and 16-byte-aligned pointers with tt.divisibility): the
kernels are checked for Hopper in CI, where no GPU runs them (see tests/ops/hopper_compile.py)."""
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
from .hopper_compile import distinct, record_launches, specialisation

pytestmark = pytest.mark.skipif(backends.unavailable_reason("triton", "cpu") is not None,
                                reason=str(backends.unavailable_reason("triton", "cpu")))

KERNELS = {("anderson", "_gram_partial_kernel"), ("anderson", "_gram_finalize_kernel"), ("anderson", "_mix_kernel"),
           ("conv_power_iteration", "_normalize_segments_kernel"), ("fixed_point_update", "_update_kernel"),
           ("fixed_point_update", "_finalize_kernel"), ("power_iteration", "_transposed_kernel"),
           ("power_iteration", "_forward_kernel"), ("power_iteration", "_finalize_kernel")}


def _launch_every_kernel():
    """Small calls that reach every kernel and every specialisation the ops choose: odd sizes at batch 2,
    and batch 1 with sizes that are multiples of 16 (ints equal to 1 and 16-divisible ints and strides)."""
    for i, dtype in enumerate(DTYPES):
        for B, shapes, n, ms in ((2, [(3, 5, 4), (7,), (2, 3), (5,)], 9, range(1, 7)),
                                 (1, [(16, 2, 2), (32,), (4, 4), (48,)], 32, (1, 2, 4, 6))):  # every M_PAD
            parts = [randn((B, *s), dtype, i + j) for j, s in enumerate(shapes)]
            for used in range(1, 5):
                ops.fixed_point_update_multi(parts[:used], [p.flip(-1) for p in parts[:used]], 0.7)
            for m in ms:
                X, F = randn((B, m, n), dtype, i + 4), randn((B, m, n), dtype, i + 5)
                ops.anderson_gram_row(X, F, m - 1)
                ops.anderson_mix(X, F, torch.full((B, m), 1.0 / m, dtype=dtype), 0.8)
        ops.power_iteration_matrices([randn((4, 3), dtype, i + 6), randn((2, 3, 3, 3), dtype, i + 7)],
                                     [randn((4,), dtype, i + 8), randn((2,), dtype, i + 9)], 2)
        ops.power_iteration_matrices([randn((16, 32), dtype, i + 6)], [randn((16,), dtype, i + 8)], 1)
        ops.conv_power_iteration([randn((4, 3, 3, 3), dtype, i + 10)], [randn((1, 3, 6, 6), dtype, i + 11)],
                                 [2], [1], 1)


def test_specialisation_mirrors_tritons_jit():
    """Our reading of the JIT's value specialisation agrees with Triton's own (where it exposes it)."""
    native = pytest.importorskip("triton._C.libtriton").__dict__.get("native_specialize_impl")
    if native is None:
        pytest.skip("this Triton has no native_specialize_impl")
    from triton.backends.compiler import BaseBackend

    x = torch.zeros(64)
    for value in (x, x[1:], 1, 0, 16, 17, 48, -16, 2 ** 33, 2 ** 33 + 1, 0.5):
        kind, typ = specialisation(value)
        expected = native(BaseBackend, value, False, True, True)
        if kind == "constexpr":
            assert expected == ("constexpr", 1), value
        else:
            assert expected == (typ, "D" if kind == "D" else ("" if isinstance(value, (int, torch.Tensor)) else None)), \
                (value, expected)


def test_every_launch_compiles_for_sm90(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "triton")
    records = []
    with record_launches(records):
        _launch_every_kernel()
    launches = distinct(records)
    assert {(r["module"].rsplit(".", 1)[-1], r["kernel"]) for r in launches} == KERNELS
    specialised = [r for r in launches if r["divisible"] or
                   any(v == "constexpr" and r["constexprs"][k] == 1 and k.islower() for k, v in r["signature"].items())]
    for kernel in {r["kernel"] for r in launches}:  # every kernel has specialised variants to compile
        assert any(r["kernel"] == kernel and r["divisible"] for r in specialised), kernel
    assert any(r["constexprs"].get("m") == 1 for r in launches) and any("sxm" in r["divisible"] for r in launches)
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
