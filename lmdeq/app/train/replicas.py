"""The model's replicas in a data-parallel run: wrapping, SyncBatchNorm, and keeping every rank's copy
identical.

Every rank holds a full copy of the model. DistributedDataParallel averages the gradients over the
ranks in the backward pass, so identical weights stay identical after each optimiser step. The rest of
the model's state must stay identical too:

* the certified constraint's state (each conv's norm estimate sigma_hat and power-iteration vector, the
  GroupNorm gamma projection) is a deterministic function of the weights and of the previous state, so
  it stays identical wherever the kernels are deterministic; :func:`broadcast_state` starts every rank
  from rank 0's state (after the model is built or a checkpoint loaded) and :func:`broadcast_buffers`
  puts rank 0's buffers on every rank after each epoch;
* BatchNorm running statistics are updated from each rank's own shard in training mode (unless
  ``sync_bn``): the model keeps rank 0's, as DDP's default ``broadcast_buffers`` would, but they are
  broadcast once per epoch instead of at every forward pass (they are read only in evaluation);
* step counters kept in buffers (the original MDEQ's unrolled warm-up) advance alike on every rank.

:func:`broadcast_state` loads the broadcast state with ``load_state_dict`` on every rank: a model whose
layers tie their norm estimates to the weights' versions (``CappedConv2d``) then counts its estimates as
current. (DDP's own broadcast of the weights at construction writes them in place, which would
otherwise mark the estimates stale and make the next forward pass re-estimate them.)

:func:`check_in_sync` compares a digest of every parameter and buffer across the ranks.
"""
from __future__ import annotations

import hashlib
import inspect
import logging

import torch
from torch.nn.parallel import DistributedDataParallel

from ...errors import ConfigError
from .distributed import Dist

__all__ = ["wrap", "sync_batchnorm", "broadcast_state", "broadcast_buffers", "state_digests", "check_in_sync"]

log = logging.getLogger("lmdeq.app.train")


def sync_batchnorm(model: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    """``model`` with every BatchNorm layer a ``torch.nn.SyncBatchNorm`` (batch statistics over the whole
    global batch instead of each rank's shard; same parameters, buffers and state-dict keys). torch's
    SyncBatchNorm runs on CUDA only: ConfigError on another device."""
    if not dist.enabled:
        log.warning("--sync-bn: this run has one process; there is nothing to synchronise")
        return model
    if device.type != "cuda":
        raise ConfigError(f"--sync-bn: torch's SyncBatchNorm runs on CUDA devices only, this run trains on {device}; "
                          "leave --sync-bn out (each process then normalises with its own shard's batch statistics)")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: torch.nn.Module, dist: Dist, device: torch.device) -> DistributedDataParallel:
    """``model`` in DistributedDataParallel on this rank's device, without DDP's per-forward buffer
    broadcast (:func:`broadcast_buffers` does it once per epoch)."""
    kwargs = {}
    params = inspect.signature(DistributedDataParallel).parameters
    kwargs["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = False
    if device.type == "cuda":
        kwargs.update(device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model, **kwargs)


@torch.no_grad()
def broadcast_state(model: torch.nn.Module, dist: Dist) -> None:
    """Rank 0's parameters and buffers on every rank, loaded with ``load_state_dict`` (see the module
    docstring)."""
    if not dist.enabled:
        return
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for v in state.values():
        dist.broadcast_(v)
    model.load_state_dict(state)


@torch.no_grad()
def broadcast_buffers(model: torch.nn.Module, dist: Dist) -> None:
    """Rank 0's buffers (BatchNorm statistics, norm estimates, step counters) on every rank, in place."""
    if not dist.enabled:
        return
    for buf in model.buffers():
        dist.broadcast_(buf)


def state_digests(model: torch.nn.Module) -> dict[str, str]:
    """name -> a digest of the exact bytes of every parameter and buffer (state-dict order)."""
    out = {}
    for name, t in model.state_dict().items():
        data = t.detach().to("cpu").contiguous()
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        out[name] = hashlib.blake2b(data.numpy().tobytes(), digest_size=16).hexdigest()
    return out


def check_in_sync(model: torch.nn.Module, dist: Dist, when: str) -> None:
    """RuntimeError naming the tensors in which some rank's model differs from rank 0's (the replicas
    diverged: a bug, or a non-deterministic kernel)."""
    if not dist.enabled:
        return
    digests = dist.all_gather_object(state_digests(model))
    for rank, theirs in enumerate(digests[1:], start=1):
        differ = [k for k in digests[0] if theirs.get(k) != digests[0][k]]
        if differ:
            raise RuntimeError(f"distributed: {when}, rank {rank}'s model differs from rank 0's in {len(differ)} "
                               f"tensor(s), e.g. {differ[:3]}; the replicas diverged")
