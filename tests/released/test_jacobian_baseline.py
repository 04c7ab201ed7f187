"""Baseline (a-JR), the released MDEQ + Jacobian regularisation recipe, against an independent re-implementation
of the released training loop (MDEQ-Vision lib/core/cls_function.py ``train`` and lib/models/mdeq_core.py
``_forward``, locuslab/deq and iiduka-researches/Lipschitz_mdeq alike), in float64 on a tiny original MDEQ:

    factor = JAC_LOSS_WEIGHT + 0.1 * (deq_steps // JAC_INCREMENTAL), 0 from epoch JAC_STOP_EPOCH on
    compute_jac_loss = rand() < JAC_LOSS_FREQ and factor > 0          (rand drawn at every step)
    delta_f_thres = randint(-RAND_F_THRES_DELTA, 2) on JR steps        (drawn only then)
    z1 = anderson(func, 0, threshold=F_THRES + delta, stop_mode)       (no grad)
    new_z1 = func(z1.requires_grad_());  jac_loss = jac_loss_estimate(new_z1, z1)   (vecs=2, on the flat state)
    hook on new_z1: anderson(y -> y^T J + grad, 0, threshold=B_THRES)
    (CE(head(new_z1)) + factor * jac_loss).backward()

The reference uses the released functions of test_released_function (the model on transplanted weights, on the
flat list2vec state) and the released Anderson of test_authors_anderson; the decision draws come from a
generator seeded as lmdeq's (the released loop draws them from torch's global generator), the dropout masks and
the global RNG state before the Hutchinson draws are lmdeq's. Same draws -> same JR steps, same forward
thresholds and evaluations, same losses and gradients. Then: the decisions and the run continue exactly across
a resume of lmdeq's Trainer.
"""
import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F

from lmdeq.app.data.augment import normalize
from lmdeq.app.data.images import LabelledImages
from lmdeq.app.data.split import derive_seed
from lmdeq.models import RELEASED_JR, mdeq
from lmdeq.app.train.checkpoint import RUN, load_checkpoint
from lmdeq.app.train.config import TrainConfig
from lmdeq.app.train.jacobian import JacobianSchedule
from lmdeq.app.train.step import train_step
from lmdeq.app.train.trainer import Trainer

from ..models.tiny import TINY2
from .test_authors_anderson import released_anderson
from .test_released_function import RENAMES, Released, transplant

B = 2
# The released recipe on a 6-step run (2 steps per "epoch", END_EPOCH 3), with a JR frequency high enough to
# see both kinds of step, a weight that grows (JAC_INCREMENTAL 2) and a stop (JAC_STOP_EPOCH 2 of 3).
RECIPE = dict(JAC_LOSS_WEIGHT=0.5, JAC_LOSS_FREQ=0.5, JAC_INCREMENTAL=2, JAC_STOP_EPOCH=2, END_EPOCH=3,
              STEPS_PER_EPOCH=2, PRETRAIN_STEPS=0, PRETRAIN_JAC_LOSS_WEIGHT=0.0, F_THRES=7, B_THRES=8,
              RAND_F_THRES_DELTA=2, STOP_MODE="rel", EPS=1e-3, M=6, LAM=1e-4)
SEED = 2   # its draws: JR at steps 0 (delta -2) and 2 (delta +1), none at 1 and 3, stopped at 4 and 5


def _config(**extra):
    cfg = copy.deepcopy(RELEASED_JR)
    cfg.update(TINY2)
    cfg.update(jac_loss_freq=RECIPE["JAC_LOSS_FREQ"], jac_incremental=RECIPE["JAC_INCREMENTAL"],
               jac_stop_fraction=RECIPE["JAC_STOP_EPOCH"] / RECIPE["END_EPOCH"])
    cfg.update(extra)
    return cfg


