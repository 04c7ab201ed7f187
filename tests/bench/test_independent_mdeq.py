"""The independent MDEQ-small (benchmarks/independent/mdeq_small.py, a re-statement of the released locuslab/deq code
in plain PyTorch) computes what lmdeq's baselines (a) and (a-JR) compute, so that timing one against the other
(benchmarks/independent/time_baselines.py) compares equal work.

With lmdeq's weights transferred (float64, small batches):

* the stem, the map f (eval and training mode, the same dropout masks) and the head agree to 1e-12;
* run for the same iterations, the forward logits agree to 1e-10 in eval mode, and a training step's logits and
  gradients agree to 1e-10, at the released thresholds (Broyden 18/20, rel 1e-3) on a model whose solves converge,
  with the same f-evaluation counts;
* on a model whose solves do not converge (all iterations run), the counts per training step are the released
  maxima in both (forward 1 + 18, one tracked f(z*), adjoint 1 + 20 vector-Jacobian products), and the
  logits agree to 1e-10 when lmdeq's Broyden keeps all its rank-one terms (its default ring of 16 does not,
  see the last test);
* a JR step of the (a-JR) recipe (Anderson 7/8, JR estimate with 2 vectors, weight 0.5) agrees to 1e-10.
"""
import pytest
import torch
from torch.nn import functional as F

from lmdeq.deq import Implicit
from lmdeq.models import mdeq
from lmdeq.solvers import Broyden

from .scripts import load_script

ms = load_script("benchmarks/independent/mdeq_small.py")

TOL = 1e-10


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these float64 CPU solves are small, and on a shared 2-core machine two threads per
    worker only oversubscribe it."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def _lmdeq(**overrides):
    torch.manual_seed(0)
    return mdeq("cifar10-small", lipschitz=False, **overrides).double()


def _images(batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=g, dtype=torch.float64), torch.arange(batch) % 10


@torch.no_grad()
def _randomise_(model):
    """Every parameter and batch-norm statistic moved off its init (a generic point; its solves do not converge).
    (tests/released has a variant that picks the norm parameters by other names; with it, four of these
    comparisons fail, so the two are kept apart.)"""
    g = torch.Generator().manual_seed(7)
    for name, p in model.named_parameters():
        if "gn" in name or "norm" in name:
            p.copy_(1 + 0.5 * (torch.rand(p.shape, generator=g, dtype=p.dtype) * 2 - 1))
        else:
            p.add_(0.3 * p.std().nan_to_num(0.05) * torch.randn(p.shape, generator=g, dtype=p.dtype))
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=g, dtype=b.dtype))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    return model


@torch.no_grad()
def _contractive_(model, x):
    """Weights whose f is a contraction (both solves converge in a few Broyden steps): branch 0 dominated by a
    large injection, the fused input of branch 1 by the downsampled branch 0, the upsampled branch 1 damped;
    the stem's running statistics set to x's batch statistics, so that eval mode sees the same injection."""
    model.cell.blocks[0].gn2.weight.fill_(10.0)
    model.stem[4].weight.fill_(10.0)
    model.cell.fusion.paths[1][0].norms[0].weight.fill_(10.0)
    model.cell.fusion.paths[0][1].norm.weight.fill_(0.1)
    bns = (model.stem[1], model.stem[4])
    for bn in bns:
        bn.momentum = 1.0
    was = model.training
    model.stem.train()
    model.stem(x)
    model.train(was)
    for bn in bns:
        bn.momentum = 0.1
    return model


def _ours(lm, recipe=None):
    model = ms.MDEQSmall(recipe or ms.TINY).double()
    return ms.load_lmdeq_weights(model, lm)


def _grads_agree(lm, ours, tol=TOL):
    """Every gradient agrees, relative to the norm of all gradients (a BN-preceded bias has a zero gradient up to
    rounding, so per-tensor relative errors are meaningless there)."""
    theirs = ms.lmdeq_to_released({n: p.grad for n, p in lm.named_parameters()})
    total = torch.sqrt(sum(g.norm() ** 2 for g in theirs.values()))
    worst = max(float((p.grad - theirs[n]).norm()) for n, p in ours.named_parameters())
    assert worst < tol * float(total), (worst, float(total))


