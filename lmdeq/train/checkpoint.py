"""Training checkpoints: atomic writes, safe loads, and the RNG state a bit-exact resume needs.

A checkpoint is a plain dict (loadable with ``torch.load(..., weights_only=True)``): model state and
``model.config``, training config, optimiser and scheduler state, completed epochs and optimiser
steps, best validation accuracy, and the torch / CUDA / numpy / python RNG states. The data order
needs no saved generator: each epoch's batches come from a generator seeded by (seed, epoch).
Files are written to a temporary file in the target directory, fsync'ed and renamed over the
target, so a crash leaves either the old or the new checkpoint, never a torn one.
"""
from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import numpy as np
import torch

FORMAT = "lmdeq-train-checkpoint"
VERSION = 1


def capture_rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states for the devices present)."""
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


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save into a unique temporary file beside ``path`` (created with the usual permissions),
    fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    atomic_torch_save({"format": FORMAT, "version": VERSION, **payload}, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint: {path} is not a readable lmdeq checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {path} is not an lmdeq training checkpoint")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"checkpoint: {path} has format version {ckpt.get('version')}, this lmdeq reads {VERSION}")
    return ckpt
