"""Entry points behind ``lmdeq train`` and ``lmdeq eval``: device, config, model, run directory, data, loop.

Order of a run, cheapest checks first so that a bad setting fails before any data is decoded: resolve
the device; load the checkpoint to resume (if any) and check that the config continues it; seed
python/numpy/torch with ``cfg.seed`` and build the model (from the checkpoint's ``model_config`` when
resuming) and check it can solve; lock the run directory and check that this run may write into it;
prepare the data; restore the checkpoint (or fork it into a new directory); train.

Under torchrun (more than one process, :mod:`lmdeq.app.train.distributed`) the same run is data-parallel:
each rank trains on its device (its LOCAL_RANK's GPU); rank 0 alone reads the checkpoint to resume
(and gives it to the others, so the run directory need not be shared between machines), locks and
checks the run directory, and writes it; the data is prepared on each machine's local rank 0 first (it
extracts and caches it once), then on the other ranks, and every rank must hold the same images. A
failure in any of these steps stops every rank with one error.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from ...errors import (CheckpointError, ConfigError, DataError, DataNotFoundError, DataUnavailableError, LmdeqError,
                       first_line)
from .arguments import train_parser
from .checkpoint import RUN, load_checkpoint, seed_everything
from .config import RESUME_MAY_CHANGE, TrainConfig
from .config_file import resolved_config
from ..data.augment import preset_defaults
from ..data.fit import fit_images
from ..data.run_data import Splits, prepare_splits
from .distributed import ELASTIC_RESTART, ELASTIC_RUN_ID, Dist, distributed
from .evaluate import evaluate
from .hooks import certified_bound, model_config
from ..data.images import LabelledImages
from .model import build_model, check_solvable, load_weights, model_from_config
from .replicas import sync_batchnorm
from .rundir import check_run_dir, fork, locked
from ..data.sources import load_source
from ..data.split import stratified_subset
from .trainer import LAST, Trainer, check_outputs

EVAL_SPLITS = ("val", "train", "all")

log = logging.getLogger("lmdeq.app.train")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'; ConfigError otherwise."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string, got {type(spec).__name__}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ConfigError(f"device: {spec!r} is not a device ('auto', 'cpu', 'cuda', 'cuda:N')") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {spec!r} requested but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device: {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise ConfigError(f"device: {spec!r} is not supported (use 'auto', 'cpu' or 'cuda[:N]')")
    return device


def check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    """ConfigError naming every setting that differs from the checkpoint's and would change the run
    (``epochs`` may grow: :func:`resumed_config`)."""
    current = cfg.to_dict()
    may_change = RESUME_MAY_CHANGE | {"epochs", "lr_restarts"}
    diffs = [f"{k}={current[k]!r} (checkpoint: {saved.get(k)!r})" for k in current
             if k not in may_change and saved.get(k) != current[k]]
    if diffs:
        raise ConfigError("cannot resume with settings that differ from the checkpoint's: " + ", ".join(diffs))


def resumed_config(saved: dict, cfg: TrainConfig) -> TrainConfig:
    """The config that continues the checkpoint's run: ``cfg`` checked against ``saved``; more epochs than
    the checkpoint planned extend the run with a new cosine cycle (``lr_restarts`` gains the old count)."""
    check_resume_config(saved, cfg)
    old = TrainConfig.from_dict(saved)
    if cfg.epochs < old.epochs:
        raise ConfigError(f"epochs={cfg.epochs} is fewer than the {old.epochs} the checkpoint's run planned; its lr "
                          "schedule cannot be shortened (leave --epochs out to finish the run, or give more to "
                          "extend it)")
    restarts = old.lr_restarts + ([old.epochs] if cfg.epochs > old.epochs else [])
    if cfg.lr_restarts not in (old.lr_restarts, restarts):
        raise ConfigError(f"cannot resume with lr_restarts={cfg.lr_restarts} (checkpoint: {old.lr_restarts}); the "
                          f"checkpoint's run continues with {restarts}")
    return cfg.replace(lr_restarts=restarts)


def resume_path(resume: str | os.PathLike) -> Path:
    """The checkpoint to resume from: ``resume`` itself, or ``resume/last.pt`` for a run directory."""
    path = Path(resume)
    return path / LAST if path.is_dir() else path


def check_classes(data: LabelledImages, source: str | None, model: torch.nn.Module) -> None:
    """ConfigError when the model's head (config ``num_classes``) does not match the data's classes, or its input
    shape (``model.input_shape``) the data's images."""
    shape = getattr(model, "input_shape", None)
    got = tuple(data.images.shape[1:])
    if shape is not None and got != tuple(shape):
        raise ConfigError(f"data: {source} has {got[0]}-channel {got[1]}x{got[2]} images but the model takes "
                          f"{shape[0]}-channel {shape[1]}x{shape[2]} images (its in_channels / image_size settings); "
                          "choose the preset for this data (lmdeq train --help lists them) or --set in_channels=... "
                          "image_size=...")
    head = (model_config(model) or {}).get("num_classes")
    n = len(data.classes)
    if head is not None and head != n:
        raise ConfigError(f"data: {source} has {n} classes but the model has num_classes={head}; "
                          f"pass --set num_classes={n}")


