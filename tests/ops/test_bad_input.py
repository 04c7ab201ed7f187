"""Bad input: clear errors naming the op and the argument, from Python (TypeError / ValueError) and
from the C++ kernels called directly (TORCH_CHECK -> RuntimeError)."""
import pytest
import torch

from lmdeq import ops
from lmdeq.ops import backends

Z = torch.randn(2, 3)
X = torch.randn(2, 3, 5)
W = torch.randn(4, 3, 3, 3)
V = torch.randn(1, 3, 5, 5)

PY_CASES = [
    # (call, exception, fragments the message must contain)
    (lambda: ops.fixed_point_update(Z, torch.randn(2, 4), 0.5), ValueError, ["fixed_point_update", "'fz'", "shape"]),
    (lambda: ops.fixed_point_update(Z, Z.double(), 0.5), TypeError, ["fixed_point_update", "'fz'", "dtype"]),
    (lambda: ops.fixed_point_update(Z, Z.to("meta"), 0.5), ValueError, ["fixed_point_update", "'fz'", "meta"]),
    (lambda: ops.fixed_point_update(Z.long(), Z.long(), 0.5), TypeError, ["fixed_point_update", "'z'", "int64"]),
    (lambda: ops.fixed_point_update(torch.tensor(1.0), torch.tensor(2.0), 0.5), ValueError,
     ["fixed_point_update", "'z'", "batch"]),
    (lambda: ops.fixed_point_update(Z, Z.tolist(), 0.5), TypeError, ["fixed_point_update", "'fz'", "tensor"]),
    (lambda: ops.fixed_point_update(Z, Z, "0.5"), TypeError, ["fixed_point_update", "'tau'"]),
    (lambda: ops.fixed_point_update(Z, Z, float("nan")), ValueError, ["fixed_point_update", "'tau'", "finite"]),
    (lambda: ops.fixed_point_update_multi([], [], 0.5), ValueError, ["fixed_point_update_multi", "'zs'"]),
    (lambda: ops.fixed_point_update_multi([Z], [Z, Z], 0.5), ValueError, ["fixed_point_update_multi", "lengths"]),
    (lambda: ops.fixed_point_update_multi([Z, torch.randn(3, 3)], [Z, torch.randn(3, 3)], 0.5), ValueError,
     ["fixed_point_update_multi", "'zs[1]'", "batch size"]),
    (lambda: ops.fixed_point_update_multi([Z, Z.half()], [Z, Z.half()], 0.5), TypeError,
     ["fixed_point_update_multi", "'zs[1]'", "dtype"]),
    (lambda: ops.fixed_point_update_multi(Z, Z, 0.5), TypeError, ["fixed_point_update_multi", "'zs'", "list"]),
    (lambda: ops.anderson_gram_row(X, X[:, :2], 0), ValueError, ["anderson_gram_row", "'F'", "shape"]),
    (lambda: ops.anderson_gram_row(Z, Z, 0), ValueError, ["anderson_gram_row", "'X'", "3-d"]),
    (lambda: ops.anderson_gram_row(X, X, 3), ValueError, ["anderson_gram_row", "'k'", "[0, 3)"]),
    (lambda: ops.anderson_gram_row(X, X, 1.0), TypeError, ["anderson_gram_row", "'k'", "int"]),
    (lambda: ops.anderson_gram_row(X.int(), X.int(), 0), TypeError, ["anderson_gram_row", "'X'", "int32"]),
    (lambda: ops.anderson_mix(X, X, torch.ones(2, 4), 0.5), ValueError, ["anderson_mix", "'alpha'", "(2, 3)"]),
    (lambda: ops.anderson_mix(X, X, torch.ones(2, 3, dtype=torch.long), 0.5), TypeError, ["anderson_mix", "'alpha'"]),
    (lambda: ops.anderson_mix(X, X.bfloat16(), torch.ones(2, 3), 0.5), TypeError, ["anderson_mix", "'F'", "dtype"]),
    (lambda: ops.power_iteration_matrices([torch.randn(4, 3)], [torch.randn(3)], 1), ValueError,
     ["power_iteration_matrices", "'us[0]'", "(4,)"]),
    (lambda: ops.power_iteration_matrices([torch.randn(4)], [torch.randn(4)], 1), ValueError,
     ["power_iteration_matrices", "'weights[0]'", "2 dims"]),
    (lambda: ops.power_iteration_matrices([torch.randn(4, 3)], [torch.randn(4)], 0), ValueError,
     ["power_iteration_matrices", "'n_iter'", ">= 1"]),
    (lambda: ops.power_iteration_matrices([torch.randn(4, 3)], [torch.randn(4).double()], 1), TypeError,
     ["power_iteration_matrices", "'us[0]'", "dtype"]),
    (lambda: ops.power_iteration_matrices([torch.randn(4, 3), torch.randn(2, 2).double()],
                                          [torch.randn(4), torch.randn(2).double()], 1), TypeError,
     ["power_iteration_matrices", "'weights[1]'", "dtype"]),
    (lambda: ops.conv_power_iteration([W], [V], [1], [1, 1], 1), ValueError, ["conv_power_iteration", "lengths"]),
    (lambda: ops.conv_power_iteration([W], [torch.randn(1, 2, 5, 5)], [1], [1], 1), ValueError,
     ["conv_power_iteration", "'vs[0]'", "(1, 3, H, W)"]),
    (lambda: ops.conv_power_iteration([W[0]], [V], [1], [1], 1), ValueError, ["conv_power_iteration", "'weights[0]'",
                                                                             "4-d"]),
    (lambda: ops.conv_power_iteration([W], [V], [0], [1], 1), ValueError, ["conv_power_iteration", "'strides[0]'"]),
    (lambda: ops.conv_power_iteration([W], [V], [1], [-1], 1), ValueError, ["conv_power_iteration", "'paddings[0]'"]),
    (lambda: ops.conv_power_iteration([W], [torch.randn(1, 3, 1, 1)], [1], [0], 1), ValueError,
     ["conv_power_iteration", "'vs[0]'", "smaller"]),
    (lambda: ops.conv_power_iteration([W], [V], [1], [1], -1), ValueError, ["conv_power_iteration", "'n_iter'"]),
    (lambda: ops.conv_power_iteration([W.long()], [V.long()], [1], [1], 1), TypeError,
     ["conv_power_iteration", "'weights[0]'", "int64"]),
]


