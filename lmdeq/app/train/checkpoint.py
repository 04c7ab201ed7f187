"""Training checkpoints: atomic writes, safe loads, and the RNG state a bit-exact resume needs.

A checkpoint is a plain dict loaded with ``torch.load(..., weights_only=True)`` (no pickled code ever
runs), of one of two kinds:

* ``run`` (``last.pt``): a run's whole state after a completed epoch: model state and ``model.config``,
  training config, optimiser and scheduler state, completed epochs and optimiser steps, the torch / CUDA /
  numpy / python RNG states (and those of the run's own generators, e.g. the Jacobian-regularisation
  decisions), the metrics record of every epoch so far (``history``) and the best epoch's bookkeeping and
  weights (``best``). It alone determines the run: ``metrics.jsonl`` and ``best.pt`` are
  derived from it (:mod:`lmdeq.app.train.rundir`). Written within an epoch (a step checkpoint) it also holds
  ``epoch_progress``, the progress of that epoch (:mod:`lmdeq.app.train.trainer`); absent or None: at an epoch
  end (files written before step checkpoints existed have none).
* ``best`` (``best.pt``): the best epoch's weights with its configs and record, for ``lmdeq eval`` and
  ``lmdeq bench --weights``, and (files written since, optional) the digests of the images its run trained and
  validated on (``data_digest``), which ``lmdeq eval`` checks; not resumable.

The data order needs no saved generator: each epoch's batches come from a generator seeded by (seed,
epoch). Files are replaced atomically (:mod:`lmdeq.app.atomic`). Format 3: the model config holds its solves
as ``forward`` / ``backward`` sections (:mod:`lmdeq.models.solves`); files of older formats are refused with a
message saying so.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch

from ...errors import CheckpointError
from ..atomic import atomic_write_bytes
from ..torch_files import load_failure_reason, torch_save_bytes

FORMAT = "lmdeq-train-checkpoint"
VERSION = 3
RUN, BEST = "run", "best"  # a run's full state (last.pt) / the best epoch's weights (best.pt)
LAST_NAME = "last.pt"
_MODEL = ("model_state", "model_config", "train_config", "epoch")
_REQUIRED = {
    RUN: _MODEL + ("optimizer", "scheduler", "step", "train_size", "best_val_acc", "best_epoch", "lipschitz_bound",
                   "lipschitz_bound_eval", "rng", "run_id", "classes", "history", "best_model_state", "data_digest"),
    BEST: _MODEL + ("step", "run_id", "classes", "record", "best_val_acc", "best_epoch", "lipschitz_bound",
                    "lipschitz_bound_eval"),
}


def capture_rng_state(generators: Optional[Mapping[str, torch.Generator]] = None) -> dict:
    """The global RNG states (torch CPU and CUDA, numpy, python) and, under ``'generators'``, the states of
    the run's own ``generators`` by name (e.g. the Jacobian-regularisation decisions, lmdeq.app.train.jacobian)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if generators:
        state["generators"] = {name: g.get_state() for name, g in generators.items()}
    return state


def restore_generators(state: dict, generators: Mapping[str, torch.Generator]) -> None:
    """Set each of ``generators`` to its state saved by :func:`capture_rng_state` under its name
    (CheckpointError naming the ones that were not saved)."""
    saved = state.get("generators") or {}
    missing = sorted(set(generators) - set(saved))
    if missing:
        raise CheckpointError(f"checkpoint: its RNG state has no saved state of the generator(s) {missing} that this "
                              "run draws from (a run checkpoint written without them cannot continue this run "
                              "exactly)")
    for name, g in generators.items():
        g.set_state(saved[name])


