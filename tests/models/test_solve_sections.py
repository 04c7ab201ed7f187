"""A model config's solves (lmdeq.models.solves): the ``forward`` / ``backward`` sections are the JSON forms of
the objects deq_solve takes and rebuild an equal config; check_solves is the one rule of a-priori counts (each
violation a ConfigError naming the problem); ResolvedSolves resolves Apriori counts against the model's bound,
with hysteresis for exact counts only."""
import json

import pytest
import torch

from lmdeq import JFB, Anderson, Apriori, AuthorsAnderson, Broyden, FixedPoint, Implicit, Phantom
from lmdeq.errors import ConfigError
from lmdeq.models import APRIORI_SOLVES, AUTHORS_SOLVER, RELEASED_JR, mdeq, resolve_config
from lmdeq.models.solves import ResolvedSolves, check_solves, needs_bound, solve_sections, solves_of
from lmdeq.solvers import adjoint_apriori_iterations, apriori_iterations

from .tiny import TINY2, lipschitz_solves, original_solves

CHECKED = FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel")                # the Lipschitz default
EXACT = FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel", exact=True)      # APRIORI_SOLVES


# -- the sections -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lipschitz,solves", [
    (True, {}),
    (False, {}),
    (True, APRIORI_SOLVES),
    (True, AUTHORS_SOLVER),
    (True, dict(AUTHORS_SOLVER, constraint="released")),
    (False, RELEASED_JR),
    (True, lipschitz_solves(7, 9)),
    (False, dict(forward=Anderson(max_iter=12, tol=1e-4, m=4, lam=1e-3, check_every=2), backward=JFB())),
    (False, dict(forward=Broyden(max_iter=12, memory=8), backward=Phantom(steps=3, tau=0.7))),
    (True, dict(forward=FixedPoint(max_iter=Apriori(slack=4), tol=1e-4, stop_mode="rel", tau=0.8), backward=None)),
], ids=["lipschitz", "original", "apriori", "authors", "authors-released", "released-jr", "capped", "anderson-jfb",
        "broyden-phantom", "slack-no-backward"])
def test_sections_are_json_and_rebuild_an_equal_config(lipschitz, solves):
    torch.manual_seed(0)
    model = mdeq("cifar10-small", lipschitz=lipschitz, **TINY2, **({"init_power_iters": 1} if lipschitz else {}),
                 **solves)
    cfg = model.config
    text = json.dumps({"forward": cfg["forward"], "backward": cfg["backward"]})
    assert json.loads(text) == {"forward": cfg["forward"], "backward": cfg["backward"]}
    json.dumps(cfg)                                           # the whole config, too
    assert isinstance(cfg["forward"], dict) and isinstance(cfg["backward"], dict)
    forward, backward = solves_of(cfg)
    if "forward" in solves:
        assert forward == solves["forward"] and cfg["forward"] == solves["forward"].to_config()
    if "backward" in solves:
        assert backward == solves["backward"]
    assert mdeq(**cfg).config == cfg
    assert mdeq(**json.loads(json.dumps(cfg))).config == cfg   # as a checkpoint stores it


def test_objects_and_dicts_are_the_same_setting():
    forward = Anderson(max_iter=9, tol=1e-4, m=3)
    backward = Implicit(solver=Broyden(max_iter=11, tol=1e-4, stop_mode="rel"), x0="zeros")
    a = resolve_config("cifar10-small", lipschitz=False, forward=forward, backward=backward)
    b = resolve_config("cifar10-small", lipschitz=False, forward=forward.to_config(), backward=backward.to_config())
    assert a == b
    assert solve_sections(forward, backward) == {"forward": a["forward"], "backward": a["backward"]}


def test_a_partial_section_is_completed_with_the_objects_defaults():
    cfg = resolve_config("cifar10-small", lipschitz=False, forward={"name": "anderson", "max_iter": 7},
                         backward={"method": "implicit", "solver": {"name": "fixed_point"}})
    assert cfg["forward"] == Anderson(max_iter=7).to_config()
    assert cfg["forward"] == {"name": "anderson", "max_iter": 7, "tol": 1e-3, "stop_mode": "abs", "exact": False,
                              "check_every": None, "raise_on_failure": False, "m": 6, "lam": 1e-4, "tau": 1.0}
    assert cfg["backward"] == {"method": "implicit", "solver": FixedPoint().to_config(), "x0": "v"}


def test_overriding_one_section_keeps_the_other():
    cfg = resolve_config("cifar10-small", lipschitz=False, forward=Broyden(max_iter=4, tol=1e-3, stop_mode="rel"))
    assert cfg["backward"] == Implicit(solver=Broyden(max_iter=20, tol=1e-3, stop_mode="rel"), x0="zeros").to_config()
    cfg = resolve_config("cifar10-small", backward=JFB())
    assert cfg["forward"] == CHECKED.to_config() and cfg["backward"] == {"method": "jfb"}


