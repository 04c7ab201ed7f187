"""Backend choice (LMDEQ_BACKEND), the extension's load-time check, and the `lmdeq info` report."""
import subprocess
import sys
import warnings

import pytest
import torch

from lmdeq import ops
from lmdeq.app import info
from lmdeq.ops import backends

needs_ext = pytest.mark.skipif(backends.extension() is None, reason="lmdeq._C not built")


@needs_ext
def test_auto_picks_the_cpp_kernel_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert backends.choose(torch.device("cpu")) == "cpu"


def test_forced_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="LMDEQ_BACKEND=cuda cannot run on cpu tensors: cuda: "):
        ops.fixed_point_update(torch.randn(2, 3), torch.randn(2, 3), 0.5)


def test_unknown_backend_is_rejected(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "fortran")
    with pytest.raises(ValueError, match="LMDEQ_BACKEND='fortran' is not one of"):
        backends.choose(torch.device("cpu"))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(backends, "triton_interpreted", lambda: False)
    assert "TRITON_INTERPRET=1" in backends.unavailable_reason("triton", "cpu")


@pytest.mark.parametrize("triton_v, numpy_v, broken", [
    ("3.6.0", "2.4.0", True), ("3.6.0", "2.3.5", False), ("3.7.0", "2.4.6", False), ("3.8.0", "2.5.2", False),
    ("2.3.1", "2.10.0rc1", True), ("3.10.0+git1234", "1.26.4", False)])
def test_triton_interpreter_defect_with_numpy_2_4(triton_v, numpy_v, broken):
    why = backends._interpreter_defect(triton_v, numpy_v)
    if broken:
        assert f"Triton {triton_v}" in why and f"numpy {numpy_v}" in why and "numpy<2.4" in why
    else:
        assert why is None


def test_interpreter_defect_makes_triton_unavailable_on_cpu(monkeypatch):
    import numpy
    import triton

    monkeypatch.setattr(backends, "triton_interpreted", lambda: True)
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.1")
    assert "triton-lang/triton#9171" in backends.unavailable_reason("triton", "cpu")
    assert backends.unavailable_reason("triton", "cuda") is None  # compiled kernels are not affected
    with pytest.raises(ValueError, match="cannot read a version"):
        backends._interpreter_defect("dev", "2.4.0")


def test_cuda_reasons_tell_the_truth():
    why = backends.unavailable_reason("cuda", "cpu")
    if backends.extension() is None:
        assert why.startswith("cuda: extension lmdeq._C not built")
    elif not backends.extension().with_cuda:
        assert why.startswith("cuda: extension built without CUDA")
    elif not torch.cuda.is_available():
        assert why == "cuda: no CUDA device"
    else:
        assert why.startswith("cuda: runs CUDA tensors only")


@pytest.fixture
def fresh_reasons(monkeypatch):
    """Forget the cached extension load, arch checks and warnings (before and after the test)."""
    monkeypatch.setattr(backends, "_passed_over", set())
    cached = (backends._load_extension, backends._arch_reason)  # the real ones (a test may replace them)
    for fn in cached:
        fn.cache_clear()
    yield
    for fn in cached:
        fn.cache_clear()


def test_extension_built_for_another_torch_is_refused(monkeypatch, fresh_reasons):
    monkeypatch.setattr(backends, "build_info", lambda: {"extension": True, "torch": "1.0.0"})
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    ext, why = backends._load_extension()
    assert ext is None and "built for torch 1.0.0" in why and "rebuild" in why
    with pytest.warns(RuntimeWarning, match="run on the torch backend, not cpu .*built for torch 1.0.0"):
        assert backends.choose(torch.device("cpu")) == "torch"


