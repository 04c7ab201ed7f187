"""pytest-benchmark suite of the fused ops against their eager composites (small MDEQ-like sizes).

    pytest benchmarks/bench_kernels.py                       # timings
    pytest benchmarks/bench_kernels.py --benchmark-disable   # smoke run (CI): each case once

The full study (sizes of MDEQ-small/large at batch 32/128, torch.compile, GB/s, charts) is
benchmarks/kernels.py.
"""
import pytest
import torch

from lmdeq import ops
from lmdeq.ops import reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(4, 24, 32, 32), (4, 24, 16, 16)]  # MDEQ-small state at batch 4
IMPLS = {"eager": reference, "fused": ops}


def _state(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(DEVICE) for s in SHAPES]


@pytest.mark.parametrize("impl", IMPLS)
def test_fixed_point_update_multi(benchmark, impl):
    zs, fzs = _state(0), _state(1)
    outs, res, _ = benchmark(IMPLS[impl].fixed_point_update_multi, zs, fzs, 0.7)
    assert torch.allclose(res, reference.fixed_point_update_multi(zs, fzs, 0.7)[1], rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_anderson_gram_row_and_mix(benchmark, impl):
    X = torch.randn(4, 6, 30720, device=DEVICE)
    Fh = torch.randn_like(X)
    alpha = torch.full((4, 6), 1 / 6, device=DEVICE)
    mod = IMPLS[impl]
    H, x = benchmark(lambda: (mod.anderson_gram_row(X, Fh, 5), mod.anderson_mix(X, Fh, alpha, 0.7)))
    assert torch.allclose(H, reference.anderson_gram_row(X, Fh, 5), rtol=1e-4)
    assert torch.allclose(x, reference.anderson_mix(X, Fh, alpha, 0.7), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_conv_power_iteration(benchmark, impl):
    g = torch.Generator().manual_seed(2)
    ws = [torch.randn(s, generator=g).to(DEVICE) * 0.1 for s in [(120, 24, 3, 3), (24, 120, 3, 3), (24, 24, 3, 3)]]
    vs = [torch.randn(s, generator=g).to(DEVICE) for s in [(1, 24, 32, 32), (1, 120, 16, 16), (1, 24, 32, 32)]]
    sigmas, _ = benchmark(IMPLS[impl].conv_power_iteration, ws, vs, [1, 1, 2], [1, 1, 1], 2)
    ref = reference.conv_power_iteration(ws, vs, [1, 1, 2], [1, 1, 1], 2)[0]
    assert torch.allclose(sigmas, ref, rtol=1e-3)
