"""lmdeq's solvers inside TorchDEQ's get_deq, forward and backward, tensor and list states."""
import pytest
import torch

torchdeq = pytest.importorskip("torchdeq")

from lmdeq.integrations import torchdeq as interop  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def registered():
    return interop.register()


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


def test_names_registered(registered):
    assert registered == ["lmdeq_anderson", "lmdeq_authors_anderson", "lmdeq_broyden", "lmdeq_fixed_point"]
    from torchdeq.solver import get_solver

    assert get_solver("lmdeq_anderson").__module__ == "lmdeq.solvers.anderson"


@pytest.mark.parametrize("f_solver", ["lmdeq_anderson", "lmdeq_broyden", "lmdeq_fixed_point"])
def test_get_deq_forward_and_ift_backward(f_solver):
    lin, x = _setup()
    f = lambda z: torch.tanh(lin(z) + x)  # noqa: E731
    deq = torchdeq.get_deq(f_solver=f_solver, b_solver="lmdeq_fixed_point", ift=True, f_max_iter=100,
                           f_tol=1e-11, b_max_iter=200, b_tol=1e-11)
    zs, info = deq(f, torch.zeros(3, 8, dtype=torch.float64))
    assert float(info["abs_lowest"].max()) < 1e-10
    gw, gx = torch.autograd.grad((zs[-1] ** 2).sum(), [lin.weight, x])
    rw, rx = _reference_grads(f, torch.zeros(3, 8, dtype=torch.float64), [lin.weight, x])
    assert float((gw - rw).norm() / rw.norm()) < 1e-6
    assert float((gx - rx).norm() / rx.norm()) < 1e-6


def test_get_deq_list_state_no_stat_path():
    lin, x = _setup(1)

    def f(a, b):
        return list(torch.tanh(lin(torch.cat([a, b], 1)) + x).split([3, 5], 1))

    deq = torchdeq.get_deq(f_solver="lmdeq_anderson", b_solver="lmdeq_fixed_point", ift=True, no_stat=True,
                           f_max_iter=100, f_tol=1e-11, b_max_iter=200, b_tol=1e-11)
    z0 = [torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64)]
    zs, _ = deq(f, z0)
    out = zs[-1]
    gx, = torch.autograd.grad(sum((t ** 2).sum() for t in out), [x])
    z = z0
    for _ in range(200):
        z = f(*z)
    rx, = torch.autograd.grad(sum((t ** 2).sum() for t in z), [x])
    assert float((gx - rx).norm() / rx.norm()) < 1e-6