def check_same_data(splits: Splits, dist: Dist) -> None:
    """DataError unless every rank holds the same training and validation images (same digests)."""
    if not dist.enabled:
        return
    mine = (splits.train.digest(), None if splits.val is None else splits.val.digest())
    theirs = dist.all_gather_object(mine)
    for rank, other in enumerate(theirs[1:], start=1):
        if other != theirs[0]:
            part = "training" if other[0] != theirs[0][0] else "validation"
            raise DataError(f"data: rank {rank}'s {part} images differ from rank 0's; every process must read the same "
                            "--data (the same files on every machine), with the same --limit-train/--limit-val")


def load_run_checkpoint(resume: Path) -> dict:
    """The run state to resume from (a last.pt), with a checked train_config."""
    ckpt = load_checkpoint(resume, kind=RUN)
    try:
        TrainConfig.from_dict(ckpt["train_config"])
    except LmdeqError as err:
        raise CheckpointError(f"checkpoint: {resume} has an invalid train_config ({err})") from err
    return ckpt


def elastic_resume(out_dir: str | os.PathLike, dist: Dist, environ=None) -> Path | None:
    """``out_dir/last.pt`` when this process belongs to a worker group that torchrun restarted
    (``TORCHELASTIC_RESTART_COUNT`` > 0) and that file was written by the same torchrun job (its
    ``elastic_run_id`` is this ``TORCHELASTIC_RUN_ID``): the run then continues from its last committed
    epoch without ``--resume``. None otherwise (a first attempt keeps the usual rules: an existing run is
    continued only with --resume)."""
    environ = os.environ if environ is None else environ
    run_id = environ.get(ELASTIC_RUN_ID)
    if environ.get(ELASTIC_RESTART, "0") in ("", "0") or not run_id:
        return None
    last = Path(out_dir) / LAST

    def ours() -> bool:
        return last.is_file() and load_checkpoint(last, kind=RUN).get("elastic_run_id") == run_id

    if not dist.from_main(ours):
        return None
    if dist.is_main:
        log.info("restarted by torchrun (restart %s of run %s): resuming from %s", environ[ELASTIC_RESTART],
                 run_id, last)
    return last