# -- the reference ----------------------------------------------------------------------------------------
def released_decision(gen, global_steps, epoch):
    """The preamble of the released ``train`` loop body: (factor, compute_jac_loss, f_thres, b_thres)."""
    r = RECIPE
    deq_steps = global_steps - r["PRETRAIN_STEPS"]
    if deq_steps < 0:
        factor = r["PRETRAIN_JAC_LOSS_WEIGHT"]
    elif epoch >= r["JAC_STOP_EPOCH"]:
        factor = 0
    else:
        factor = r["JAC_LOSS_WEIGHT"] + 0.1 * (deq_steps // r["JAC_INCREMENTAL"])
    compute_jac_loss = (torch.rand([], generator=gen).item() < r["JAC_LOSS_FREQ"]) and (factor > 0)
    delta = (torch.randint(-r["RAND_F_THRES_DELTA"], 2, [], generator=gen).item()
             if (r["RAND_F_THRES_DELTA"] > 0 and compute_jac_loss) else 0)
    return factor, compute_jac_loss, r["F_THRES"] + delta, r["B_THRES"]


def jac_loss_estimate(f0, z0, vecs=2, create_graph=True):
    """The released Hutchinson estimator (locuslab/deq lib/jacobian.py), restated."""
    result = 0
    for _ in range(vecs):
        v = torch.randn(*z0.shape).to(z0)
        vJ = torch.autograd.grad(f0, z0, v, retain_graph=True, create_graph=create_graph)[0]
        result += vJ.norm() ** 2
    return result / vecs / math.prod(z0.shape)


def released_forward(ref, x, shapes, f_thres, b_thres, compute_jac_loss):
    """The released MDEQ classifier's training forward pass (DEQ mode, implicit backward through a hook)."""
    r = RECIPE
    inj = ref.injection(x)
    sizes = [math.prod(s[1:]) for s in shapes]

    def vec2list(z):
        return [p.reshape(s) for p, s in zip(z.reshape(B, -1).split(sizes, dim=1), shapes)]

    def list2vec(parts):
        return torch.cat([p.reshape(B, -1, 1) for p in parts], dim=1)

    func = lambda z: list2vec(ref.f(vec2list(z), inj))   # noqa: E731
    n = sum(sizes)
    with torch.no_grad():
        z1, f_evals, _, _ = released_anderson(lambda v: func(v.reshape(B, n, 1)).reshape(B, n),
                                              torch.zeros(B, n, dtype=torch.float64), r["M"], r["LAM"], f_thres,
                                              r["EPS"], stop_mode=r["STOP_MODE"])
    z1 = z1.reshape(B, n, 1).requires_grad_()
    new_z1 = func(z1)
    jac_loss = jac_loss_estimate(new_z1, z1) if compute_jac_loss else torch.tensor(0.0, dtype=torch.float64)
    b_evals, handle = [], []

    def backward_hook(grad):
        handle.pop().remove()   # (as released: the adjoint's own vector-Jacobian products must not re-enter it)
        g, evals, _, _ = released_anderson(
            lambda y: (torch.autograd.grad(new_z1, z1, y.reshape(B, n, 1), retain_graph=True)[0] + grad).reshape(B, n),
            torch.zeros(B, n, dtype=torch.float64), r["M"], r["LAM"], b_thres, r["EPS"], stop_mode=r["STOP_MODE"])
        b_evals.append(evals)
        return g.reshape(B, n, 1)

    handle.append(new_z1.register_hook(backward_hook))
    return ref.head(vec2list(new_z1)), jac_loss.reshape(1, -1), f_evals, b_evals


def _knobs(model):
    """The released original MDEQ's knobs (ReLU slope 1, no residual or fusion mixing)."""
    return dict(s=1.0, alpha=0.0, beta=0.0, groups=model.config["num_groups"])


def released_name(name):
    for pattern, repl in RENAMES:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    raise AssertionError(name)


# -- lmdeq's side instrumentation ---------------------------------------------------------------------------
class Recorder:
    """An 'optimiser' that keeps each step's gradients and moves nothing (both sides stay on one point)."""

    def __init__(self, model):
        self.model, self.grads = model, []

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=True)

    def step(self):
        self.grads.append({n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None})


class NoSchedule:
    def step(self):
        pass


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _close(a, b, rtol):
    """||a - b|| <= rtol ||b|| + 1e-13 (a bias in front of a batch norm has a gradient of rounding size only)."""
    return float((a - b).norm()) <= rtol * float(b.norm()) + 1e-13


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = mdeq("cifar10-small", lipschitz=False, **_config()).double()
    model.train()
    return model


def test_the_model_config_is_the_released_recipe():
    cfg = mdeq("cifar10-large", lipschitz=False, **RELEASED_JR).config
    f, b = cfg["forward"], cfg["backward"]["solver"]
    assert (f["name"], b["name"], f["max_iter"], b["max_iter"]) == ("authors_anderson", "authors_anderson", 7, 8)
    assert (f["stop_mode"], b["stop_mode"], f["tol"], b["tol"], cfg["backward"]["x0"]) == \
        ("rel", "rel", 1e-3, 1e-3, "zeros")
    assert (f["m"], f["lam"]) == (6, 1e-4) and (b["m"], b["lam"]) == (6, 1e-4)
    assert cfg["backward"]["method"] == "implicit" and not f["exact"] and not b["exact"]
    assert (cfg["dropout"], cfg["unrolled_layers"], cfg["unrolled_warmup_steps"]) == (0.22, 8, 0)
    assert (cfg["jac_loss_weight"], cfg["jac_loss_freq"], cfg["jac_incremental"], cfg["rand_f_thres_delta"],
            cfg["jac_loss_vecs"]) == (0.5, 0.05, 100_000_000, 2, 2)
    assert cfg["jac_stop_fraction"] * 200 == pytest.approx(90)
    # 90 of 200 epochs -> exactly the first step of epoch 90 of a 200-epoch schedule
    assert JacobianSchedule(cfg, total_steps=200 * 521).stop_step == 90 * 521


