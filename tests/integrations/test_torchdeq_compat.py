"""TorchDEQ's solvers against lmdeq's under ``register(replace=True)``, on the same TorchDEQ programs.

Every case builds a DEQ with ``torchdeq.get_deq`` (cores ``sliced``/``indexing``, n_states 1..4, IFT
on/off, ``solver_kwargs={'f_max_iter': 0..3 or 20}`` as DEQ-zoo passes it, abs/rel stop modes, a
tensor and an MDEQ-like list state; the 6 dimensions are covered pairwise, 80 cases per solver) and
runs it twice: with TorchDEQ's own solvers, then with lmdeq's in their place. What a TorchDEQ user
sees must agree: the info keys, shapes and dtypes always; z, every info value, nstep and the
gradients exactly (to rounding) where both run the same algorithm; and where lmdeq deliberately
differs (README, "Switching from TorchDEQ") the difference is pinned down here too.
"""
import itertools

import pytest
import torch

import torchdeq  # noqa: F401  (a test dependency: requirements-dev.txt, the [test] extra)
from lmdeq.integrations import torchdeq as interop

from . import deq_programs as programs

F_MAX_ITER = [0, 1, 2, 3, 20]
TOL = 1e-6
AA_TOL = 1e-7


def _cases():
    """80 cases covering every pair of values of the 6 dimensions."""
    out = []
    for core, n, fi, ift in itertools.product(["sliced", "indexing"], [1, 2, 3, 4], range(5), [True, False]):
        out.append(dict(core=core, n_states=n, f_max_iter=F_MAX_ITER[fi], ift=ift,
                        program=("tensor", "mdeq")[(n + fi) % 2], stop_mode=("abs", "rel")[(n // 2 + fi + ift) % 2]))
    return out


CASES = _cases()


def _id(case):
    return "-".join(str(case[k]) for k in ("program", "core", "n_states", "ift", "f_max_iter", "stop_mode"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny states: one thread is fastest and immune to other processes' load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def both(**case):
    theirs = programs.run(**case)
    with interop.registered(replace=True):
        ours = programs.run(**case)
    return theirs, ours


def rel(a, b):
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def solve_budgets(case):
    """max_iter of each solve the core makes (TorchDEQ's _compute_f_iter for the f_max_iter passed)."""
    f, n = case["f_max_iter"], case["n_states"]
    if case["core"] == "sliced":
        return [f // n] * n if n > 1 else [f]
    return [f]


def expected_outputs(case):
    """How many states the core returns when the solver returns every indexed state."""
    f, n = case["f_max_iter"], case["n_states"]
    if case["core"] == "sliced":
        return n
    return min(max(min(f, n), 1), n)


def assert_layout(theirs, ours):
    ti, oi = theirs["info"], ours["info"]
    assert sorted(oi) == sorted(ti)
    for k in ti:
        assert torch.is_tensor(oi[k]), k
        assert oi[k].shape == ti[k].shape and oi[k].dtype == ti[k].dtype, (k, oi[k].shape, ti[k].shape)


def assert_info_equal(theirs, ours):
    for k, v in theirs["info"].items():
        assert torch.allclose(ours["info"][k], v, rtol=1e-10, atol=0), (k, ours["info"][k], v)


def assert_z_equal(theirs, ours, n=None, tol=1e-12):
    pairs = list(zip(theirs["z"], ours["z"]))[:n]
    for zt, zo in pairs:
        for a, b in zip(zt, zo):
            assert rel(b, a) < tol


def assert_grads_equal(theirs, ours, tol):
    for a, b in zip(theirs["grads"], ours["grads"]):
        assert rel(b, a) < tol


@pytest.mark.parametrize("solver", ["fixed_point_iter", "simple_fixed_point_iter", "broyden"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_same_algorithm_same_results(solver, case):
    if solver == "simple_fixed_point_iter" and case["program"] == "mdeq" and case["ift"]:
        pytest.skip("TorchDEQ's core cannot apply IFT to the list state it passes simple_fixed_point_iter")
    theirs, ours = both(solver=solver, f_tol=TOL, **case)
    assert_layout(theirs, ours)
    assert_info_equal(theirs, ours)          # the same solve: residuals, traces, nstep, all to rounding
    assert len(ours["z"]) == expected_outputs(case)
    if solver == "broyden" and case["core"] == "indexing":
        # TorchDEQ's Broyden stores each indexed state one step early (`(nstep + 1) in indexing`), so
        # the states the core differentiates differ; lmdeq's are those of the indexed steps.
        return
    if len(theirs["z"]) < len(ours["z"]):
        # TorchDEQ's solvers return no state for an index after an early stop (or below Anderson's
        # third step, or 0), and the core's zip() then drops the last gradient function, IFT included.
        assert case["core"] == "indexing"
        if theirs["z"]:
            assert_z_equal(theirs, ours, n=len(theirs["z"]))
        return
    assert len(theirs["z"]) == len(ours["z"])
    assert_z_equal(theirs, ours)
    assert_grads_equal(theirs, ours, tol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_anderson_layout_and_small_budgets(case):
    theirs, ours = both(solver="anderson", f_tol=TOL, **case)
    assert_layout(theirs, ours)
    assert len(ours["z"]) == expected_outputs(case)
    ti, oi = theirs["info"], ours["info"]
    last = solve_budgets(case)[-1]
    if last == 0:
        assert_info_equal(theirs, ours)
    elif last <= 2:
        # TorchDEQ's Anderson returns x0 and reports 1e8 for max_iter <= 2; lmdeq's takes its steps.
        assert bool((ti["abs_lowest"] == 1e8).all()) and bool((oi["abs_lowest"] < 1e8).all())
        assert bool((oi["nstep"] == last).all())
    else:
        # lmdeq's Anderson (relative regulariser) is never behind TorchDEQ's at the same budget.
        mode = case["stop_mode"]
        assert float(oi[f"{mode}_lowest"].max()) <= max(float(ti[f"{mode}_lowest"].max()), TOL)


@pytest.mark.parametrize("program", ["tensor", "mdeq"])
@pytest.mark.parametrize("core,n_states", [("sliced", 1), ("sliced", 2), ("indexing", 1)])
@pytest.mark.parametrize("ift", [True, False])
@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_anderson_converged_solves_agree(program, core, n_states, ift, stop_mode):
    theirs, ours = both(program=program, solver="anderson", b_solver="fixed_point_iter", core=core,
                        n_states=n_states, ift=ift, f_max_iter=40, stop_mode=stop_mode, f_tol=1e-7)
    ti, oi = theirs["info"], ours["info"]
    assert bool((ti[f"{stop_mode}_lowest"] < 1e-7).all()) and bool((oi[f"{stop_mode}_lowest"] < 1e-7).all())
    assert_layout(theirs, ours)
    assert_z_equal(theirs, ours, tol=1e-5)
    assert_grads_equal(theirs, ours, tol=1e-5)
    assert bool((oi["nstep"] <= ti["nstep"]).all())   # measured: 13-14 steps against TorchDEQ's 30-36


@pytest.mark.parametrize("program", ["tensor", "mdeq"])
@pytest.mark.parametrize("solver", ["fixed_point_iter", "anderson", "broyden"])
def test_indexing_core_keeps_its_ift_step(program, solver):
    # n_states=2: states at steps 10 and 20; the solve stops before 20. TorchDEQ's solvers then return
    # one state and the core silently drops the IFT gradient (zip of states and gradient functions).
    case = dict(program=program, solver=solver, b_solver="fixed_point_iter", core="indexing", n_states=2, ift=True,
                f_max_iter=20, stop_mode="abs", f_tol=1e-4)
    theirs, ours = both(**case)
    assert len(theirs["z"]) == 1 and theirs["backward_infos"] == []
    assert len(ours["z"]) == 2 and len(ours["backward_infos"]) == 1
    assert float(ours["backward_infos"][0]["abs_lowest"].max()) < 1e-9   # the adjoint solve converged


def test_backward_solver_without_tau():
    # TorchDEQ's IFT passes its backward solver a func without a tau argument, which TorchDEQ's own
    # simple_fixed_point_iter calls with one; lmdeq's damps by itself.
    case = dict(program="tensor", solver="fixed_point_iter", core="sliced", ift=True, f_max_iter=20, f_tol=1e-10)
    with pytest.raises(TypeError, match="tau"):
        programs.run(b_solver="simple_fixed_point_iter", **case)
    with interop.registered(replace=True):
        simple = programs.run(b_solver="simple_fixed_point_iter", **case)
        checked = programs.run(b_solver="fixed_point_iter", **case)
    assert_grads_equal(checked, simple, tol=1e-6)   # 40 exact Picard steps of a 0.6-contraction


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point_iter"])
def test_list_state_passed_to_the_solver(solver):
    # With no_stat=True TorchDEQ's core hands the list state itself to the solver, which only
    # simple_fixed_point_iter of TorchDEQ's own solvers accepts; lmdeq's all do, with the flat results.
    def deq():
        return torchdeq.core.DEQSliced(f_solver=solver, b_solver=solver, no_stat=True, f_max_iter=20, f_tol=1e-8)

    with pytest.raises((AttributeError, TypeError, RuntimeError)):
        programs.run("mdeq", solver, deq=deq())
    with interop.registered(replace=True):
        listed = programs.run("mdeq", solver, deq=deq())
    flat_theirs = programs.run("mdeq", solver, f_max_iter=20, f_tol=1e-8)
    assert_z_equal(flat_theirs, listed, tol=1e-6)
    assert sorted(listed["info"]) == sorted(flat_theirs["info"])


@pytest.mark.parametrize("solver", ["fixed_point_iter", "broyden", "simple_fixed_point_iter", "anderson"])
@pytest.mark.parametrize("program", ["tensor", "mdeq"])
def test_eval_mode(solver, program):
    theirs, ours = both(program=program, solver=solver, train=False, f_max_iter=20)
    assert_layout(theirs, ours)
    assert torch.equal(ours["info"]["sradius"], torch.zeros(1))   # the core's own eval-mode value
    if solver != "anderson":
        assert_info_equal(theirs, ours)
        assert_z_equal(theirs, ours)


@pytest.mark.parametrize("solver", ["fixed_point_iter", "broyden"])
def test_tensor_f_max_iter(solver):
    case = dict(program="tensor", solver=solver, core="indexing", f_max_iter=torch.tensor(5), f_tol=1e-30)
    theirs, ours = both(**case)
    assert_layout(theirs, ours)
    assert_info_equal(theirs, ours)
    assert ours["info"]["abs_trace"].shape[1] == 6


def gather(outputs):
    """torch.nn.parallel.scatter_gather.gather's recursion (DataParallel's merge of the replicas'
    outputs) with torch.cat in place of the cross-device Gather, so that it runs on the CPU."""
    out = outputs[0]
    if torch.is_tensor(out):
        return torch.cat([o.unsqueeze(0) if o.dim() == 0 else o for o in outputs])
    if out is None:
        return None
    if isinstance(out, dict):
        if not all(len(out) == len(d) for d in outputs):
            raise ValueError("All dicts must have the same number of keys")
        return type(out)((k, gather([d[k] for d in outputs])) for k in out)
    return type(out)(map(gather, zip(*outputs)))


def log_means(info):
    """A generic logger."""
    return {k: v.mean().item() for k, v in info.items()}


def test_gather_helper_reproduces_the_failure_on_non_tensor_values():
    infos = [{"abs_lowest": torch.ones(2), "f_evals": 3}, {"abs_lowest": torch.ones(2), "f_evals": 4}]
    with pytest.raises(TypeError):
        gather(infos)


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point_iter", "simple_fixed_point_iter",
                                    "lmdeq_anderson", "lmdeq_broyden", "lmdeq_fixed_point"])
@pytest.mark.parametrize("train", [True, False])
def test_two_replicas_merge_and_log(solver, train):
    # Two "replicas" (different inputs: their solves stop after different step counts) as DataParallel
    # runs them, merged as its gather does, then logged generically. lmdeq_* names: lmdeq's own contract.
    with interop.registered(replace=True):
        replicas = [programs.run("tensor", solver, f_max_iter=20, f_tol=1e-3, seed=s, train=train)["info"]
                    for s in (5, 6)]
    if solver in ("fixed_point_iter", "lmdeq_fixed_point"):
        assert not torch.equal(replicas[0]["nstep"], replicas[1]["nstep"])
    merged = gather(replicas)
    assert type(merged) is type(replicas[0])
    for k, v in merged.items():
        assert torch.equal(v, torch.cat([r[k] for r in replicas])), k
    logged = log_means(merged)
    assert set(logged) == set(replicas[0]) and all(isinstance(v, float) for v in logged.values())
    if solver.startswith("lmdeq_"):
        assert merged.f_evals == max(r.f_evals for r in replicas)
    if solver in ("anderson", "broyden", "fixed_point_iter"):
        theirs = [programs.run("tensor", solver, f_max_iter=20, f_tol=1e-3, seed=s, train=train)["info"]
                  for s in (5, 6)]
        merged_theirs = gather(theirs)
        assert sorted(merged_theirs) == sorted(merged)
        assert all(merged_theirs[k].shape == merged[k].shape for k in merged)
