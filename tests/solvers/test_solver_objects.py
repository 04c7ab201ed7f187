"""Solver objects (issue 23, "a solve is a value"): validated, frozen, hashable values with a config form, an
a-priori count resolved against a certified bound, ``exact`` solves, and the same numbers as the function
contract they replace (lmdeq.integrations.torchdeq_solvers.LMDEQ_SOLVERS)."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from lmdeq.errors import ConfigError, ConfigTypeError
from lmdeq.integrations.torchdeq_solvers import LMDEQ_SOLVERS
from lmdeq.solvers import (SOLVERS, Anderson, Apriori, AuthorsAnderson, Broyden, FixedPoint, Solution, Solver,
                           SolverInfo, adjoint_apriori_iterations, apriori_iterations, solver_from_config)

from .problems import split_state, tanh_contraction

CLASSES = [FixedPoint, Anderson, Broyden, AuthorsAnderson]
IDS = [c.__name__ for c in CLASSES]


def _has(cls, field):
    return field in {f.name for f in dataclasses.fields(cls)}


# -- construction --------------------------------------------------------------------------------------------

def test_the_registry_names_the_classes():
    assert SOLVERS == {"fixed_point": FixedPoint, "anderson": Anderson, "broyden": Broyden,
                       "authors_anderson": AuthorsAnderson}
    assert all(cls.name == name and issubclass(cls, Solver) for name, cls in SOLVERS.items())


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_defaults(cls):
    solver = cls()
    assert solver.max_iter == 40 and solver.tol == 1e-3 and solver.exact is False
    assert solver.check_every is None and solver.raise_on_failure is False
    assert solver.stop_mode == ("rel" if cls is AuthorsAnderson else "abs")
    assert not solver.needs_bound and solver.budget() == 40


BAD_FIELDS = [
    ("max_iter", -1, ValueError), ("max_iter", 2.5, TypeError), ("max_iter", "3", TypeError),
    ("max_iter", True, TypeError), ("max_iter", None, TypeError), ("max_iter", torch.tensor(-2), ValueError),
    ("tol", 0.0, ValueError), ("tol", -1e-3, ValueError), ("tol", math.inf, ValueError),
    ("tol", math.nan, ValueError), ("tol", "1e-3", TypeError),
    ("stop_mode", "relative", ValueError), ("stop_mode", None, ValueError),
    ("exact", 1, TypeError), ("exact", "yes", TypeError), ("raise_on_failure", 1, TypeError),
    ("check_every", 0, ValueError), ("check_every", 1.5, TypeError),
    ("m", 0, ValueError), ("m", 1.5, TypeError), ("lam", -1e-4, ValueError), ("lam", math.inf, ValueError),
    ("tau", 0.0, ValueError), ("tau", 1.5, ValueError), ("tau", -0.1, ValueError), ("tau", "1", TypeError),
    ("memory", 0, ValueError), ("memory", 2.0, TypeError),
]


BAD_CASES = [(cls, *bad) for cls in CLASSES for bad in BAD_FIELDS if _has(cls, bad[0])]


@pytest.mark.parametrize("cls,field,value,exc", BAD_CASES, ids=[f"{c.__name__}-{f}={v!r}" for c, f, v, _ in BAD_CASES])
def test_a_bad_field_is_an_error_naming_it(cls, field, value, exc):
    with pytest.raises(exc, match=rf"^{cls.__name__}: {field} must be"):
        cls(**{field: value})


def test_authors_anderson_keeps_two_iterates_before_its_first_mix():
    with pytest.raises(ValueError, match=r"^AuthorsAnderson: m must be an int >= 2"):
        AuthorsAnderson(m=1)
    assert Anderson(m=1).m == 1


@pytest.mark.parametrize("cls,field", [(Anderson, "mm"), (FixedPoint, "m"), (Broyden, "tau"), (FixedPoint, "memory"),
                                       (Anderson, "iterations"), (Broyden, "return_final"), (Anderson, "contract")])
def test_an_unknown_field_is_a_type_error(cls, field):
    with pytest.raises(TypeError, match=field):
        cls(**{field: 1})


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_fields_are_keyword_only(cls):
    with pytest.raises(TypeError):
        cls(30)


def test_values_are_normalised_to_plain_types():
    solver = Anderson(max_iter=np.int64(5), tol=1, m=np.int64(3), lam=0, tau=1)
    assert solver == Anderson(max_iter=5, tol=1.0, m=3, lam=0.0, tau=1.0)
    assert type(solver.max_iter) is int and type(solver.m) is int
    assert type(solver.tol) is float and type(solver.lam) is float and type(solver.tau) is float
    assert FixedPoint(max_iter=torch.tensor(7)).max_iter == 7 and FixedPoint(max_iter=7.0) == FixedPoint(max_iter=7)


# -- values --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_frozen_hashable_and_equal_by_value(cls):
    a, b = cls(max_iter=30, tol=1e-5), cls(max_iter=30, tol=1e-5)
    assert a == b and a is not b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != cls(max_iter=31, tol=1e-5) and a != a.replace(exact=True)
    assert {a: "cached"}[b] == "cached"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.tol = 1e-3
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.max_iter = 5
    assert a.tol == 1e-5 and a.max_iter == 30
    assert repr(a).startswith(f"{cls.__name__}(max_iter=30, tol=1e-05")
    # an Apriori max_iter is a value too
    c, d = cls(max_iter=Apriori(slack=3)), cls(max_iter=Apriori(slack=3))
    assert c == d and hash(c) == hash(d) and c != cls(max_iter=Apriori())


def test_solvers_of_different_classes_differ():
    assert FixedPoint() != Anderson() and Anderson() != AuthorsAnderson(stop_mode="abs")
    assert Anderson(m=6, lam=1e-4, tau=1.0, stop_mode="rel") != AuthorsAnderson(m=6, lam=1e-4, tau=1.0)


def test_replace_validates_again():
    solver = Anderson(m=5)
    assert solver.replace(m=3) == Anderson(m=3) and solver.m == 5
    with pytest.raises(ValueError, match="^Anderson: m must be"):
        solver.replace(m=0)
    with pytest.raises(TypeError):
        solver.replace(memory=3)


def test_apriori():
    assert Apriori() == Apriori(slack=2) and hash(Apriori()) == hash(Apriori(slack=2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        Apriori().slack = 3
    with pytest.raises(ValueError, match="Apriori: slack"):
        Apriori(slack=0)


# -- configs -------------------------------------------------------------------------------------------------

ROUND_TRIP = [
    FixedPoint(), FixedPoint(max_iter=7, tol=1e-6, stop_mode="rel", exact=True, tau=0.5),
    FixedPoint(max_iter=Apriori(slack=3), tol=1e-3, stop_mode="rel", exact=True),
    Anderson(), Anderson(m=3, lam=0.0, tau=0.8, check_every=4, raise_on_failure=True),
    Anderson(max_iter=Apriori(slack=3), m=5),
    Broyden(), Broyden(memory=4, max_iter=18, tol=1e-3, stop_mode="rel"), Broyden(max_iter=Apriori(slack=3)),
    AuthorsAnderson(), AuthorsAnderson(m=5, lam=1e-3, tau=0.9, stop_mode="abs", max_iter=30),
    AuthorsAnderson(max_iter=Apriori(slack=3)),
]


@pytest.mark.parametrize("solver", ROUND_TRIP, ids=repr)
def test_config_round_trip(solver):
    config = solver.to_config()
    assert config["name"] == solver.name
    assert set(config) == {"name"} | {f.name for f in dataclasses.fields(solver)}
    back = solver_from_config(config)
    assert back == solver and type(back) is type(solver)
    # JSON-able: a config file holds it
    assert solver_from_config(json.loads(json.dumps(config))) == solver
    assert solver_from_config(solver) is solver


def test_config_form():
    assert Anderson(m=5).to_config() == {"name": "anderson", "max_iter": 40, "tol": 1e-3, "stop_mode": "abs",
                                         "exact": False, "check_every": None, "raise_on_failure": False,
                                         "m": 5, "lam": 1e-4, "tau": 1.0}
    config = FixedPoint(max_iter=Apriori(slack=3), stop_mode="rel").to_config()
    assert config["max_iter"] == {"apriori": 3}
    assert solver_from_config({"name": "broyden"}) == Broyden()
    assert solver_from_config({"name": "fixed_point", "max_iter": {"apriori": 2}}).max_iter == Apriori()


@pytest.mark.parametrize("config,exc,pattern", [
    ({"name": "newton"}, ConfigError, "solver name must be one of"),
    ({"m": 3}, ConfigError, "solver name must be one of"),
    ({"name": "picard"}, ConfigError, "solver name must be one of"),
    ({"name": "fixed_point", "m": 3}, ConfigTypeError, r"FixedPoint has no field\(s\) \['m'\]"),
    ({"name": "anderson", "max_iter": {"slack": 3}}, ConfigTypeError, "max_iter must be an int or"),
    ({"name": "anderson", "m": 0}, ConfigError, "Anderson: m must be"),
    ("anderson", ConfigTypeError, "a solver config must be a dict"),
])
def test_bad_configs(config, exc, pattern):
    with pytest.raises(exc, match=pattern):
        solver_from_config(config)


# -- a-priori counts -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize("L", [0.3, 0.9, 0.99])
@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_with_bound_resolves_the_apriori_count(cls, L, tol):
    kw = dict(tau=0.5) if _has(cls, "tau") else {}
    solver = cls(max_iter=Apriori(slack=3), tol=tol, stop_mode="rel", **kw)
    assert solver.needs_bound
    tau = kw.get("tau", 1.0)
    assert solver.damping == tau
    forward = solver.with_bound(L)
    assert forward == solver.replace(max_iter=apriori_iterations(L, tol, tau)) and not forward.needs_bound
    adjoint = solver.with_bound(L, adjoint=True)
    assert adjoint == solver.replace(max_iter=adjoint_apriori_iterations(L, tol, tau))
    assert adjoint.max_iter <= forward.max_iter
    # An int max_iter is left alone.
    fixed = cls(max_iter=12, tol=tol, stop_mode="rel", **kw)
    assert fixed.with_bound(L) is fixed and fixed.with_bound(L, adjoint=True) is fixed


def test_with_bound_counts():
    assert FixedPoint(max_iter=Apriori(), tol=1e-3).with_bound(0.5).max_iter == apriori_iterations(0.5, 1e-3)
    assert Broyden(max_iter=Apriori()).damping == 1.0
    with pytest.raises((RuntimeError, ValueError), match="not < 1"):
        FixedPoint(max_iter=Apriori()).with_bound(1.0)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_an_unresolved_apriori_count_cannot_solve(cls):
    f, z0, _, _ = tanh_contraction(4, 2, 0.5, seed=1)
    solver = cls(max_iter=Apriori())
    with pytest.raises(ConfigError, match=rf"^{cls.__name__}: max_iter=Apriori\(\) must be resolved.*with_bound"):
        solver.solve(f, z0)
    with pytest.raises(ConfigError, match="with_bound"):
        solver.run(f, z0)
    assert solver.with_bound(0.5).solve(f, z0).result == "converged"


# -- exact solves --------------------------------------------------------------------------------------------

class Logged:
    """A map with no fixed point (residuals around 1, up and down) that logs its inputs and outputs."""

    def __init__(self):
        self.log = []

    def __call__(self, z):
        out = z + 1.0 + 0.1 * torch.sin(3 * z)
        self.log.append((z.clone(), out.clone()))
        return out


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize("n", [3, 4, 5, 9])
def test_exact_runs_exactly_max_iter_steps(cls, n):
    f = Logged()
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    # tol=1e3: a checked solve stops at its first check (the released Anderson's is at the 3rd f-evaluation)
    assert cls(max_iter=n, tol=1e3).solve(f, z0).stats.f_evals == (3 if cls is AuthorsAnderson else 1)
    f.log.clear()
    solution = cls(max_iter=n, tol=1e3, exact=True).solve(f, z0)
    evals = n + 1 if cls is Broyden else n   # Broyden: g(x0), then max_iter updates
    assert len(f.log) == evals and solution.stats.f_evals == evals


@pytest.mark.parametrize("cls,last,n", [
    (FixedPoint, "output", 4), (FixedPoint, "output", 6), (Anderson, "output", 4), (Anderson, "output", 5),
    (Broyden, "input", 4), (Broyden, "input", 5),
])
def test_exact_returns_the_last_iterate(cls, last, n):
    # the last iterate: FixedPoint's z_n = f(z_{n-1}) and Anderson's estimate f(x_n) are f's last output;
    # Broyden's z_n (and the released Anderson's x_n) f's last input
    f = Logged()
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    solution = cls(max_iter=n, tol=1e3, stop_mode="abs", exact=True).solve(f, z0)
    want = f.log[-1][1 if last == "output" else 0]
    assert torch.equal(solution.value, want)
    # ... which here is not the lowest-residual one, which a checked solve returns
    checked = cls(max_iter=n, tol=1e-30, stop_mode="abs").solve(Logged(), z0)
    assert not torch.equal(checked.value, want)


@pytest.mark.parametrize("n", [4, 5])
def test_authors_anderson_exact_returns_its_lowest_residual_iterate(n):
    # as released: exact (no early stop) still answers with the iterate of the lowest pooled residual, the
    # input of f-evaluation nstep
    f = Logged()
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    solution = AuthorsAnderson(max_iter=n, tol=1e3, stop_mode="abs", exact=True).solve(f, z0)
    assert len(f.log) == n
    at = int(solution.stats["nstep"][0])
    assert 3 <= at <= n and torch.equal(solution.value, f.log[at - 1][0])
    pooled = [float(torch.linalg.vector_norm(out - inp)) for inp, out in f.log[2:]]
    assert pooled[at - 3] == min(pooled)


def test_exact_fixed_point_iterates_by_hand():
    # dyadic values: z_{k+1} = 1.5 z_k + 1 exactly
    z = torch.zeros(2, 3, dtype=torch.float64)
    solution = FixedPoint(max_iter=6, exact=True).solve(lambda z: 1.5 * z + 1.0, z)
    for _ in range(6):
        z = 1.5 * z + 1.0
    assert torch.equal(solution.value, z) and solution.result == "max_iter"


# -- the same numbers as the function contract ---------------------------------------------------------------

SETTINGS = {
    "fixed_point": [dict(max_iter=40), dict(max_iter=60, tol=1e-9, stop_mode="rel", tau=0.6),
                    dict(max_iter=7, exact=True), dict(max_iter=30, tol=1e-8, check_every=3)],
    "anderson": [dict(max_iter=40), dict(max_iter=30, tol=1e-10, m=3, lam=1e-3, tau=0.8, stop_mode="rel"),
                 dict(max_iter=6, exact=True, m=2), dict(max_iter=30, tol=1e-8, check_every=4)],
    "broyden": [dict(max_iter=40), dict(max_iter=25, tol=1e-10, memory=3, stop_mode="rel"),
                dict(max_iter=6, exact=True), dict(max_iter=30, tol=1e-8, check_every=2)],
    "authors_anderson": [dict(max_iter=40), dict(max_iter=30, tol=1e-8, m=3, lam=1e-3, tau=0.8, stop_mode="abs"),
                         dict(max_iter=6, exact=True), dict(max_iter=3, tol=1e-9)],
}
CASES = [(name, i) for name, settings in SETTINGS.items() for i in range(len(settings))]


def _problem(state, dtype):
    f, z0, _, _ = tanh_contraction(8, 3, 0.9, dtype=dtype, seed=13)
    if state == "tensor":
        return f, z0
    return split_state(f, [3, 5], [(3, 3), (3, 5)]), [z0[:, :3].clone(), z0[:, 3:].clone()]


def _same(a, b):
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{i}" for n, i in CASES])
@pytest.mark.parametrize("state", ["tensor", "list"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_bit_identical_to_the_function_contract(name, case, state, dtype):
    settings = SETTINGS[name][case]
    f, z0 = _problem(state, dtype)
    solution = SOLVERS[name](**settings).solve(f, z0)
    assert isinstance(solution, Solution) and isinstance(solution.stats, SolverInfo)
    z, traj, info = LMDEQ_SOLVERS[f"lmdeq_{name}"](f, z0, **settings)
    assert _same(solution.value, z) and traj == []
    assert sorted(solution.stats) == sorted(info)
    for key in info:
        assert _same(solution.stats[key], info[key]), key
    # the function contract's spelling of exact=True
    if settings.get("exact"):
        spelt = {k: v for k, v in settings.items() if k not in ("exact", "max_iter")}
        z_it, _, info_it = LMDEQ_SOLVERS[f"lmdeq_{name}"](f, z0, max_iter=50, iterations=settings["max_iter"], **spelt)
        assert _same(z_it, z) and all(_same(info_it[k], info[k]) for k in info)
    # and run() with snapshots is the function contract's indexing
    steps = [1, 3, 100] if name != "authors_anderson" else [3, 4, 100]
    z_run, traj_run, info_run = SOLVERS[name](**settings).run(f, z0, snapshots=steps)
    _, traj_fn, _ = LMDEQ_SOLVERS[f"lmdeq_{name}"](f, z0, indexing=steps, **settings)
    assert _same(z_run, z) and len(traj_run) == len(steps) and _same(traj_run, traj_fn)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_the_default_solver_is_the_function_contract_at_40_steps(name):
    f, z0 = _problem("tensor", torch.float64)
    solution = SOLVERS[name]().solve(f, z0)
    z, _, info = LMDEQ_SOLVERS[f"lmdeq_{name}"](f, z0, max_iter=40)
    assert _same(solution.value, z) and all(_same(solution.stats[k], info[k]) for k in info)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_a_solver_is_reusable(cls):
    f, z0 = _problem("tensor", torch.float64)
    solver = cls(max_iter=30, tol=1e-8)
    a, b = solver.solve(f, z0), solver.solve(f, z0)
    assert _same(a.value, b.value) and all(_same(a.stats[k], b.stats[k]) for k in a.stats)
    assert a.result == a.stats.result
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.value = None
