"""lmdeq's solvers inside TorchDEQ's get_deq, forward and backward, tensor and list states; registering
under TorchDEQ's own names and undoing it."""
import argparse

import pytest
import torch

torchdeq = pytest.importorskip("torchdeq")

from torchdeq.solver import get_solver  # noqa: E402

from lmdeq.integrations import torchdeq as interop  # noqa: E402
from lmdeq.integrations.torchdeq_solvers import LMDEQ_SOLVERS, TORCHDEQ_SOLVERS  # noqa: E402

TORCHDEQ_NAMES = ["anderson", "broyden", "fixed_point_iter", "simple_fixed_point_iter"]


@pytest.fixture(autouse=True)
def clean_registry():
    """Every test starts and ends with TorchDEQ's registry as TorchDEQ made it."""
    from torchdeq.solver import _solvers

    before = dict(_solvers)
    yield
    interop.unregister()
    assert _solvers == before


def _setup(seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(8, 8).double()
    with torch.no_grad():
        lin.weight.mul_(0.6 / torch.linalg.matrix_norm(lin.weight, 2))
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    return lin, x


def _reference_grads(f, z0, params):
    z = z0
    for _ in range(200):
        z = f(z)
    return torch.autograd.grad((z ** 2).sum(), params)


def test_names_registered():
    assert interop.register() == ["lmdeq_anderson", "lmdeq_authors_anderson", "lmdeq_broyden", "lmdeq_fixed_point"]
    assert get_solver("lmdeq_anderson") is LMDEQ_SOLVERS["lmdeq_anderson"]
    assert get_solver("lmdeq_anderson").__module__ == "lmdeq.integrations.torchdeq_solvers"
    assert get_solver("anderson").__module__ == "torchdeq.solver.anderson"   # replace=False: untouched


@pytest.mark.parametrize("f_solver", ["lmdeq_anderson", "lmdeq_broyden", "lmdeq_fixed_point"])
def test_get_deq_forward_and_ift_backward(f_solver):
    interop.register()
    lin, x = _setup()
    f = lambda z: torch.tanh(lin(z) + x)  # noqa: E731
    deq = torchdeq.get_deq(f_solver=f_solver, b_solver="lmdeq_fixed_point", ift=True, f_max_iter=100,
                           f_tol=1e-11, b_max_iter=200, b_tol=1e-11)
    zs, info = deq(f, torch.zeros(3, 8, dtype=torch.float64))
    assert float(info["abs_lowest"].max()) < 1e-10 and info.result == "converged"
    gw, gx = torch.autograd.grad((zs[-1] ** 2).sum(), [lin.weight, x])
    rw, rx = _reference_grads(f, torch.zeros(3, 8, dtype=torch.float64), [lin.weight, x])
    assert float((gw - rw).norm() / rw.norm()) < 1e-6
    assert float((gx - rx).norm() / rx.norm()) < 1e-6


@pytest.mark.parametrize("core", ["DEQSliced", "DEQIndexing"])
def test_list_state_handed_to_the_solver(core):
    # no_stat=True: TorchDEQ's core passes the list state itself to the solver (get_deq cannot set it).
    interop.register()
    lin, x = _setup(1)
    calls = []

    def f(a, b):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return list(torch.tanh(lin(torch.cat([a, b], 1)) + x).split([3, 5], 1))

    deq = getattr(torchdeq.core, core)(f_solver="lmdeq_anderson", b_solver="lmdeq_fixed_point", no_stat=True,
                                       f_max_iter=100, f_tol=1e-11, grad=5)
    z0 = [torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64)]
    zs, info = deq(f, z0)
    assert calls[0] == ((3, 3), (3, 5)) and info.result == "converged"
    out = zs[-1]
    assert isinstance(out, list) and [t.shape for t in out] == [(3, 3), (3, 5)]
    z = z0
    for _ in range(200):
        z = f(*z)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(out, z))


def test_replace_registers_torchdeqs_names_and_unregister_restores_them():
    originals = {name: get_solver(name) for name in TORCHDEQ_NAMES}
    names = interop.register(replace=True)
    assert names == sorted(["lmdeq_anderson", "lmdeq_authors_anderson", "lmdeq_broyden", "lmdeq_fixed_point",
                            *TORCHDEQ_NAMES])
    for name in TORCHDEQ_NAMES:
        assert get_solver(name) is TORCHDEQ_SOLVERS[name]
    interop.register(replace=True)   # idempotent: the originals stay remembered
    assert interop.unregister() == names
    for name in TORCHDEQ_NAMES:
        assert get_solver(name) is originals[name]
    with pytest.raises(AssertionError):
        get_solver("lmdeq_anderson")
    assert interop.unregister() == []


def test_unregister_leaves_a_later_registration_alone():
    from torchdeq.solver import register_solver

    def mine(func, x0, **kwargs):
        return x0, [], {}

    interop.register(replace=True)
    register_solver("broyden", mine)          # someone else's, registered after ours
    interop.unregister()
    assert get_solver("broyden") is mine
    assert get_solver("anderson").__module__ == "torchdeq.solver.anderson"
    register_solver("broyden", torchdeq.solver.broyden_solver)


def test_registered_context_restores_exactly_even_on_error():
    interop.register()                          # lmdeq_* already there before the block
    with pytest.raises(RuntimeError, match="inside"):
        with interop.registered(replace=True) as names:
            assert "anderson" in names and get_solver("anderson") is TORCHDEQ_SOLVERS["anderson"]
            raise RuntimeError("inside")
    assert get_solver("anderson").__module__ == "torchdeq.solver.anderson"
    assert get_solver("lmdeq_anderson") is LMDEQ_SOLVERS["lmdeq_anderson"]   # what was there before the block stays


def test_bad_replace():
    with pytest.raises(TypeError, match="replace must be a bool"):
        interop.register(replace="yes")


@pytest.mark.parametrize("replace", [False, True])
def test_add_deq_args_command_line_switches_with_one_call(replace):
    from torchdeq.utils import add_deq_args

    parser = argparse.ArgumentParser()
    add_deq_args(parser)
    args = parser.parse_args(["--f_solver", "anderson", "--b_solver", "broyden", "--ift", "--f_max_iter", "12"])
    with interop.registered(replace=replace):
        deq = torchdeq.get_deq(args)
    expected = TORCHDEQ_SOLVERS if replace else {"anderson": torchdeq.solver.anderson_solver,
                                                         "broyden": torchdeq.solver.broyden_solver}
    assert deq.f_solver is expected["anderson"] and deq.b_solver is expected["broyden"]
    lin, x = _setup(2)
    zs, info = deq(lambda z: torch.tanh(lin(z) + x), torch.zeros(3, 8, dtype=torch.float64))
    zs[-1].sum().backward()
    assert lin.weight.grad is not None and sorted(info) == ["abs_lowest", "abs_trace", "nstep", "rel_lowest",
                                                            "rel_trace", "sradius"]