def test_same_draws_thresholds_losses_and_gradients_as_the_released_loop(tiny):
    model = tiny
    shapes = model.cell.state_shapes(B)
    total = RECIPE["END_EPOCH"] * RECIPE["STEPS_PER_EPOCH"]
    schedule = JacobianSchedule(model.config, seed=SEED, total_steps=total)
    gen = torch.Generator().manual_seed(derive_seed(SEED, "jacobian"))   # the released loop's draws, same seed
    states = []
    reset = model.cell.reset_dropout

    def recording_reset(*args, **kwargs):
        reset(*args, **kwargs)
        states.append(torch.get_rng_state())   # the global RNG after this pass's dropout masks

    model.cell.reset_dropout = recording_reset
    opt = Recorder(model)
    data = torch.Generator().manual_seed(5)
    flags, kinds = [], set()
    try:
        for step in range(total):
            images = torch.randint(0, 256, (B, 3, 32, 32), generator=data, dtype=torch.uint8)
            labels = torch.randint(0, 10, (B,), generator=data)
            draw = schedule.draw(step)
            done = train_step(model, opt, NoSchedule(), images, labels, torch.device("cpu"), 10,
                              forward=lambda x, **kw: model(x.double(), **kw), jacobian=draw)
            ours_f_evals = model.last_info["f_nstep"]
            ours_b_evals = model.last_info["b_nstep"]
            masks = model.cell.dropout_masks()
            saved_rng = torch.get_rng_state()

            factor, compute, f_thres, b_thres = released_decision(gen, step, step // RECIPE["STEPS_PER_EPOCH"])
            assert (draw.factor, draw.jac_loss) == (pytest.approx(factor), compute), step
            assert draw.model_kwargs().get("max_iter", model.config["forward"]["max_iter"]) == f_thres, step
            flags.append(compute)
            kinds.add((compute, f_thres))

            params = {k: (v.requires_grad_() if v.is_floating_point() and "running" not in k else v)
                      for k, v in transplant(model).items()}
            ref = Released(params, False, True, masks, _knobs(model))
            torch.set_rng_state(states[-1])
            x = normalize(images).double()   # (the same float32 normalisation lmdeq's step applies, then float64)
            output, jac_loss, f_evals, b_evals = released_forward(ref, x, shapes, f_thres, b_thres, compute)
            loss = F.cross_entropy(output.float(), labels)
            jac_loss = jac_loss.mean()
            (loss + factor * jac_loss if factor > 0 else loss).backward()
            torch.set_rng_state(saved_rng)

            assert ours_f_evals == f_evals and ours_b_evals == b_evals[0], step
            assert done.loss == pytest.approx(loss.item(), rel=1e-6)
            if compute:
                assert done.jac_loss == pytest.approx(jac_loss.item(), rel=1e-10)
            else:
                assert done.jac_loss is None
            grads = opt.grads[-1]
            for name, g in grads.items():
                theirs = params[released_name(name)].grad
                assert _close(g, theirs, 1e-5), (step, name, _rel(g, theirs))
    finally:
        model.cell.reset_dropout = reset
    # the run exercised every kind of step: JR with a lower and a higher threshold, plain, and stopped
    assert flags == [True, False, True, False, False, False]
    assert {(True, 5), (True, 8), (False, 7)} <= kinds


def test_one_jr_step_in_float64_matches_tightly(tiny):
    """The same forward and backward without lmdeq's training step (the loss in float64): the JR estimate and
    every gradient agree to rounding."""
    model = tiny
    g = torch.Generator().manual_seed(9)
    x = torch.randn(B, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (B,), generator=g)
    torch.manual_seed(3)
    model.zero_grad(set_to_none=True)
    logits, jr = model(x, jac_loss=True, max_iter=6)
    masks = model.cell.dropout_masks()
    (F.cross_entropy(logits, y) + 0.7 * jr).backward()
    params = {k: (v.requires_grad_() if v.is_floating_point() and "running" not in k else v)
              for k, v in transplant(model).items()}
    ref = Released(params, False, True, masks, _knobs(model))
    # lmdeq drew the masks, then (after the solve) the two Hutchinson vectors: replay from the same point
    torch.manual_seed(3)
    model.cell.reset_dropout(B, x.device, x.dtype)
    assert all(torch.equal(a, b) for a, b in zip(model.cell.dropout_masks(), masks))
    output, jac_loss, _, _ = released_forward(ref, x, model.cell.state_shapes(B), 6, 8, True)
    assert _rel(jr, jac_loss.mean()) < 1e-12
    (F.cross_entropy(output, y) + 0.7 * jac_loss.mean()).backward()
    for name, p in model.named_parameters():
        theirs = params[released_name(name)].grad
        assert _close(p.grad, theirs, 1e-9), (name, _rel(p.grad, theirs))


# -- resume ------------------------------------------------------------------------------------------------
class Crash(Exception):
    pass


def _trainer(out_dir, on_epoch_end=None):
    torch.manual_seed(0)
    model = mdeq("cifar10-small", lipschitz=False, **_config(jac_loss_freq=0.5, jac_stop_fraction=1.0))
    calls = []
    forward = model.forward

    def recording_forward(x, **kw):
        calls.append(dict(kw))
        return forward(x, **kw)

    model.forward = recording_forward
    g = torch.Generator().manual_seed(1)
    data = LabelledImages(torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8),
                          torch.randint(0, 10, (16,), generator=g), tuple(f"c{i}" for i in range(10)))
    cfg = TrainConfig(preset="cifar10-small", lipschitz=False, epochs=2, batch_size=4, seed=3, augment=False)
    trainer = Trainer(model, cfg, data, None, torch.device("cpu"), out_dir=out_dir, progress=False,
                      on_epoch_end=on_epoch_end, print_fn=lambda line: None)
    return trainer, calls