# -- the rule: check_solves -----------------------------------------------------------------------------------
def _cfg(lipschitz=True, constraint="certified", forward=CHECKED, backward=Implicit(solver=CHECKED)):
    cfg = {"lipschitz": lipschitz, **solve_sections(forward, backward)}
    if lipschitz:
        cfg["constraint"] = constraint
    return cfg


@pytest.mark.parametrize("cfg,match", [
    (_cfg(lipschitz=False), r"lipschitz=False certifies no bound, so there is no a-priori iteration count: give the "
                            r"forward and backward solver an int max_iter"),
    (_cfg(lipschitz=False, backward=Implicit(solver=FixedPoint(max_iter=20))),
     r"lipschitz=False certifies no bound.*give the forward an int max_iter"),
    (_cfg(lipschitz=False, forward=FixedPoint(max_iter=20)),
     r"lipschitz=False certifies no bound.*give the backward solver an int max_iter"),
    (_cfg(constraint="released"), r"constraint='released' certifies no bound, so there is no a-priori iteration"),
    (_cfg(constraint="none", forward=EXACT, backward=JFB()), r"constraint='none' certifies no bound"),
    (_cfg(forward=CHECKED.replace(stop_mode="abs")),
     r"a-priori iteration count \(max_iter=Apriori\(\)\) is derived for stop_mode='rel'.*set the forward's "
     r"stop_mode='rel'"),
    (_cfg(backward=Implicit(solver=CHECKED.replace(stop_mode="abs"))),
     r"derived for stop_mode='rel'.*set the backward solver's stop_mode='rel'"),
    (_cfg(forward=Anderson(max_iter=Apriori(), tol=1e-3, stop_mode="rel", exact=True)),
     r"an exact a-priori count counts Picard steps: the forward must be a FixedPoint solver \(got Anderson\), "
     r"or exact=False"),
    (_cfg(backward=Implicit(solver=AuthorsAnderson(max_iter=Apriori(), tol=1e-3, stop_mode="rel", exact=True))),
     r"the backward solver must be a FixedPoint solver \(got AuthorsAnderson\)"),
    (_cfg(backward=Implicit(solver=CHECKED, x0="zeros")),
     r"the a-priori adjoint count is derived for the adjoint started at v: set the backward's x0='v'"),
    (_cfg(backward=Implicit(solver=EXACT, x0="zeros")), r"adjoint started at v: set the backward's x0='v'"),
], ids=["original", "original-forward", "original-backward", "released", "none", "forward-abs", "backward-abs",
        "exact-anderson", "exact-authors-adjoint", "adjoint-from-zeros", "exact-adjoint-from-zeros"])
def test_check_solves_names_the_problem(cfg, match):
    assert needs_bound(cfg)
    with pytest.raises(ConfigError, match=match):
        check_solves(cfg)


@pytest.mark.parametrize("cfg", [
    _cfg(),
    _cfg(forward=EXACT, backward=Implicit(solver=EXACT)),
    _cfg(forward=Anderson(max_iter=Apriori(), tol=1e-3, stop_mode="rel")),     # a cap, still checked
    _cfg(forward=EXACT.replace(tau=0.5), backward=Phantom()),
    _cfg(lipschitz=False, forward=FixedPoint(max_iter=5, stop_mode="abs"), backward=Implicit(x0="zeros")),
    _cfg(constraint="released", forward=FixedPoint(max_iter=5, exact=True), backward=None),
])
def test_check_solves_accepts_what_the_rule_allows(cfg):
    check_solves(cfg)


def test_needs_bound():
    assert needs_bound(_cfg()) and needs_bound(_cfg(forward=FixedPoint(max_iter=5)))
    assert needs_bound(_cfg(backward=JFB()))
    assert not needs_bound(_cfg(forward=FixedPoint(max_iter=5), backward=Implicit(solver=FixedPoint(max_iter=5))))
    assert not needs_bound(_cfg(forward=FixedPoint(max_iter=5), backward=None))


def test_the_model_factory_applies_the_rule():
    with pytest.raises(ConfigError, match="lipschitz=False certifies no bound"):
        mdeq("cifar10-small", lipschitz=False, forward=CHECKED)
    with pytest.raises(ConfigError, match="constraint='released' certifies no bound"):
        mdeq("cifar10-small", constraint="released", **APRIORI_SOLVES)
    with pytest.raises(ConfigError, match="set the forward's stop_mode='rel'"):
        mdeq("cifar10-small", forward=EXACT.replace(stop_mode="abs"))
    with pytest.raises(ConfigError, match=r"must be a FixedPoint solver \(got Anderson\)"):
        mdeq("cifar10-small", forward=Anderson(max_iter=Apriori(), tol=1e-3, stop_mode="rel", exact=True))
    with pytest.raises(ConfigError, match="set the backward's x0='v'"):
        mdeq("cifar10-small", backward=Implicit(solver=EXACT, x0="zeros"))