def test_a_build_that_fails_to_import_says_so_once_and_in_info(monkeypatch, fresh_reasons):
    """A freshly built lmdeq._C that cannot be imported (an undefined symbol, say) is not silently
    replaced: auto warns once with the import error, and `lmdeq info` shows it."""
    monkeypatch.setattr(backends, "build_info", lambda: {"extension": True, "torch": torch.__version__})
    monkeypatch.setitem(sys.modules, "lmdeq._C", None)  # import_module now raises ImportError
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    with pytest.warns(RuntimeWarning, match=r"not cpu \(cpu: extension lmdeq._C was built but fails to import"):
        assert backends.choose(torch.device("cpu")) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        assert backends.choose(torch.device("cpu")) == "torch"
    assert "unavailable cpu: extension lmdeq._C was built but fails to import" in info.report()


class _CudaExtension:
    """Stands in for an lmdeq._C built with CUDA kernels."""
    with_cuda = True
    torch_version = torch.__version__
    cuda_runtime_version = 13000
    compiler = "test"
    __file__ = "_C.so"


@pytest.mark.parametrize("arch, capability, name, runs", [
    ("9.0", (9, 0), "NVIDIA H200", True), ("9.0+PTX", (10, 0), "NVIDIA B200", True),
    ("9.0", (10, 0), "NVIDIA B200", False), ("9.0+PTX", (8, 0), "NVIDIA A100-SXM4-80GB", False),
    ("9.0", (8, 9), "NVIDIA L4", False), ("8.0;9.0", (8, 6), "NVIDIA A10", True), ("9.0a", (9, 0), "H100", True),
    ("Ampere", (8, 9), "NVIDIA L4", True)])
def test_cuda_kernels_need_a_build_for_the_running_gpu(monkeypatch, fresh_reasons, arch, capability, name, runs):
    """The extension's recorded arch list against the device's compute capability (mocked): a mismatch
    falls back to Triton with one warning that names the device and the rebuild, instead of every op
    failing with 'no kernel image is available'."""
    monkeypatch.setattr(backends, "_load_extension", lambda: (_CudaExtension, None))
    monkeypatch.setattr(backends, "build_info", lambda: {"extension": True, "with_cuda": True, "arch_list": arch})
    monkeypatch.setattr(backends, "_triton_reason", lambda device_type: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    cuda = torch.device("cuda", 0)
    if runs:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert backends.choose(cuda) == "cuda"
        return
    cc = f"{capability[0]}.{capability[1]}"
    with pytest.warns(RuntimeWarning, match=rf"run on the triton backend, not cuda .*{name}.*capability {cc}"):
        assert backends.choose(cuda) == "triton"
    why = backends.unavailable_reason("cuda", "cuda")
    assert f"TORCH_CUDA_ARCH_LIST={arch}" in why and f"rebuild with TORCH_CUDA_ARCH_LIST={cc}" in why
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="LMDEQ_BACKEND=cuda cannot run on cuda tensors: .*does not run on"):
        backends.choose(cuda)


@pytest.mark.parametrize("arch", ["9.0;sm_80", "nine"])
def test_unreadable_arch_lists_are_rejected(arch):
    with pytest.raises(ValueError, match="cannot read"):
        backends.arch_runs_on(arch, (9, 0))


def test_without_extension_the_reference_runs(monkeypatch, fresh_reasons):
    monkeypatch.setattr(backends, "_load_extension", lambda: (None, "extension lmdeq._C not built (test)"))
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    with pytest.warns(RuntimeWarning, match=r"not cpu \(cpu: extension lmdeq._C not built \(test\)\)"):
        assert backends.choose(torch.device("cpu")) == "torch"
    out, res, fzn = ops.fixed_point_update(torch.ones(2, 3), torch.zeros(2, 3), 0.5)
    assert torch.equal(out, torch.full((2, 3), 0.5)) and torch.allclose(res, torch.full((2,), 3 ** 0.5))