def _train_forward(model, x, seed, **kwargs):
    """A training-mode forward pass with torch's generator seeded first (the same dropout masks in both)."""
    model.train()
    torch.manual_seed(seed)
    return model(x, **kwargs)


def test_transfer_maps_every_parameter_and_buffer():
    lm = _lmdeq()
    ours = ms.MDEQSmall(ms.TINY).double()
    mapped = ms.lmdeq_to_released(lm.state_dict())
    assert set(mapped) == set(ours.state_dict())
    ms.load_lmdeq_weights(ours, lm)
    for name, value in ours.state_dict().items():
        assert torch.equal(value, mapped[name].to(value.dtype)), name


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_stem_map_and_head_agree(training):
    lm = _randomise_(_lmdeq())
    ours = _ours(lm)
    lm.train(training)
    ours.train(training)
    x, _ = _images(2)
    g = torch.Generator().manual_seed(2)
    z = [torch.randn(s, generator=g, dtype=torch.float64) for s in lm.cell.state_shapes(2)]
    with torch.no_grad():
        torch.manual_seed(5)
        f, _ = lm.fixed_point_problem(x)
        torch.manual_seed(5)
        func, _, shapes, inj = ours.fixed_point_map(x)
        if training:
            for blk, branch in zip(lm.cell.blocks, ours.fullstage.branches):
                assert torch.equal(blk.drop.mask, branch.blocks[0].drop.mask)
        with lm.cell.frozen_weights():
            theirs = f(z)
        mine = ms.vec2list(func(ms.list2vec(z)), shapes)
        assert _rel(inj, lm.stem(x)) < 1e-12
        for a, b in zip(mine, theirs):
            assert _rel(a, b) < 1e-12
        assert _rel(ours.predict(z), lm.head(z)) < 1e-12


def test_eval_logits_agree_at_the_released_thresholds():
    x, _ = _images(2)
    lm = _contractive_(_lmdeq(), x).eval()
    ours = _ours(lm).eval()
    with torch.no_grad():
        theirs, mine = lm(x), ours(x)
    assert _rel(mine, theirs) < TOL
    assert ours.last_stats["f_evals"] == lm.last_info["f_nstep"] < 19   # converged early, same step
    assert ours.last_stats["f_residual"] < 1e-3


def test_training_step_gradients_agree_at_the_released_thresholds():
    x, y = _images(2)
    lm = _contractive_(_lmdeq(), x)
    ours = _ours(lm)
    theirs = _train_forward(lm, x, 3)
    mine = _train_forward(ours, x, 3)
    for blk, branch in zip(lm.cell.blocks, ours.fullstage.branches):
        assert torch.equal(blk.drop.mask, branch.blocks[0].drop.mask)
    assert _rel(mine, theirs) < TOL
    F.cross_entropy(theirs, y).backward()
    F.cross_entropy(mine, y).backward()
    _grads_agree(lm, ours)
    info, stats = lm.last_info, ours.last_stats
    assert info["converged"] == 1.0 and stats["f_residual"] < 1e-3 and stats["b_residual"] < 1e-3
    assert (stats["f_evals"], stats["b_evals"]) == (info["f_nstep"], info["b_nstep"])
    assert stats["tracked_evals"] == 1


def test_evaluation_counts_of_a_training_step_without_convergence():
    """B = 1 (the pooled and per-sample residuals coincide); lmdeq's Broyden keeps all 19 rank-one terms."""
    x, y = _images(1)
    lm = _randomise_(_lmdeq(forward=Broyden(max_iter=18, tol=1e-3, stop_mode="rel", memory=32),
                            backward=Implicit(solver=Broyden(max_iter=20, tol=1e-3, stop_mode="rel", memory=32),
                                              x0="zeros")))
    ours = _ours(lm)
    theirs = _train_forward(lm, x, 4)
    mine = _train_forward(ours, x, 4)
    assert _rel(mine, theirs) < TOL
    F.cross_entropy(theirs, y).backward()
    F.cross_entropy(mine, y).backward()
    info, stats = lm.last_info, ours.last_stats
    assert info["converged"] == 0.0
    assert (stats["f_evals"], stats["tracked_evals"], stats["b_evals"]) == (19, 1, 21)
    assert (info["f_nstep"], info["b_nstep"]) == (19, 21)
    _grads_agree(lm, ours, tol=1e-8)


