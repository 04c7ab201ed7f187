"""Helpers for the training tests: a tiny stand-in DEQ classifier with the model hooks, and small
synthetic ImageFolder directories (PNG, so pixels survive the round trip exactly)."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

CLASSES = ("c0", "c1", "c2", "c3")


class TinyDEQClassifier(nn.Module):
    """z = tanh(W z + U x) solved by a fixed number of Picard steps; ||W||_2 <= 0.9 after every
    constraint_step, so L = 0.9 (tanh is 1-Lipschitz). Has dropout (uses the RNG) and a power-iteration
    buffer (state outside the parameters), so a resume must restore both to be exact."""

    def __init__(self, num_classes=4, width=16, steps=6):
        super().__init__()
        self.inp = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.U = nn.Linear(4 * 8 * 8, width)
        self.W = nn.Linear(width, width, bias=False)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(width, num_classes)
        self.steps = steps
        self.register_buffer("u", F.normalize(torch.randn(width), dim=0))
        self.config = {"num_classes": num_classes, "width": width, "steps": steps}
        self.last_info = {}

    def forward(self, x):
        inj = self.U(self.drop(F.relu(self.inp(x)).flatten(1)))
        z = torch.zeros_like(inj)
        for _ in range(self.steps):
            z_next = torch.tanh(self.W(z) + inj)
            res = (z_next - z).norm().item()
            z = z_next
        self.last_info = {"f_nstep": self.steps, "f_residual": res}
        if z.requires_grad:
            z.register_hook(lambda g: self.last_info.update(b_nstep=1, b_residual=0.0) or g)
        return self.head(z)

    @torch.no_grad()
    def _sigma(self):
        w = self.W.weight
        v = F.normalize(w.t() @ self.u, dim=0)
        self.u.copy_(F.normalize(w @ v, dim=0))
        return float(self.u @ w @ v)

    @torch.no_grad()
    def constraint_step(self):
        sigma = self._sigma()
        if sigma > 0.9:
            self.W.weight.mul_(0.9 / sigma)

    @torch.no_grad()
    def lipschitz_bound(self):
        return float(torch.linalg.matrix_norm(self.W.weight, ord=2))


def write_image_folder(root, per_class=6, size=(32, 32), classes=CLASSES, seed=0):
    """Class c's images are noise around a class-specific colour, so they are learnable."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        colour = np.array([60 * c, 255 - 60 * c, 120], dtype=np.float64)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 40, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(d / f"{i:04d}.png")
    return root



def run_in_fork(fn, *args, fault=None, timeout=120):
    """Run ``fn(*args)`` in a forked child with one intra-op thread (so every run, killed or not, computes
    alike) and ``LMDEQ_FAULT_AT=fault``; returns its exit code (-9: it killed itself at the fault point)."""
    import multiprocessing
    import os

    def child():
        if fault is not None:
            os.environ["LMDEQ_FAULT_AT"] = fault
        else:
            os.environ.pop("LMDEQ_FAULT_AT", None)
        torch.set_num_threads(1)
        fn(*args)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise TimeoutError(f"{fn.__name__} did not finish within {timeout}s")
    return proc.exitcode


def tiny_run_config(data):
    """The kill-and-resume tests' run: 3 epochs of TinyDEQClassifier on a write_image_folder() folder (18 training
    images at batch 5: 4 steps per epoch); with seed 0 validation improves at epochs 1 and 2, not at 3."""
    from lmdeq.app.train import TrainConfig

    return TrainConfig(data=str(data), epochs=3, batch_size=5, eval_batch_size=7, val_fraction=0.25, seed=0)


def train_tiny(cfg, out, cache, resume=None, **options):
    """run_training of ``cfg`` with TinyDEQClassifier on the CPU, quietly, into ``out`` (``options``: more
    run_training keywords, e.g. log=, checkpoint_every=)."""
    from lmdeq.app.train import run_training

    run_training(cfg, device="cpu", out_dir=out, cache_dir=cache, progress=False, bound_every=2, resume=resume,
                 model_factory=lambda _c: TinyDEQClassifier(), print_fn=lambda s: None, **options)


def resume_path(out):
    """What a user does after a crash: resume the run when it has a last.pt, else start it again (None)."""
    return out / "last.pt" if (out / "last.pt").exists() else None
