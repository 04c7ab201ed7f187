"""Bad input gets a clear error that names the argument: a bad setting when the solver is made (or when the
function contract is called), a bad state or func when it solves."""
import pytest
import torch

from lmdeq.errors import ConfigError
from lmdeq.integrations.torchdeq_solvers import LMDEQ_SOLVERS
from lmdeq.solvers import SOLVERS, Anderson, Broyden, FixedPoint, solver_from_config

NAMES = ["fixed_point", "anderson", "broyden"]


def ok(z):
    return 0.5 * z


BAD_SETTINGS = [
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
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kwargs,exc,pattern", BAD_SETTINGS)
def test_bad_settings(name, kwargs, exc, pattern):
    cls = SOLVERS[name]
    with pytest.raises(exc, match=f"^{cls.__name__}: .*{pattern}"):
        cls(**kwargs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kwargs,exc,pattern", BAD_SETTINGS + [(dict(iterations=-1), ValueError, "iterations")])
def test_bad_arguments_of_the_function_contract(name, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        LMDEQ_SOLVERS[f"lmdeq_{name}"](ok, torch.zeros(2, 3), **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_integer_x0(name):
    with pytest.raises(TypeError, match="x0 must have a floating dtype"):
        SOLVERS[name]().solve(ok, torch.zeros(2, 3, dtype=torch.int64))


@pytest.mark.parametrize("name", NAMES)
def test_x0_not_a_tensor(name):
    with pytest.raises(TypeError, match="x0"):
        SOLVERS[name]().solve(ok, [[0.0, 1.0]])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("func,exc,pattern", [
    (lambda z: z[:, :2], ValueError, r"func\(\.\.\.\) has shape \(2, 2\), but x0 has shape \(2, 3\)"),
    (lambda z: z.double(), TypeError, r"func\(\.\.\.\) has dtype torch.float64, but x0 has dtype torch.float32"),
    (lambda z: [z], ValueError, "func returned a list, but x0 is a tensor"),
    (lambda z: "nope", TypeError, "func must return a tensor"),
    (lambda z: z.to("meta"), ValueError, r"func\(\.\.\.\) is on meta, but x0 is on cpu"),
])
def test_func_output_mismatch(name, func, exc, pattern):
    with pytest.raises(exc, match=pattern):
        SOLVERS[name]().solve(func, torch.zeros(2, 3))


@pytest.mark.parametrize("name", NAMES)
def test_list_state_mismatches(name):
    solver = SOLVERS[name]()
    z0 = [torch.zeros(2, 3), torch.zeros(2, 4, 2)]
    with pytest.raises(ValueError, match=r"func returned 1 tensors, but x0 has 2"):
        solver.solve(lambda zs: [zs[0]], z0)
    with pytest.raises(ValueError, match=r"func\(\.\.\.\)\[1\] has shape"):
        solver.solve(lambda zs: [zs[0], zs[1][:, :2]], z0)
    with pytest.raises(ValueError, match=r"x0\[1\] has batch size 3"):
        solver.solve(ok, [torch.zeros(2, 3), torch.zeros(3, 3)])
    with pytest.raises(TypeError, match=r"x0\[1\] has dtype"):
        solver.solve(ok, [torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64)])


def test_solver_specific_arguments():
    with pytest.raises(ValueError, match="m must be"):
        Anderson(m=0)
    with pytest.raises(ValueError, match="lam must be"):
        Anderson(lam=-1.0)
    with pytest.raises(ValueError, match="memory must be"):
        Broyden(memory=0)
    with pytest.raises(ValueError, match="tau must be"):
        FixedPoint(tau=0.0)
    with pytest.raises(ConfigError, match="solver name must be one of"):
        solver_from_config({"name": "newton"})
    # ... and through the function contract
    with pytest.raises(ValueError, match="m must be"):
        LMDEQ_SOLVERS["lmdeq_anderson"](ok, torch.zeros(2, 3), m=0)
    with pytest.raises(ValueError, match="memory must be"):
        LMDEQ_SOLVERS["lmdeq_broyden"](ok, torch.zeros(2, 3), memory=0)
    with pytest.raises(ValueError, match="tau must be"):
        LMDEQ_SOLVERS["lmdeq_fixed_point"](ok, torch.zeros(2, 3), tau=0.0)
