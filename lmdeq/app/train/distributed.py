"""Data-parallel training across processes: the torchrun environment, the process group, each rank's
device, and the few collectives the trainer needs to keep every rank in step.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE`` > 1 and ``LOCAL_RANK`` in the environment) a run joins one
process group: ``nccl`` when it trains on CUDA, ``gloo`` on the CPU (``backend`` overrides). Each rank
trains on the GPU of its ``LOCAL_RANK``. With ``WORLD_SIZE`` 1 (``torchrun --nproc-per-node=1``, or no
torchrun) there is no process group and every collective below is the identity: single-process code
runs unchanged.

A rank that fails alone must not leave the others waiting forever in their next collective:
:meth:`Dist.from_main` (work only rank 0 does: the run directory, reading a checkpoint) and
:meth:`Dist.agree` (work every rank does: reading the data) tell every rank whether any rank failed.
The rank that failed raises its own error; the others raise :class:`PeerFailedError` naming it. (A
failure elsewhere, e.g. inside a training step, ends that process; torchrun then stops the others.)
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as tdist

from ..command import one_line
from ..data.batches import shard_bounds
from ...errors import ConfigError, LmdeqError

__all__ = ["Dist", "SINGLE", "BACKENDS", "PeerFailedError", "torchrun_env", "is_main_process", "distributed",
           "ELASTIC_RESTART", "ELASTIC_RUN_ID"]

BACKENDS = ("auto", "gloo", "nccl")
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
ELASTIC_RESTART = "TORCHELASTIC_RESTART_COUNT"  # how often torchrun restarted the worker group (0 at first)
ELASTIC_RUN_ID = "TORCHELASTIC_RUN_ID"  # torchrun's rendezvous run id, the same across those restarts


class PeerFailedError(LmdeqError, RuntimeError):
    """Another rank of the run failed (its own process reports why); this one stops too."""


def _describe(err: BaseException) -> str:
    text = one_line(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` on its machine;
    ``device`` is where its collectives' tensors live (its training device)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """True when there are other ranks to talk to."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run directory and prints."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's share of n items (:func:`shard_bounds`)."""
        return shard_bounds(n, self.rank, self.world)

    # -- collectives ---------------------------------------------------------------------------------------
    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (a new tensor on ``values``' device; itself when alone)."""
        if not self.enabled:
            return values
        out = values.detach().to(self.device, copy=True)
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
        return out.to(values.device)

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_(self, tensor: torch.Tensor) -> None:
        """Overwrite ``tensor`` in place with rank 0's (it must live on ``device``)."""
        if self.enabled:
            tdist.broadcast(tensor, src=0)

    # -- failing together ------------------------------------------------------------------------------------
    def from_main(self, fn: Callable[[], object]):
        """Run ``fn()`` on rank 0 only and give its result to every rank; if it raises, rank 0 re-raises and
        every other rank raises :class:`PeerFailedError`."""
        if not self.enabled:
            return fn()
        outcome, error = None, None
        if self.is_main:
            try:
                outcome = (True, fn())
            except Exception as err:  # noqa: BLE001 - reported to the peers, then re-raised
                error, outcome = err, (False, _describe(err))
        ok, value = self.broadcast_object(outcome)
        if error is not None:
            raise error
        if not ok:
            raise PeerFailedError(f"rank 0 failed ({value}); stopping rank {self.rank} too")
        return value

    def agree(self, fn: Callable[[], object], run: bool = True):
        """Run ``fn()`` on every rank where ``run`` is true (None elsewhere), then make sure none failed: a
        rank whose ``fn`` raised re-raises, the others raise :class:`PeerFailedError` naming it."""
        result, error = None, None
        if run:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - reported to the peers, then re-raised
                error = err
        if not self.enabled:
            if error is not None:
                raise error
            return result
        failures = self.all_gather_object(None if error is None else _describe(error))
        if error is not None:
            raise error
        failed = [(r, f) for r, f in enumerate(failures) if f is not None]
        if failed:
            r, what = failed[0]
            raise PeerFailedError(f"rank {r} failed ({what}); stopping rank {self.rank} too")
        return result

    def staggered(self, fn: Callable[[], object]):
        """``fn()`` on every rank, first on each machine's local rank 0, then on the others (so that the
        work ``fn`` caches, e.g. extracting and decoding a data set, is done once per machine)."""
        first = self.agree(fn, run=self.local_rank == 0)
        later = self.agree(fn, run=self.local_rank != 0)
        return first if self.local_rank == 0 else later


SINGLE = Dist()


def torchrun_env(environ=None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment variables; None when they are absent.
    ConfigError when they are incomplete or inconsistent."""
    environ = os.environ if environ is None else environ
    present = [k for k in ENV_KEYS if k in environ]
    if not present:
        return None
    if len(present) != len(ENV_KEYS):
        missing = [k for k in ENV_KEYS if k not in environ]
        raise ConfigError(f"distributed: the environment sets {present} but not {missing}; start the run with "
                          "torchrun, which sets all of RANK, WORLD_SIZE and LOCAL_RANK")
    try:
        rank, world, local = (int(environ[k]) for k in ENV_KEYS)
    except ValueError:
        raise ConfigError("distributed: RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                          + ", ".join(f"{k}={environ[k]!r}" for k in ENV_KEYS)) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"distributed: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} do not describe a "
                          "process of the run (0 <= RANK < WORLD_SIZE)")
    return rank, world, local


def is_main_process(environ=None) -> bool:
    """True unless torchrun's environment names this process a rank other than 0."""
    env = torchrun_env(environ)
    return env is None or env[0] == 0


def _rank_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of the rank with ``local_rank``: its own GPU for a CUDA run, else the CPU."""
    if device.type != "cuda":
        return device
    if device.index is not None and device.index != local_rank:
        raise ConfigError(f"device: {device} names one GPU, but under torchrun every process trains on the GPU of "
                          "its LOCAL_RANK; pass --device cuda (or auto)")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"distributed: LOCAL_RANK={local_rank} but only {count} CUDA device(s) are visible on this "
                          f"machine; start at most {count} processes per machine (torchrun --nproc-per-node)")
    return torch.device("cuda", local_rank)


def _backend(requested: str, device: torch.device) -> str:
    if requested not in BACKENDS:
        raise ConfigError(f"dist_backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise ConfigError(f"dist_backend: nccl needs CUDA devices, but this run trains on {device}; use gloo "
                          "(or auto) on the CPU")
    if not tdist.is_backend_available(requested):
        raise ConfigError(f"dist_backend: this torch build has no {requested} backend")
    return requested


@contextlib.contextmanager
def distributed(device: torch.device, backend: str = "auto", environ=None,
                timeout: datetime.timedelta | None = None) -> Iterator[tuple[Dist, torch.device]]:
    """(Dist, this rank's device) for the duration: joins torchrun's process group (and leaves it on exit)
    when the environment describes more than one process; reuses a process group the caller has already
    initialised (and leaves it alone); else :data:`SINGLE` on ``device``."""
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device, got {type(device).__name__}")
    if backend not in BACKENDS:
        raise ConfigError(f"dist_backend must be one of {BACKENDS}, got {backend!r}")
    environ = os.environ if environ is None else environ
    if tdist.is_available() and tdist.is_initialized():
        rank, world = tdist.get_rank(), tdist.get_world_size()
        local = int(environ.get("LOCAL_RANK", rank))
        dev = _rank_device(device, local) if world > 1 else device
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        yield Dist(rank, world, local, tdist.get_backend(), dev), dev
        return
    env = torchrun_env(environ)
    if env is None or env[1] == 1:
        yield Dist(device=device), device
        return
    rank, world, local = env
    if not tdist.is_available():
        raise ConfigError("distributed: this torch build has no torch.distributed; train in one process")
    dev = _rank_device(device, local)
    name = _backend(backend, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs = {} if timeout is None else {"timeout": timeout}
    restart = environ.get(ELASTIC_RESTART)
    if restart is not None:
        # torchrun keeps one store for every restart of the worker group, and env:// does not separate the
        # attempts' keys: a restarted group would read the previous attempt's addresses and fail to
        # connect (pytorch/pytorch#135712, #167288). Each attempt gets its own key prefix.
        base, _, _ = next(tdist.rendezvous("env://", rank=rank, world_size=world, **kwargs))
        kwargs["store"] = tdist.PrefixStore(f"lmdeq/attempt-{restart}", base)
    tdist.init_process_group(name, rank=rank, world_size=world, **kwargs)
    try:
        yield Dist(rank, world, local, name, dev), dev
    finally:
        tdist.destroy_process_group()
