"""Bad input gets a clear error that names the argument."""
import pytest
import torch

from lmdeq import solvers

SOLVERS = ["fixed_point", "anderson", "broyden"]


def ok(z):
    return 0.5 * z


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("kwargs,exc,pattern", [
    (dict(tol=0.0), ValueError, "tol"),
    (dict(tol=-1e-3), ValueError, "tol"),
    (dict(max_iter=-1), ValueError, "max_iter must be an int >= 0"),
    (dict(max_iter=torch.tensor(-2)), ValueError, "max_iter must be an int >= 0"),
    (dict(max_iter=2.5), TypeError, "max_iter"),
    (dict(max_iter=torch.tensor(3.0)), TypeError, "max_iter"),
    (dict(max_iter="3"), TypeError, "max_iter"),
    (dict(max_iter=True), TypeError, "max_iter"),
    (dict(stop_mode="relative"), ValueError, "stop_mode"),
    (dict(check_every=0), ValueError, "check_every"),
    (dict(iterations=-1), ValueError, "iterations"),
    (dict(contract="TorchDEQ"), ValueError, "contract"),
])
def test_bad_arguments(name, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        solvers.get_solver(name)(ok, torch.zeros(2, 3), **kwargs)


@pytest.mark.parametrize("name", SOLVERS)
def test_integer_x0(name):
    with pytest.raises(TypeError, match="x0 must have a floating dtype"):
        solvers.get_solver(name)(ok, torch.zeros(2, 3, dtype=torch.int64))


@pytest.mark.parametrize("name", SOLVERS)
def test_x0_not_a_tensor(name):
    with pytest.raises(TypeError, match="x0"):
        solvers.get_solver(name)(ok, [[0.0, 1.0]])


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("func,exc,pattern", [
    (lambda z: z[:, :2], ValueError, r"func\(\.\.\.\) has shape \(2, 2\), but x0 has shape \(2, 3\)"),
    (lambda z: z.double(), TypeError, r"func\(\.\.\.\) has dtype torch.float64, but x0 has dtype torch.float32"),
    (lambda z: [z], ValueError, "func returned a list, but x0 is a tensor"),
    (lambda z: "nope", TypeError, "func must return a tensor"),
    (lambda z: z.to("meta"), ValueError, r"func\(\.\.\.\) is on meta, but x0 is on cpu"),
])
def test_func_output_mismatch(name, func, exc, pattern):
    with pytest.raises(exc, match=pattern):
        solvers.get_solver(name)(func, torch.zeros(2, 3))


@pytest.mark.parametrize("name", SOLVERS)
def test_list_state_mismatches(name):
    z0 = [torch.zeros(2, 3), torch.zeros(2, 4, 2)]
    with pytest.raises(ValueError, match=r"func returned 1 tensors, but x0 has 2"):
        solvers.get_solver(name)(lambda zs: [zs[0]], z0)
    with pytest.raises(ValueError, match=r"func\(\.\.\.\)\[1\] has shape"):
        solvers.get_solver(name)(lambda zs: [zs[0], zs[1][:, :2]], z0)
    with pytest.raises(ValueError, match=r"x0\[1\] has batch size 3"):
        solvers.get_solver(name)(ok, [torch.zeros(2, 3), torch.zeros(3, 3)])
    with pytest.raises(TypeError, match=r"x0\[1\] has dtype"):
        solvers.get_solver(name)(ok, [torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64)])


def test_solver_specific_arguments():
    with pytest.raises(ValueError, match="m must be"):
        solvers.anderson(ok, torch.zeros(2, 3), m=0)
    with pytest.raises(ValueError, match="lam must be"):
        solvers.anderson(ok, torch.zeros(2, 3), lam=-1.0)
    with pytest.raises(ValueError, match="memory must be"):
        solvers.broyden(ok, torch.zeros(2, 3), memory=0)
    with pytest.raises(ValueError, match="tau must be"):
        solvers.fixed_point(ok, torch.zeros(2, 3), tau=0.0)
    with pytest.raises(ValueError, match="solver must be one of"):
        solvers.get_solver("newton")
