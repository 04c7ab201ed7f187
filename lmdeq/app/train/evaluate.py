"""Evaluation of a classifier on labelled images: mean cross-entropy, top-1 accuracy, solver statistics.

Data-parallel (``dist`` with W > 1 ranks): rank r evaluates the r-th of W contiguous shards of the images
and the ranks sum the loss, the hits, the solver statistics and the counts, so every rank returns the
metrics of the whole set (the solver statistics weighted by batch size, as in one process).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ...errors import NonFiniteError
from ..data.augment import DataDefaults, normalize
from ..data.batches import eval_batches
from .distributed import Dist
from .hooks import solver_stats
from ..data.images import LabelledImages

SOLVER_SUMS = ("f_nstep", "f_residual")  # the solver statistics of an evaluation (forward solves only)


def check_logits(logits: torch.Tensor, batch: int, num_classes: int) -> None:
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise ValueError(f"model must return logits of shape (B={batch}, classes), got {tuple(logits.shape)}")
    if logits.shape[1] < num_classes:
        raise ValueError(f"model returns {logits.shape[1]} logits but the data has {num_classes} classes")


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: LabelledImages, batch_size: int, device: torch.device,
             workers: int = 0, progress: bool = False, desc: str = "eval", dist: Dist | None = None,
             stats: DataDefaults = DataDefaults()) -> dict:
    """{'loss', 'acc', 'n', 'f_nstep', 'f_residual' (batch-size-weighted means), 'time_s'} over ``data``
    (with ``dist``: this rank evaluates its shard, see the module docstring).

    The model's train/eval mode is restored afterwards. NaN/Inf logits are a NonFiniteError.
    """
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    solver = {}
    weights = 0
    n = len(data)
    parallel = dist is not None and dist.enabled
    if parallel:
        lo, hi = dist.shard(n)
        data = data.subset(torch.arange(lo, hi))
    loader = eval_batches(data, batch_size, workers, pin_memory=device.type == "cuda") if len(data) else []
    if progress:
        from tqdm.auto import tqdm
        loader = tqdm(loader, desc=desc, leave=False, unit="batch")
    try:
        for images, labels in loader:
            x = normalize(images.to(device, non_blocking=True), stats.mean, stats.std)
            y = labels.to(device, non_blocking=True)
            logits = model(x)
            check_logits(logits, y.shape[0], len(data.classes))
            if not bool(torch.isfinite(logits).all()):
                raise NonFiniteError(f"{desc}: the model returns NaN/Inf logits on batch {weights // batch_size + 1} "
                                     "(non-finite weights, or a diverged solve)")
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(dim=1) == y).sum()
            for k, v in solver_stats(model, SOLVER_SUMS).items():
                solver[k] = solver.get(k, 0.0) + v * y.shape[0]
            weights += y.shape[0]
    finally:
        model.train(was_training)
    if parallel:
        loss_sum, correct, solver, weights = _summed(dist, loss_sum, correct, solver, weights)
    out = {"loss": float(loss_sum) / n, "acc": int(correct) / n, "n": n}
    out.update({k: v / weights for k, v in solver.items()})
    out["time_s"] = time.perf_counter() - start
    return out


def _summed(dist: Dist, loss_sum: torch.Tensor, correct: torch.Tensor, solver: dict, weights: int):
    """The four accumulators of :func:`evaluate` summed over the ranks (a rank with an empty shard adds
    nothing; a statistic is kept when every rank that evaluated a batch reported it)."""
    present = [k in solver for k in SOLVER_SUMS]
    local = torch.tensor([float(loss_sum), float(correct), float(weights)]
                         + [solver.get(k, 0.0) for k in SOLVER_SUMS]
                         + [float(weights) if p else 0.0 for p in present], dtype=torch.float64)
    total = dist.all_sum(local).tolist()
    m = len(SOLVER_SUMS)
    weights = int(total[2])
    sums = {k: total[3 + i] for i, k in enumerate(SOLVER_SUMS) if weights and total[3 + m + i] == weights}
    return total[0], int(total[1]), sums, weights
