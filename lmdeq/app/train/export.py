"""Model-only checkpoints: a trained model small enough to keep in git, for ``lmdeq eval --checkpoint`` and
``lmdeq bench --weights``.

A model-only checkpoint is a ``best``-kind training checkpoint (:mod:`lmdeq.app.train.checkpoint`, same format
and loader, the kind a run's ``best.pt`` is): the model state (weights, batch-norm statistics and, for the
certified Lipschitz MDEQ, the conv-norm estimates, so the rebuilt model computes exactly the trained
function), ``model_config``, ``train_config`` (data source, split seed and fraction, so ``lmdeq eval``
re-derives the run's validation images), the epoch and step, its record and validation accuracy. No
optimiser, scheduler or RNG state: it cannot be resumed.

    python -m lmdeq.app.train.export runs/small/best.pt weights/cifar10-small-lipschitz.pt

takes a run's ``best.pt`` (or ``last.pt``, whose best epoch it exports) and prints the file's size and sha256.
"""
from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

import torch

from ..argtypes import output_file, path
from ...errors import CheckpointError
from ...files import file_sha256
from .checkpoint import BEST, RUN, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .hooks import certified_bound, model_config
from .rundir import best_payload

__all__ = ["model_checkpoint", "export_weights", "main"]


def model_checkpoint(model: torch.nn.Module, cfg: TrainConfig, epoch: int, step: int, classes,
                     val_acc: float | None = None) -> dict:
    """The model-only payload of ``model`` trained under ``cfg`` (save it with
    ``save_checkpoint(path, payload, BEST)``)."""
    bounds = {"lipschitz_bound": certified_bound(model, training=True),
              "lipschitz_bound_eval": certified_bound(model, training=False)}
    record = {"epoch": epoch, "step": step, "val_acc": val_acc, **bounds}
    return {"model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "model_config": model_config(model), "train_config": cfg.to_dict(), "epoch": epoch, "step": step,
            "run_id": uuid.uuid4().hex, "classes": list(classes), "record": record, "best_val_acc": val_acc,
            "best_epoch": epoch, **bounds}


def export_weights(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write the model-only checkpoint of training checkpoint ``src`` (a run's best.pt, or its last.pt: the
    best epoch) to ``dst``; returns {'path', 'bytes', 'sha256', 'epoch', 'val_acc'}."""
    if Path(src).resolve() == Path(dst).resolve():
        raise CheckpointError(f"dst: {dst} is the source checkpoint itself")
    ckpt = load_checkpoint(src)
    if ckpt["kind"] == RUN:
        if ckpt["best_epoch"] is None:
            raise CheckpointError(f"checkpoint: {src} has no validated epoch to export (the run had no validation)")
        payload = best_payload(ckpt)
    else:
        payload = {k: v for k, v in ckpt.items() if k not in ("format", "version", "kind")}
    payload["model_state"] = {k: v.contiguous().clone() for k, v in payload["model_state"].items()}
    save_checkpoint(dst, payload, BEST)
    return {"path": str(dst), "bytes": os.path.getsize(dst), "sha256": file_sha256(dst), "epoch": payload["epoch"],
            "val_acc": payload["best_val_acc"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmdeq.app.train.export", description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=path, help="a checkpoint written by lmdeq train (best.pt / last.pt)")
    p.add_argument("dst", type=output_file, help="the model-only checkpoint to write")
    args = p.parse_args(argv)
    try:
        out = export_weights(args.src, args.dst)
    except CheckpointError as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    acc = "n/a" if out["val_acc"] is None else f"{out['val_acc']:.4f}"
    print(f"wrote {out['path']}: {out['bytes']:,} bytes, sha256 {out['sha256']}, epoch {out['epoch']}, "
          f"val acc {acc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