# -- ResolvedSolves ---------------------------------------------------------------------------------------------
def _bound_with_counts(forward, adjoint, tol=1e-3, tau=1.0):
    """A bound L whose a-priori counts are (forward, adjoint)."""
    for i in range(1, 1000):
        L = i / 1000
        if (apriori_iterations(L, tol, tau), adjoint_apriori_iterations(L, tol, tau)) == (forward, adjoint):
            return L
    raise AssertionError(f"no L with counts {forward}, {adjoint}")


@pytest.mark.parametrize("solves", [{}, APRIORI_SOLVES], ids=["checked", "exact"])
def test_apriori_counts_are_those_of_the_models_bound(solves):
    torch.manual_seed(0)
    model = mdeq("cifar10-small", **TINY2, init_power_iters=2, **solves)
    L = model.lipschitz_bound()
    assert 0 < L < 1
    forward, backward, bound = ResolvedSolves(model.config).resolve(model.lipschitz_bound)
    assert bound == L
    exact = bool(solves)
    assert forward == FixedPoint(max_iter=apriori_iterations(L, 1e-3), tol=1e-3, stop_mode="rel", exact=exact)
    assert backward == Implicit(solver=FixedPoint(max_iter=adjoint_apriori_iterations(L, 1e-3), tol=1e-3,
                                                  stop_mode="rel", exact=exact), x0="v")


def test_the_counts_follow_the_solvers_own_tol_and_damping():
    cfg = resolve_config("cifar10-small", forward=FixedPoint(max_iter=Apriori(), tol=1e-4, stop_mode="rel", tau=0.7),
                         backward=Implicit(solver=FixedPoint(max_iter=Apriori(), tol=1e-5, stop_mode="rel", tau=0.9)))
    forward, backward, bound = ResolvedSolves(cfg).resolve(lambda: 0.3)
    assert bound == 0.3
    assert forward.max_iter == apriori_iterations(0.3, 1e-4, 0.7)
    assert backward.solver.max_iter == adjoint_apriori_iterations(0.3, 1e-5, 0.9)
    assert (forward.tau, backward.solver.tau, backward.solver.tol) == (0.7, 0.9, 1e-5)


def test_hysteresis_applies_to_exact_counts_only():
    low, high = _bound_with_counts(5, 4), _bound_with_counts(6, 5)
    lower = _bound_with_counts(4, 3)
    for solves, exact in (({}, False), (APRIORI_SOLVES, True)):
        resolved = ResolvedSolves(resolve_config("cifar10-small", **solves))
        counts = []
        for L in (low, high, low, lower):
            forward, backward, _ = resolved.resolve(lambda L=L: L)
            counts.append((forward.max_iter, backward.solver.max_iter))
        if exact:   # raised at once, held while the need is within the slack (2), lowered past it
            assert counts == [(5, 4), (6, 5), (6, 5), (4, 3)]
            assert resolved.settled.current == {"forward": 4, "adjoint": 3} and resolved.settled.changes == 4
        else:       # a cap: always what the bound needs, nothing held
            assert counts == [(5, 4), (6, 5), (5, 4), (4, 3)]
            assert resolved.settled.current == {} and resolved.settled.changes == 0


def test_hysteresis_uses_the_apriori_slack():
    low, high = _bound_with_counts(5, 4), _bound_with_counts(6, 5)
    lower = _bound_with_counts(4, 3)
    exact = FixedPoint(max_iter=Apriori(slack=3), tol=1e-3, stop_mode="rel", exact=True)
    resolved = ResolvedSolves(resolve_config("cifar10-small", forward=exact, backward=Implicit(solver=exact)))
    counts = []
    for L in (low, high, lower):
        forward, backward, _ = resolved.resolve(lambda L=L: L)
        counts.append((forward.max_iter, backward.solver.max_iter))
    assert counts == [(5, 4), (6, 5), (6, 5)]   # a need 2 below is within a slack of 3


def test_no_bound_is_asked_for_set_counts():
    def no_bound():
        raise AssertionError("the bound was asked for")

    for cfg in (resolve_config("cifar10-small", lipschitz=False),
                resolve_config("cifar10-small", **lipschitz_solves(7, 9)),
                resolve_config("cifar10-small", lipschitz=False, **original_solves(4), backward=JFB())):
        forward, backward, bound = ResolvedSolves(cfg).resolve(no_bound)
        assert bound is None and (forward, backward) == solves_of(cfg)


def test_a_call_max_iter_replaces_a_checked_int_count_only():
    resolved = ResolvedSolves(resolve_config("cifar10-small", lipschitz=False, **original_solves(7)))
    forward, _, _ = resolved.resolve(lambda: 0.5, max_iter=3)
    assert forward == Broyden(max_iter=3, tol=1e-3, stop_mode="rel")
    assert resolved.resolve(lambda: 0.5)[0].max_iter == 7          # for that call only
    for solves in ({}, APRIORI_SOLVES):
        with pytest.raises(ConfigError, match="max_iter applies to checked solves with a set count"):
            ResolvedSolves(resolve_config("cifar10-small", **solves)).resolve(lambda: 0.5, max_iter=3)