def restore_rng_state(state: dict, generators: Optional[Mapping[str, torch.Generator]] = None) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states for the devices present), and with
    ``generators`` their saved states (:func:`restore_generators`)."""
    if generators:
        restore_generators(state, generators)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        n = min(len(state["cuda"]), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(state["cuda"][i], i)
    npk = state["numpy"]
    np.random.set_state(("MT19937", npk["key"].numpy().astype(np.uint32), npk["pos"], npk["has_gauss"],
                         npk["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def save_checkpoint(path: str | os.PathLike, payload: dict, kind: str = RUN) -> None:
    """Write ``payload`` as a checkpoint of ``kind`` (:data:`RUN` or :data:`BEST`), atomically."""
    path = Path(path)
    atomic_write_bytes(path, torch_save_bytes({"format": FORMAT, "version": VERSION, "kind": kind, **payload}),
                       fault=path.name)


# The type of each field a checkpoint may hold (a field of another type is a damaged checkpoint, named as such).
_FIELD_TYPES = {"train_config": dict, "model_config": (dict, type(None)), "epoch": int, "step": int,
                "train_size": int, "classes": (list, tuple, type(None)), "history": list, "run_id": (str, type(None)),
                "best_val_acc": (float, int, type(None)), "best_epoch": (int, type(None)),
                "lipschitz_bound": (float, int, type(None)), "lipschitz_bound_eval": (float, int, type(None)),
                "optimizer": dict, "scheduler": dict, "rng": dict, "data_digest": dict,
                "best_model_state": (dict, type(None)), "record": (dict, type(None)), "world_size": int,
                "forked_from": (str, type(None)), "elastic_run_id": (str, type(None)),
                "epoch_progress": (dict, type(None))}


def _bad_items(field: str, value) -> bool:
    """Whether the items of a well-typed container field are of the wrong kind."""
    if field == "classes" and value is not None:
        return not all(isinstance(c, str) for c in value)
    if field == "history":
        return not all(isinstance(r, dict) for r in value)
    if field in ("epoch", "step", "train_size", "world_size"):
        return isinstance(value, bool) or value < (1 if field == "world_size" else 0)
    if field == "best_val_acc" and value is not None:
        return isinstance(value, bool) or not 0.0 <= value <= 1.0
    if field == "best_epoch" and value is not None:
        return isinstance(value, bool) or value < 1
    return False


def _inconsistent(ckpt: dict) -> str | None:
    """What contradicts itself in a well-typed run checkpoint's best-epoch bookkeeping (which a resume continues),
    or None. (A model-only checkpoint may name its epoch without a validation accuracy.)"""
    if ckpt.get("kind") != RUN:
        return None
    best_epoch, best_acc = ckpt.get("best_epoch"), ckpt.get("best_val_acc")
    if (best_epoch is None) != (best_acc is None):
        return f"best_epoch {best_epoch!r} and best_val_acc {best_acc!r} (both set or both None)"
    return None


def load_checkpoint(path: str | os.PathLike, map_location="cpu", kind: str | None = None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (with ``weights_only=True``: no pickled code
    runs). ``kind=RUN``: it must be a run's full state (resumable). CheckpointError for anything else,
    naming the file and what is wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint: {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {path} is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle that weights_only refuses: all unreadable
        raise CheckpointError(
            f"checkpoint: {path} is not a readable lmdeq checkpoint ({load_failure_reason(err)})") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("format"), str) or ckpt["format"] != FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not an lmdeq training checkpoint")
    version = ckpt.get("version")
    if type(version) is not int or version != VERSION:
        older = isinstance(version, int) and not isinstance(version, bool) and 1 <= version < VERSION
        raise CheckpointError(f"checkpoint: {path} has format version {version!r}, this lmdeq reads {VERSION}"
                              + (" (it was written by an older lmdeq, whose model configs spell the solves in flat "
                                 "f_/b_ keys; evaluate it with that version or retrain)" if older else ""))
    ckpt_kind = ckpt.get("kind")
    required = _REQUIRED.get(ckpt_kind) if isinstance(ckpt_kind, str) else None
    if required is None:
        raise CheckpointError(f"checkpoint: {path} has an unknown kind {ckpt_kind!r}")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint: {path} is incomplete: it lacks {missing}")
    if not isinstance(ckpt["model_state"], dict) or not all(torch.is_tensor(v) for v in ckpt["model_state"].values()):
        raise CheckpointError(f"checkpoint: {path} has no model_state of tensors")
    for field, types in _FIELD_TYPES.items():
        if field in ckpt and not (isinstance(ckpt[field], types) and not _bad_items(field, ckpt[field])):
            got = type(ckpt[field]).__name__
            raise CheckpointError(f"checkpoint: {path} has a damaged {field} field (a {got}: {str(ckpt[field])[:40]!r})")
    problem = _inconsistent(ckpt)
    if problem is not None:
        raise CheckpointError(f"checkpoint: {path} is damaged: {problem}")
    if kind == RUN:
        if ckpt_kind == BEST:
            raise CheckpointError(f"checkpoint: {path} holds the weights of the best epoch only (no optimiser state, "
                                  f"no later epochs); resume from the run's {LAST_NAME}")
    return ckpt