def test_package_works_without_extension_and_triton():
    """A fresh interpreter where importing lmdeq._C and triton fails: every op, the solvers and the
    implicit backward run (reference path)."""
    code = """
import sys
sys.modules['triton'] = None
sys.modules['lmdeq._C'] = None
import torch
from lmdeq import ops
from lmdeq.app import info
from lmdeq.ops import backends
assert backends.choose(torch.device('cpu')) == 'torch'
z = torch.randn(2, 5)
ops.fixed_point_update(z, z, 0.5); ops.fixed_point_update_multi([z], [z], 0.5)
X = torch.randn(2, 3, 4)
ops.anderson_gram_row(X, X, 0); ops.anderson_mix(X, X, torch.ones(2, 3), 0.5)
ops.power_iteration_matrices([torch.randn(3, 2)], [torch.randn(3)], 1)
ops.conv_power_iteration([torch.randn(2, 1, 3, 3)], [torch.randn(1, 1, 4, 4)], [1], [1], 1)
from lmdeq import Anderson, FixedPoint, Implicit, deq_solve
sol = Anderson(max_iter=50, tol=1e-6).solve(lambda z: 0.5 * torch.tanh(z) + 1.0, torch.zeros(2, 5))
assert sol.result == 'converged', sol.result
W = torch.nn.Parameter(0.3 * torch.eye(5))
zd, _ = deq_solve(lambda z: torch.tanh(z @ W.T + 1.0), torch.zeros(2, 5), solver=Anderson(max_iter=40, tol=1e-8),
                  backward=Implicit(solver=FixedPoint(max_iter=40, tol=1e-8)))
zd.sum().backward()
assert W.grad.abs().sum() > 0
text = info.report()
assert 'triton: not installed' in text and 'cpu: extension lmdeq._C' in text, text
print('ok')
"""
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("LMDEQ_BACKEND", "TRITON_INTERPRET")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_info_report_lists_versions_backends_and_choices(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    text = info.report()
    assert f"torch {torch.__version__}" in text and "triton" in text
    for name in ops.OP_NAMES:
        assert name in text
    if backends.extension() is not None:
        assert "extension lmdeq._C: loaded" in text and "compiled against torch" in text
    if not torch.cuda.is_available():
        assert "unavailable cuda: " in text


def test_info_module_runs():
    out = subprocess.run([sys.executable, "-m", "lmdeq.app.info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "selected (cpu)" in out.stdout


def test_device_guard_enters_the_tensors_cuda_device(monkeypatch):
    entered = []

    class Guard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Guard)
    with backends.device_guard(torch.device("cuda", 2)):
        pass
    with backends.device_guard(torch.device("cpu")):  # no CUDA guard for other devices
        pass
    assert entered == [torch.device("cuda", 2)]


@pytest.mark.skipif(backends.unavailable_reason("triton", "cpu") is not None,
                    reason=str(backends.unavailable_reason("triton", "cpu")))
def test_every_triton_launch_runs_under_the_device_guard(monkeypatch):
    """Triton launches on the current device: each op's Triton path enters the guard of its tensors'
    device (on a GPU, tensors on cuda:1 while cuda:0 is current then launch on cuda:1)."""
    import contextlib

    seen = []

    @contextlib.contextmanager
    def guard(device):
        seen.append(torch.device(device))
        yield

    monkeypatch.setattr(backends, "device_guard", guard)
    monkeypatch.setenv(backends.ENV_VAR, "triton")
    launched = []
    real = backends.triton_kernels

    def kernels():
        assert seen and len(seen) == len(launched) + 1, "a Triton kernel was reached outside the guard"
        launched.append(1)
        return real()

    monkeypatch.setattr(backends, "triton_kernels", kernels)
    z = torch.randn(2, 5)
    X = torch.randn(2, 3, 7)
    ops.fixed_point_update(z, z.flip(0), 0.5)
    ops.fixed_point_update_multi([z, z], [z, z], 0.5)
    ops.anderson_gram_row(X, X, 1)
    ops.anderson_mix(X, X, torch.ones(2, 3), 0.5)
    ops.power_iteration_matrices([torch.randn(4, 3)], [torch.randn(4)], 1)
    ops.conv_power_iteration([torch.randn(2, 1, 3, 3)], [torch.randn(1, 1, 4, 4)], [1], [1], 1)
    assert len(seen) == len(launched) == 6 and set(seen) == {torch.device("cpu")}