def test_the_decisions_continue_exactly_after_a_resume(tmp_path):
    whole, calls = _trainer(tmp_path / "whole")
    whole.fit()
    per_epoch = len(calls) // 2
    assert len(calls) == 8 and calls[:per_epoch] != calls[per_epoch:]   # (a restart from the seed would repeat)
    assert any("jac_loss" in c for c in calls) and any("max_iter" in c for c in calls)
    assert [r["jr_steps"] for r in whole.history] == [sum("jac_loss" in c for c in calls[:4]),
                                                      sum("jac_loss" in c for c in calls[4:])]

    def crash(record):
        raise Crash   # after epoch 1's commit: a process that dies between epochs

    first, first_calls = _trainer(tmp_path / "split", on_epoch_end=crash)
    with pytest.raises(Crash):
        first.fit()
    assert first_calls == calls[:per_epoch]
    torch.manual_seed(123)   # a new process: another global RNG state, a fresh decision generator
    resumed, resumed_calls = _trainer(tmp_path / "split")
    ckpt = load_checkpoint(tmp_path / "split" / "last.pt", kind=RUN)
    assert "jacobian" in ckpt["rng"]["generators"]
    resumed.load_state_dict(ckpt)
    resumed.fit()
    assert resumed_calls == calls[per_epoch:]
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    timeless = lambda r: {k: v for k, v in r.items() if k not in ("train_time_s", "images_per_s")}  # noqa: E731
    assert [timeless(r) for r in resumed.history] == [timeless(r) for r in whole.history]


def test_a_checkpoint_without_the_generator_is_refused(tmp_path):
    from lmdeq.errors import CheckpointError

    trainer, _ = _trainer(tmp_path / "a")
    state = trainer.state_dict()
    del state["rng"]["generators"]
    with pytest.raises(CheckpointError, match="jacobian"):
        trainer.load_state_dict(state)


def test_during_the_unrolled_warm_up_the_estimate_is_at_the_last_state():
    """As released (``not deq_mode``): z2 = z1.clone().detach().requires_grad_(); jac_loss_estimate(func(z2), z2)."""
    from lmdeq.deq import jac_reg, jacobian_pair
    from lmdeq.models.problem import unrolled

    torch.manual_seed(0)
    model = mdeq("cifar10-small", lipschitz=False, **_config(unrolled_warmup_steps=5, unrolled_layers=3)).double()
    x = torch.randn(B, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(8)
    logits, jr = model(x, jac_loss=True)
    torch.manual_seed(8)
    f, z0 = model.fixed_point_problem(x)    # the same dropout masks
    z, _ = unrolled(f, z0, 3)
    expected = jac_reg(*jacobian_pair(f, [p.detach() for p in z]), vecs=2)
    assert _rel(jr, expected) < 1e-12 and _rel(logits, model.head(z)) < 1e-12