@pytest.mark.parametrize("call,exc,fragments", PY_CASES, ids=[f"case{i}" for i in range(len(PY_CASES))])
def test_python_errors_name_op_and_argument(call, exc, fragments):
    with pytest.raises(exc) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


needs_ext = pytest.mark.skipif(backends.extension() is None, reason="lmdeq._C not built")
C = torch.ops.lmdeq_C if backends.extension() is not None else None

CPP_CASES = [
    (lambda: C.fixed_point_update_multi([Z], [torch.randn(2, 4)], 0.5),
     ["lmdeq_C::fixed_point_update_multi", "'fzs[0]'", "shape"]),
    (lambda: C.fixed_point_update_multi([Z], [Z.double()], 0.5), ["lmdeq_C::fixed_point_update_multi", "'fzs[0]'", "dtype"]),
    (lambda: C.fixed_point_update_multi([Z.long()], [Z.long()], 0.5),
     ["lmdeq_C::fixed_point_update_multi", "'zs[0]'", "float32"]),
    (lambda: C.fixed_point_update_multi([torch.tensor(1.0)], [torch.tensor(1.0)], 0.5),
     ["fixed_point_update_multi", "'zs[0]'", "batch"]),
    (lambda: C.fixed_point_update_multi([Z, torch.randn(3, 2)], [Z, torch.randn(3, 2)], 0.5),
     ["fixed_point_update_multi", "'zs[1]'", "batch size"]),
    (lambda: C.anderson_gram_row(Z, Z, 0), ["lmdeq_C::anderson_gram_row", "'X'", "3-d"]),
    (lambda: C.anderson_gram_row(X, X, 5), ["lmdeq_C::anderson_gram_row", "'k'"]),
    (lambda: C.anderson_mix(X, X, torch.ones(3, 2), 0.5), ["lmdeq_C::anderson_mix", "'alpha'"]),
    (lambda: C.anderson_mix(X, X.half(), torch.ones(2, 3), 0.5), ["lmdeq_C::anderson_mix", "'F'", "dtype"]),
    (lambda: C.power_iteration_matrices([torch.randn(4, 3)], [torch.randn(3)], 1),
     ["lmdeq_C::power_iteration_matrices", "'us[0]'"]),
    (lambda: C.power_iteration_matrices([torch.randn(4, 3)], [torch.randn(4)], 0),
     ["lmdeq_C::power_iteration_matrices", "'n_iter'"]),
    (lambda: C.conv_power_iteration([W], [torch.randn(1, 2, 5, 5)], [1], [1], 1),
     ["lmdeq_C::conv_power_iteration", "'vs[0]'"]),
    (lambda: C.conv_power_iteration([W], [V], [1], [1, 0], 1), ["lmdeq_C::conv_power_iteration", "lengths"]),
    (lambda: C.conv_power_iteration([W], [V], [0], [1], 1), ["lmdeq_C::conv_power_iteration", "'strides[0]'"]),
]


@needs_ext
@pytest.mark.parametrize("call,fragments", CPP_CASES, ids=[f"case{i}" for i in range(len(CPP_CASES))])
def test_cpp_checks_name_op_and_argument(call, fragments):
    with pytest.raises(RuntimeError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"



needs_triton = pytest.mark.skipif(backends.unavailable_reason("triton", "cpu") is not None,
                                  reason=str(backends.unavailable_reason("triton", "cpu")))


@needs_triton
def test_triton_grid_limit_is_a_clear_error(monkeypatch):
    """The Triton kernels put chunks of a sample on the grid's second axis (at most 65,535 on CUDA): beyond
    it they refuse with the op's name, as the CUDA kernels do, instead of failing to launch. The limit is
    lowered here so that small tensors reach it; one chunk below it still runs."""
    kernels = backends.triton_kernels()
    monkeypatch.setenv(backends.ENV_VAR, "triton")
    monkeypatch.setattr(kernels.anderson, "MAX_GRID_Y", 1)
    monkeypatch.setattr(kernels.fixed_point_update, "MAX_GRID_Y", 1)
    _, block_n = kernels.anderson._blocks(4)
    Xs = torch.randn(1, 4, block_n + 1)
    with pytest.raises(ValueError, match=r"anderson_gram_row: .* n = %d elements .*2 chunks > 1" % (block_n + 1)):
        ops.anderson_gram_row(Xs, Xs, 0)
    with pytest.raises(ValueError, match="anderson_mix: .* grid limit"):
        ops.anderson_mix(Xs, Xs, torch.ones(1, 4), 0.5)
    ops.anderson_gram_row(Xs[..., :block_n].contiguous(), Xs[..., :block_n].contiguous(), 0)  # one chunk: fine
    z = torch.randn(1, kernels.fixed_point_update.CHUNK + 1)
    with pytest.raises(ValueError, match="fixed_point_update_multi: .* grid limit of 1 chunks"):
        ops.fixed_point_update(z, z, 0.5)
    ops.fixed_point_update(z[:, :-1].contiguous(), z[:, :-1].contiguous(), 0.5)
