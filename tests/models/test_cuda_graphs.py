"""The MDEQ classifier's CUDA-graphed solves (**APRIORI_SOLVES, cuda_graphs=True) equal its eager
solves: logits, parameter gradients and solver stats, in training mode with dropout masks that change
every forward pass, across optimiser steps (weights updated in place) and new batches.

On the CPU the graph is the test double of tests/deq/graph_double.py; the `gpu` test captures for real.
"""
import pytest
import torch
from torch.nn import functional as F

from lmdeq.cuda_graphs import GraphCache
from lmdeq.models import APRIORI_SOLVES, mdeq

from ..deq.graph_double import RerunCall
from .tiny import TINY3


def _pair(device, call_type):
    torch.manual_seed(0)
    graphed = mdeq("cifar10-small", **TINY3, dropout=0.2, **APRIORI_SOLVES).to(device)
    if call_type is not None:
        graphed.graphs = GraphCache(call_type=call_type)
    eager = mdeq(**{**graphed.config, "cuda_graphs": False}).to(device)
    eager.load_state_dict(graphed.state_dict())
    return graphed, eager


def _step(model, opt, x, y, seed, amp):
    torch.manual_seed(seed)  # same dropout masks for both models
    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x).float()
    F.cross_entropy(logits, y).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    opt.step()
    model.constraint_step()
    return logits.detach(), grads


def _compare(device, call_type, tol, amp=False):
    graphed, eager = _pair(device, call_type)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (graphed, eager)]
    g = torch.Generator().manual_seed(1)
    for step in range(3):  # step 0 captures, later steps replay with new x, masks and weights
        x = torch.randn(4, 3, 32, 32, generator=g).to(device)
        y = torch.randint(0, 10, (4,), generator=g).to(device)
        (lg, gg), (le, ge) = (_step(m, o, x, y, seed=100 + step, amp=amp) for m, o in zip((graphed, eager), opts))
        assert float((lg - le).norm() / le.norm()) < tol, f"logits differ at step {step}"
        for a, b in zip(gg, ge):
            assert float((a - b).norm()) <= tol * float(b.norm()) + 1e-12, f"gradients differ at step {step}"
        info_g, info_e = graphed.last_info, eager.last_info
        assert info_g["cuda_graph"] is True and info_e["cuda_graph"] is False
        assert info_g["f_nstep"] == info_e["f_nstep"] and info_g["b_nstep"] == info_e["b_nstep"]
    graphed.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32, generator=g).to(device)
        eager.eval()
        assert float((graphed(x) - eager(x)).norm() / eager(x).norm()) < tol
    return graphed.graphs


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_model_graphed_solves_equal_eager_cpu_double(amp):
    graphs = _compare("cpu", RerunCall, 1e-5, amp)
    # training: forward + adjoint captured once (the bound, hence the counts, may change once with the
    # weights); eval: one more forward capture
    assert 3 <= graphs.captures <= 5 and graphs.replays >= 7
    stats = graphs.stats()
    assert stats["captures"] == graphs.captures and stats["replays"] == graphs.replays and stats["failures"] == 0
    assert stats["capture_s"] > 0 and stats["graphs"] == len(graphs) and stats["evictions"] == 0


def test_capture_counts_are_visible():
    """last_info['graph_captures'] and model.graph_stats(): what a benchmark reads around its timed steps."""
    torch.manual_seed(0)
    model = mdeq("cifar10-small", **TINY3, **APRIORI_SOLVES)
    model.graphs = GraphCache(call_type=RerunCall)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    first = model.graph_stats()["captures"]
    assert first == 2 and model.last_info["graph_captures"] == 1  # forward (at its end), then the adjoint
    model(x).sum().backward()  # same counts (weights unchanged): replays only
    assert model.graph_stats()["captures"] == first and model.last_info["graph_captures"] == first


def test_no_graphs_for_checked_solves_or_when_disabled(monkeypatch):
    torch.manual_seed(0)
    model = mdeq("cifar10-small", **TINY3)  # checked solves (the default)
    model.graphs = GraphCache(call_type=RerunCall)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert len(model.graphs) == 0 and model.last_info["cuda_graph"] is False
    monkeypatch.setenv("LMDEQ_CUDA_GRAPHS", "0")
    model = mdeq("cifar10-small", **TINY3, **APRIORI_SOLVES)
    model.graphs = GraphCache(call_type=RerunCall)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert len(model.graphs) == 0 and model.last_info["cuda_graph"] is False


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_model_cuda_graphed_solves_equal_eager_on_gpu(amp):
    torch.backends.cudnn.allow_tf32 = False
    try:
        graphs = _compare("cuda", None, 1e-2 if amp else 1e-4, amp)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    assert graphs.captures >= 3 and not graphs.failures
