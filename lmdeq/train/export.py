"""Model-only checkpoints: a trained model small enough to keep in git, for ``lmdeq eval --checkpoint`` and
``lmdeq bench --weights``.

A model-only checkpoint is a training checkpoint (:mod:`lmdeq.train.checkpoint`, same format and loader)
that holds only what evaluation needs: the model state (weights, batch-norm statistics and, for the
certified Lipschitz MDEQ, the conv-norm estimates, so the rebuilt model computes exactly the trained
function), ``model_config``, ``train_config`` (data source, split seed and fraction, so ``lmdeq eval``
re-derives the run's validation images), the epoch and step, and the validation accuracy of these weights
(``val_acc``, when known). The optimiser,
scheduler and RNG state of a full checkpoint are dropped (about two thirds of its size with Adam); a
model-only checkpoint cannot be resumed (``"kind": "model"``).

    python -m lmdeq.train.export runs/small/best.pt weights/cifar10-small-lipschitz.pt

prints the file's size and sha256.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .hooks import certified_bound, model_config

__all__ = ["KIND", "model_checkpoint", "export_weights", "sha256", "main"]

KIND = "model"
_KEEP = ("model_state", "model_config", "train_config", "epoch", "step", "lipschitz_bound", "lipschitz_bound_eval")


def model_checkpoint(model: torch.nn.Module, cfg: TrainConfig, epoch: int, step: int,
                     val_acc: float | None = None) -> dict:
    """The model-only payload for ``model`` trained under ``cfg`` (pass it to ``save_checkpoint``)."""
    return {"kind": KIND, "model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "model_config": model_config(model), "train_config": cfg.to_dict(), "epoch": epoch, "step": step,
            "val_acc": val_acc, "lipschitz_bound": certified_bound(model, training=True),
            "lipschitz_bound_eval": certified_bound(model, training=False)}


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_weights(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write the model-only checkpoint of training checkpoint ``src`` to ``dst``; returns
    {'path', 'bytes', 'sha256', 'epoch', 'val_acc'} (val_acc: of these weights, known for a best.pt)."""
    ckpt = load_checkpoint(src)
    missing = [k for k in ("model_state", "model_config", "train_config", "epoch") if k not in ckpt]
    if missing or not ckpt.get("model_config"):
        raise ValueError(f"checkpoint: {src} lacks {missing or ['model_config']}; it cannot be exported")
    if Path(src).resolve() == Path(dst).resolve():
        raise ValueError(f"dst: {dst} is the source checkpoint itself")
    payload = {"kind": KIND, **{k: ckpt[k] for k in _KEEP if k in ckpt}}
    payload["val_acc"] = ckpt.get("best_val_acc") if ckpt.get("best_epoch") == ckpt["epoch"] else ckpt.get("val_acc")
    payload["model_state"] = {k: v.contiguous().clone() for k, v in ckpt["model_state"].items()}
    save_checkpoint(dst, payload)
    return {"path": str(dst), "bytes": os.path.getsize(dst), "sha256": sha256(dst), "epoch": ckpt["epoch"],
            "val_acc": payload["val_acc"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmdeq.train.export", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="a checkpoint written by lmdeq train (best.pt / last.pt)")
    p.add_argument("dst", help="the model-only checkpoint to write")
    args = p.parse_args(argv)
    try:
        out = export_weights(args.src, args.dst)
    except (ValueError, FileNotFoundError) as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    acc = "n/a" if out["val_acc"] is None else f"{out['val_acc']:.4f}"
    print(f"wrote {out['path']}: {out['bytes']:,} bytes, sha256 {out['sha256']}, epoch {out['epoch']}, "
          f"val acc {acc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