def test_lmdeq_default_broyden_memory_differs_after_16_updates():
    """What lmdeq's (a) runs by default: a ring of 16 rank-one terms, so its 18th forward step (and the adjoint's
    18th to 21st evaluations) differ from the released Broyden, which keeps all of them. Residual traces of the
    same 18-update solve on the same map (B = 1, a solve that does not converge): with 32 slots lmdeq's trace is
    the released one, with its default 16 the last residual differs."""
    x, _ = _images(1)
    lm = _randomise_(_lmdeq()).eval()
    ours = _ours(lm).eval()
    with torch.no_grad():
        func, z0, _, _ = ours.fixed_point_map(x)
        released = torch.tensor(ms.broyden(func, z0, 18)["rel_trace"], dtype=torch.float64)
        traces = {m: Broyden(max_iter=18, tol=1e-3, stop_mode="rel", memory=m).solve(func, z0).stats["rel_trace"][0, 1:]
                  for m in (16, 32)}
    assert len(released) == 18 and released.min() > 1e-3
    assert float((traces[32] - released).abs().max()) < TOL
    assert float((traces[16][:17] - released[:17]).abs().max()) < TOL
    assert abs(float(traces[16][17] - released[17])) > 1e-7


def test_jr_step_agrees():
    speedup = pytest.importorskip("lmdeq.app.bench.speedup")
    if "original_jr" not in speedup.METHODS:
        pytest.skip("lmdeq's benchmark has no (a-JR) method")
    cfg = speedup.method_config("original_jr", "cifar10-small")
    x, y = _images(2)
    lm = _contractive_(_lmdeq(**{k: v for k, v in cfg.items() if k not in ("preset", "lipschitz")}), x)
    ours = _ours(lm, ms.TINY_JR)
    assert (lm.config["forward"]["max_iter"], lm.config["backward"]["solver"]["max_iter"], lm.config["dropout"]) == \
        (7, 8, 0.22)
    f_thres = ms.TINY_JR["f_thres"] - 1    # a JR step's F_THRES + delta, delta = -1
    theirs, jr_theirs = _train_forward(lm, x, 6, jac_loss=True, max_iter=f_thres)
    mine, jr_mine = _train_forward(ours, x, 6, compute_jac_loss=True, f_thres=f_thres)
    assert _rel(mine, theirs) < TOL
    assert _rel(jr_mine, jr_theirs) < TOL
    factor = lm.config["jac_loss_weight"]
    assert factor == ms.TINY_JR["jac_loss_weight"] == 0.5
    (F.cross_entropy(theirs, y) + factor * jr_theirs).backward()
    (F.cross_entropy(mine, y) + factor * jr_mine).backward()
    _grads_agree(lm, ours)
    info, stats = lm.last_info, ours.last_stats
    assert (stats["f_evals"], stats["b_evals"], stats["jac_vjps"]) == (info["f_nstep"], info["b_nstep"], 2)
    assert stats["f_evals"] <= f_thres and stats["b_evals"] <= 8


def test_timing_harness_smoke(tmp_path, capsys):
    """One interleaved round of (a-JR) with every step a JR step (batch 1): the harness runs on lmdeq's current
    benchmark API, times both sides, counts their evaluations and writes its JSON."""
    speedup = pytest.importorskip("lmdeq.app.bench.speedup")
    if "original_jr" not in speedup.METHODS:
        pytest.skip("lmdeq's benchmark has no (a-JR) method")
    harness = load_script("benchmarks/independent/time_baselines.py")
    out = tmp_path / "independent.json"
    result = harness.main(["--device", "cpu", "--batch", "1", "--rounds", "1", "--warmup", "0", "--pairs", "a-JR",
                           "--jr-every-step", "--out", str(out)])
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"lmdeq a-JR", "indep a-JR"}
    for r in rows.values():
        assert r["jr_steps"] == 1 and r["train_stats"][0]["jac_vjps"] == 2
        assert 1 <= r["train_f_evals"] <= 8 and 1 <= r["b_evals"] <= 8 and r["infer_f_evals"] <= 7
    assert "train a-JR lmdeq/indep" in result["ratios"]
    assert out.exists() and "lmdeq / independent" in capsys.readouterr().out