def run_training(cfg: TrainConfig, *, device: str | torch.device = "auto", workers: int = 0,
                 out_dir: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True, bound_every: int = 50,
                 strict: bool = False, model_factory: Callable[[TrainConfig], torch.nn.Module] | None = None,
                 on_epoch_end: Callable[[dict], None] | None = None,
                 print_fn: Callable[[str], None] = print, dist_backend: str = "auto", sync_bn: bool = False,
                 allow_data_change: bool = False, log=(), checkpoint_every: int = 0,
                 write_config: bool = False) -> dict:
    """Train per ``cfg`` (resuming from ``resume`` if given) and return the trainer's summary.

    ``model_factory(cfg)`` builds the model (default :func:`~lmdeq.app.train.model.build_model`, or the
    checkpoint's ``model_config`` when resuming). Refuses to overwrite a run in ``out_dir`` unless resuming
    its newest state; resuming another checkpoint into a new ``out_dir`` forks it there. ``strict``: an
    undecodable image is an error instead of being skipped. Under torchrun the run is data-parallel (see
    the module docstring): ``dist_backend`` 'auto' (nccl on CUDA, gloo on the CPU), 'gloo' or 'nccl';
    ``sync_bn``: BatchNorm statistics over the global batch (torch's SyncBatchNorm, CUDA only).
    A resumed run must see the images it was trained on (the digests last.pt records); ``allow_data_change``
    continues on other images with a warning instead of a DataError. ``log``: loggers of
    :mod:`lmdeq.app.train.loggers` beside metrics.jsonl; ``checkpoint_every``: also commit last.pt every this
    many steps within an epoch (0: at epoch ends only); ``write_config``: write the resolved config (every train
    flag's value, :mod:`lmdeq.app.train.config_file`) as ``<out_dir>/config.json`` after the first commit.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    check_outputs(out_dir, log, checkpoint_every)   # (a logger whose package is missing fails before any work)
    runtime = dict(workers=workers, out=None if out_dir is None else str(out_dir),
                   cache_dir=None if cache_dir is None else str(cache_dir),
                   progress=progress, bound_every=bound_every, strict=strict, device=str(device),
                   dist_backend=dist_backend, sync_bn=sync_bn, log=list(log), checkpoint_every=checkpoint_every)
    with distributed(resolve_device(device), dist_backend) as (dist, dev):
        return _train(cfg, dist, dev, workers=workers, out_dir=out_dir, resume=resume, cache_dir=cache_dir,
                      progress=progress and dist.is_main, bound_every=bound_every, strict=strict,
                      model_factory=model_factory, on_epoch_end=on_epoch_end,
                      print_fn=print_fn if dist.is_main else (lambda _line: None), sync_bn=sync_bn,
                      allow_data_change=allow_data_change, log=log, checkpoint_every=checkpoint_every,
                      runtime=runtime if write_config else None)


def _train(cfg: TrainConfig, dist: Dist, dev: torch.device, *, workers, out_dir, resume, cache_dir, progress,
           bound_every, strict, model_factory, on_epoch_end, print_fn, sync_bn, allow_data_change, log,
           checkpoint_every, runtime) -> dict:
    ckpt = None
    if resume is not None:
        resume = resume_path(resume)
        ckpt = dist.from_main(lambda: load_run_checkpoint(resume))
        cfg = resumed_config(TrainConfig.from_dict(ckpt["train_config"]).to_dict(), cfg)
    seed_everything(cfg.seed)
    label = ""
    if model_factory is None:
        label = f"{cfg.preset} ({'lipschitz' if cfg.lipschitz else 'original'}) "
        if ckpt is not None:
            saved_model = ckpt.get("model_config")
            model_factory = lambda _cfg: model_from_config(saved_model, f"checkpoint {resume}")  # noqa: E731
        else:
            model_factory = build_model
    model = model_factory(cfg)
    check_solvable(model, f"checkpoint {resume}" if ckpt is not None else "model config (--preset/--set)")
    model = model.to(dev)
    if sync_bn:
        model = sync_batchnorm(model, dist, dev)
    with contextlib.ExitStack() as stack:
        def open_run_dir() -> bool:
            if out_dir is None:
                return False
            stack.enter_context(locked(out_dir))
            return check_run_dir(out_dir, resume)

        forking = dist.from_main(open_run_dir)
        splits = dist.staggered(lambda: prepare_splits(cfg, cache_dir, workers, progress, strict, min_classes=2))
        check_same_data(splits, dist)
        print_fn(f"data: {splits.describe()}" + (f"; {dist.world} processes ({dist.backend}), global batch "
                                                 f"{cfg.batch_size}" if dist.enabled else ""))
        n_classes, head = len(splits.train.classes), (model_config(model) or {}).get("num_classes")
        if ckpt is None and model_factory is build_model and "num_classes" not in cfg.model_overrides \
                and head is not None and head != n_classes:
            # The classes come from the data: the preset's head width is only its default.
            print_fn(f"model: num_classes {n_classes} from the data (preset {cfg.preset} has {head})")
            cfg = cfg.replace(model_overrides={**cfg.model_overrides, "num_classes": n_classes})
            seed_everything(cfg.seed)
            model = build_model(cfg).to(dev)
            if sync_bn:
                model = sync_batchnorm(model, dist, dev)
        check_classes(splits.train, cfg.data, model)
        run_config = None if runtime is None else resolved_config(cfg, runtime, train_parser())
        trainer = Trainer(model, cfg, splits.train, splits.val, dev, workers=workers, out_dir=out_dir,
                          progress=progress, bound_every=bound_every, on_epoch_end=on_epoch_end, print_fn=print_fn,
                          dist=dist, allow_data_change=allow_data_change, checkpoint_every=checkpoint_every, log=log,
                          run_config=run_config)
        if ckpt is not None:
            trainer.load_state_dict(ckpt)
            if forking:
                trainer.forked_from = str(resume)
                dist.from_main(lambda: fork(out_dir, trainer.state_dict(), resume))
            extended = f", extended to {cfg.epochs} epochs" if cfg.lr_restarts != ckpt["train_config"].get(
                "lr_restarts", []) else ""
            within = trainer.step - trainer.epoch * trainer.steps_per_epoch
            after = f"epoch {trainer.epoch}" + (f" and {within} steps of epoch {trainer.epoch + 1}" if within else "")
            print_fn(f"resumed from {resume} after {after} (step {trainer.step}){extended}")
        n_params = sum(p.numel() for p in model.parameters())
        print_fn(f"model: {label}{type(model).__name__}, {n_params:,} parameters, "
                 f"certified L = {trainer.bound if trainer.bound is not None else 'n/a'}; device {dev}")
        return trainer.fit()


def eval_images(cfg: TrainConfig, split: str, cache_dir=None, workers: int = 0, progress: bool = False,
                strict: bool = False) -> tuple[str, LabelledImages]:
    """(name, LabelledImages) to evaluate: the run's validation images ('val'), its training images
    ('train'), or every image of ``cfg.data`` ('all')."""
    if split not in EVAL_SPLITS:
        raise ConfigError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    if cfg.data is None:
        raise ConfigError("data: the checkpoint names no training data; pass --data")
    if split == "all":
        return "all", fit_images(load_source(cfg.data, cache_dir, workers, progress, strict, cfg.image_size).train,
                                 cfg.channels, cfg.image_size, cfg.data)
    splits: Splits = prepare_splits(cfg, cache_dir, workers, progress, strict)
    if split == "train":
        return "train", splits.train
    if splits.val is None:
        raise ConfigError("split: this run has no validation images (val_fraction 0, no test split); "
                          "use --split all or --split train")
    return f"val ({splits.val_name})", splits.val


def published_entry(checkpoint: str | os.PathLike) -> tuple[str, dict] | None:
    """(name, entry) of :data:`lmdeq.models.PUBLISHED` whose file ``checkpoint`` is (same sha256), else None."""
    from ...files import file_sha256
    from ...models import PUBLISHED

    digest = file_sha256(checkpoint)
    return next(((name, entry) for name, entry in PUBLISHED.items() if entry["sha256"] == digest), None)


def _recorded_data_error(checkpoint, cfg: TrainConfig, err: LmdeqError) -> str:
    """The message for recorded training data (``cfg.data`` of the checkpoint, no --data given) that cannot be
    read: where the path came from, what it is relative to, and the --data that would evaluate the same images."""
    detail = first_line(err).removeprefix("data: ").split(" (", 1)[0]
    local = isinstance(err, DataNotFoundError)   # (raised for a path on disk, not for a data set's name)
    path = Path(cfg.data).expanduser()
    where = f", relative to the current directory {Path.cwd()}" if local and not path.is_absolute() else ""
    want = (f"PATH/TO/{path.name}, your copy of the very files" if local
            else f"{cfg.data!r} where it can be read, or your copy of the very data set")
    published = published_entry(checkpoint)
    also = f" (the published {published[0]}: the {published[1]['data']})" if published else ""
    return (f"data: --data not given, and the training data recorded in {checkpoint}'s train_config (data = "
            f"{cfg.data!r}{where}) cannot be read: {detail}; pass --data {want} the run was trained on{also}: its "
            f"validation images are drawn from that file list by seed {cfg.seed} (val_fraction {cfg.val_fraction}), "
            "so other files, another copy of the data set included, would evaluate on other images")


def _check_recorded_digest(checkpoint, ckpt: dict, split: str, images: LabelledImages, data: str,
                           allow_data_change: bool) -> None:
    """DataError when ``images`` (``split`` 'train' or 'val') are not those the checkpoint's run recorded (its
    ``data_digest``, or that of its :data:`lmdeq.models.PUBLISHED` entry), unless ``allow_data_change``."""
    if split == "all":
        return
    recorded = ckpt.get("data_digest")
    if recorded is None:
        published = published_entry(checkpoint)
        recorded = published[1].get("data_digest") if published else None
    want = (recorded or {}).get(split)
    if want is None or want == images.digest():
        return
    what = "validation" if split == "val" else "training"
    if not allow_data_change:
        recorded_data = ckpt["train_config"].get("data")
        raise DataError(f"data: the {what} images of {data} are not those {checkpoint}'s run {what[:-1]}ed on "
                        f"(their digest differs from its data_digest: other files, or edited ones); pass --data with "
                        f"the files the run was trained on (its train_config.data: {recorded_data!r}), or "
                        "--allow-data-change to evaluate on these")
    log.warning("data: evaluating on other %s images than %s's run recorded (--allow-data-change)", what, checkpoint)


def run_evaluation(checkpoint: str | os.PathLike, *, data: str | None = None, split: str = "val",
                   limit: int | None = None, batch_size: int | None = None, device="auto", workers: int = 0,
                   cache_dir=None, progress: bool = True, strict: bool = False,
                   model_factory: Callable[[dict], torch.nn.Module] | None = None, dist_backend: str = "auto",
                   allow_data_change: bool = False) -> dict:
    """Evaluate a training checkpoint (last.pt or best.pt); returns its epoch and step, loss, acc, n, mean solver
    stats, L, 'certified' and L from verified norms. The weights must be finite and fit the model; the data's classes
    must be the run's.
    Under torchrun every rank evaluates a shard of the images and returns the metrics of all of them.

    Without ``data`` the checkpoint's recorded ``train_config.data`` is read, a relative path relative to the
    current directory (as the training command line took it); when it cannot be read, the error names the
    recorded path, where it came from and the --data that evaluates the same images. The run's 'val' and
    'train' images must be those the checkpoint recorded (``data_digest``, or its
    :data:`lmdeq.models.PUBLISHED` entry's): otherwise a DataError, unless ``allow_data_change``."""
    with distributed(resolve_device(device), dist_backend) as (dist, dev):
        return _evaluate(checkpoint, dist, dev, data=data, split=split, limit=limit, batch_size=batch_size,
                         workers=workers, cache_dir=cache_dir, progress=progress and dist.is_main, strict=strict,
                         model_factory=model_factory, allow_data_change=allow_data_change)


def _evaluate(checkpoint, dist: Dist, dev: torch.device, *, data, split, limit, batch_size, workers, cache_dir,
              progress, strict, model_factory, allow_data_change) -> dict:
    ckpt = dist.from_main(lambda: load_checkpoint(checkpoint))
    source = f"checkpoint {checkpoint}"
    try:
        cfg = TrainConfig.from_dict(ckpt["train_config"])
    except LmdeqError as err:
        raise CheckpointError(f"{source}: invalid train_config ({err})") from err
    if data is not None:
        cfg = cfg.replace(data=data, val_data=None)
    if batch_size is not None:
        cfg = cfg.replace(eval_batch_size=batch_size)
    if model_factory is None:
        if not ckpt.get("model_config"):
            raise CheckpointError(f"{source} has no model_config to rebuild the model from")
        model = model_from_config(ckpt["model_config"], source)
    else:
        model = model_factory(ckpt["model_config"])
    load_weights(model, ckpt["model_state"], source)
    check_solvable(model, source, CheckpointError)
    model.to(dev)
    try:
        name, images = dist.staggered(lambda: eval_images(cfg, split, cache_dir, workers, progress, strict))
    except (DataNotFoundError, DataUnavailableError) as err:
        if data is not None:
            raise
        raise type(err)(_recorded_data_error(checkpoint, cfg, err)) from err
    check_same_data(Splits(images, None, None), dist)
    if ckpt.get("classes") is not None and tuple(ckpt["classes"]) != images.classes:
        raise DataError(f"data: the images have the classes {list(images.classes)}, but {checkpoint} was trained on "
                        f"{list(ckpt['classes'])}")
    _check_recorded_digest(checkpoint, ckpt, split, images, cfg.data, allow_data_change)
    if limit is not None and limit < len(images):
        images = images.subset(stratified_subset(images.labels, len(images.classes), limit, cfg.seed, "eval"))
    check_classes(images, name, model)
    stats = preset_defaults((model_config(model) or {}).get("preset"))
    metrics = evaluate(model, images, cfg.eval_batch_size, dev, workers, progress, desc=f"eval {name}", dist=dist,
                       stats=stats)
    bound = certified_bound(model, training=False)
    verified = certified_bound(model, training=False, verified=True)
    # certified: a contraction by the estimate-based bound and, where the model has one, by the verified bound
    return {"checkpoint": str(checkpoint), "epoch": ckpt["epoch"], "step": ckpt["step"], "split": name, **metrics,
            "lipschitz_bound": bound, "lipschitz_bound_verified": verified,
            "certified": bound is not None and bound < 1.0 and (verified is None or verified < 1.0)}
