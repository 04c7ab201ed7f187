"""Entry points behind ``lmdeq train`` and ``lmdeq eval``: device, data, model, resume, then the loop.

Order of a run: resolve the device; load the checkpoint to resume (if any) and check that the
config agrees with it; prepare the data; seed python/numpy/torch with ``cfg.seed``; build the model
(from the checkpoint's ``model_config`` when resuming); restore the checkpoint; train.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import load_checkpoint, seed_everything
from .config import RESUME_MAY_CHANGE, TrainConfig
from .data import Splits, prepare_splits
from .evaluate import evaluate
from .hooks import certified_bound
from .images import LabelledImages
from .sources import load_source
from .split import stratified_subset
from .trainer import LAST, Trainer

EVAL_SPLITS = ("val", "train", "all")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'; ValueError otherwise."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string, got {type(spec).__name__}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"device: {spec!r} is not a device ('auto', 'cpu', 'cuda', 'cuda:N')") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {spec!r} requested but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device: {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise ValueError(f"device: {spec!r} is not supported (use 'auto', 'cpu' or 'cuda[:N]')")
    return device


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """``lmdeq.models.mdeq(preset, lipschitz=..., **model_overrides)``."""
    from lmdeq.models import mdeq

    return mdeq(cfg.preset, lipschitz=cfg.lipschitz, **cfg.model_overrides)


def model_from_config(config: dict) -> torch.nn.Module:
    from lmdeq.models import mdeq

    return mdeq(**config)


def check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    """ValueError naming every setting that differs from the checkpoint's and would change the run."""
    current = cfg.to_dict()
    diffs = [f"{k}={current[k]!r} (checkpoint: {saved.get(k)!r})" for k in current
             if k not in RESUME_MAY_CHANGE and saved.get(k) != current[k]]
    if diffs:
        raise ValueError("cannot resume with settings that differ from the checkpoint's: " + ", ".join(diffs))


def run_training(cfg: TrainConfig, *, device: str | torch.device = "auto", workers: int = 0,
                 out_dir: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True, bound_every: int = 50,
                 model_factory: Callable[[TrainConfig], torch.nn.Module] | None = None,
                 on_epoch_end: Callable[[dict], None] | None = None,
                 print_fn: Callable[[str], None] = print) -> dict:
    """Train per ``cfg`` (resuming from ``resume`` if given) and return the trainer's summary.

    ``model_factory(cfg)`` builds the model (default :func:`build_model`, or the checkpoint's
    ``model_config`` when resuming). Refuses to overwrite a run in ``out_dir`` unless resuming.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    dev = resolve_device(device)
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        check_resume_config(ckpt["train_config"], cfg)
    elif out_dir is not None and (Path(out_dir) / LAST).exists():
        raise FileExistsError(f"out: {out_dir} already holds a run ({LAST}); "
                              "resume it or choose another output directory")
    splits = prepare_splits(cfg, cache_dir, workers, progress)
    print_fn(f"data: {splits.describe()}")
    seed_everything(cfg.seed)
    label = ""
    if model_factory is None:
        label = f"{cfg.preset} ({'lipschitz' if cfg.lipschitz else 'original'}) "
        saved_config = ckpt.get("model_config") if ckpt is not None else None
        model_factory = (lambda _cfg: model_from_config(saved_config)) if saved_config else build_model
    model = model_factory(cfg).to(dev)
    trainer = Trainer(model, cfg, splits.train, splits.val, dev, workers=workers, out_dir=out_dir,
                      progress=progress, bound_every=bound_every, on_epoch_end=on_epoch_end, print_fn=print_fn)
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        print_fn(f"resumed from {resume} after epoch {trainer.epoch} (step {trainer.step})")
    n_params = sum(p.numel() for p in model.parameters())
    print_fn(f"model: {label}{type(model).__name__}, {n_params:,} parameters, "
             f"certified L = {trainer.bound if trainer.bound is not None else 'n/a'}; device {dev}")
    return trainer.fit()


def eval_images(cfg: TrainConfig, split: str, limit: int | None, cache_dir=None, workers: int = 0,
                progress: bool = False) -> tuple[str, LabelledImages]:
    """(name, LabelledImages) to evaluate: the run's validation images ('val'), its training images
    ('train'), or every image of ``cfg.data`` ('all'); optionally a stratified subset of ``limit``."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    if split == "all":
        name, images = "all", load_source(cfg.data, cache_dir, workers, progress).train
    else:
        splits: Splits = prepare_splits(cfg, cache_dir, workers, progress)
        if split == "val":
            if splits.val is None:
                raise ValueError("split: this run has no validation images (val_fraction 0, no test split); "
                                 "use --split all or --val-fraction")
            name, images = f"val ({splits.val_name})", splits.val
        else:
            name, images = "train", splits.train
    if limit is not None and limit < len(images):
        images = images.subset(stratified_subset(images.labels, len(images.classes), limit, cfg.seed, "eval"))
    return name, images


def run_evaluation(checkpoint: str | os.PathLike, *, data: str | None = None, split: str = "val",
                   limit: int | None = None, batch_size: int | None = None, device="auto", workers: int = 0,
                   cache_dir=None, progress: bool = True,
                   model_factory: Callable[[dict], torch.nn.Module] | None = None) -> dict:
    """Evaluate a training checkpoint; returns loss, acc, n, mean solver stats, L and 'certified'."""
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(ckpt["train_config"])
    if data is not None:
        cfg = cfg.replace(data=data, val_data=None)
    if batch_size is not None:
        cfg = cfg.replace(eval_batch_size=batch_size)
    if model_factory is None:
        if not ckpt.get("model_config"):
            raise ValueError(f"checkpoint: {checkpoint} has no model_config to rebuild the model from")
        model_factory = model_from_config
    model = model_factory(ckpt["model_config"])
    model.load_state_dict(ckpt["model_state"])
    model.to(dev)
    name, images = eval_images(cfg, split, limit, cache_dir, workers, progress)
    metrics = evaluate(model, images, cfg.eval_batch_size, dev, workers, progress, desc=f"eval {name}")
    bound = certified_bound(model, training=False)
    return {"checkpoint": str(checkpoint), "epoch": ckpt["epoch"], "split": name, **metrics,
            "lipschitz_bound": bound, "certified": bound is not None and bound < 1.0}
