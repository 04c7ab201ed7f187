"""A certified single-scale DEQ image classifier (CIFAR-10), built from lmdeq.models' certified blocks.

    stem (plain conv + BatchNorm, stride 2; outside f)  ->  z* = f(z*, stem(x))  ->  conv + pooled linear head

    f(z, u) = relu_0.8( GN( (1 - a) z + a conv2(relu_0.5(GN(conv1 z))) + u ) ),   a = 0.5

Only f needs a Lipschitz bound: its convolutions are CappedConv2d (operator norm capped inside the forward pass),
its norms MeanOnlyGroupNorm (|gamma| <= 1), its activations scaled ReLUs, so lipschitz_bound(f) <=
(1 - a + 0.5 a) * 0.8 = 0.6 whatever the optimiser does. CertifiedDEQ solves the equilibrium with the a-priori iteration
counts that bound guarantees (Banach: forward from z = 0, adjoint from v; relative residual 1e-3, no
convergence check), and ``deq.constraint_step()`` after every optimiser step keeps the norm estimates current.

Printed at start and after every epoch: the certified bound L, the a-priori forward / adjoint counts, and the
measured ||J_f(z*)||_2 (power iteration with jvp / vjp at the solved z* of 8 validation images; its max), which
the bound caps. ``--out DIR`` gets curve.json and curve.png (accuracy per epoch; L and ||J_f|| per epoch).

    python examples/certified_deq_classifier.py --data ../shared/data/cifar10-train-jpeg.tar.gz --out /tmp/cls

(the defaults, 10,000 training / 2,000 validation images, 3 epochs, width 48: about 5.5 minutes on one CPU core).

``--data``: an ImageFolder directory (``<class>/<image>``, or one holding ``train/``), a .tar.gz of one, or
any other form lmdeq's data layer reads (lmdeq.app.data.sources); validation images are its test split if it
has one, else a stratified 10% hold-out of the training images (by ``--seed``), each limited by
``--limit-train`` / ``--limit-val``. Images are normalised with the CIFAR-10 mean and std; training batches
are randomly cropped (padding 4) and flipped (``--no-augment``: neither).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmdeq.deq import jacobian_norm
from lmdeq.errors import DataError, LmdeqError
from lmdeq.models import (AddInput, CappedConv2d, CertifiedDEQ, ConvexResidual, MeanOnlyGroupNorm, ScaledReLU,
                          Sequential, lipschitz_bound)
from lmdeq.solvers import adjoint_apriori_iterations, apriori_iterations

TOL = 1e-3   # the relative residual the a-priori counts guarantee (lmdeq.models.APRIORI_FORWARD's tol)


# -- the model ---------------------------------------------------------------------------------------------------
def make_f(width: int, size: tuple, groups: int, alpha: float = 0.5) -> Sequential:
    """f(z, u) of the module docstring, from certified blocks (each CappedConv2d is capped at 1 on a
    ``size`` = (H, W) input)."""
    def conv():
        return CappedConv2d(width, width, 3, input_size=size, cap=1.0, margin=0.05)

    inner = Sequential(conv(), MeanOnlyGroupNorm(groups, width), ScaledReLU(0.5), conv())
    return Sequential(ConvexResidual(inner, alpha=alpha), AddInput(), MeanOnlyGroupNorm(groups, width),
                      ScaledReLU(0.8))


class CertifiedDEQClassifier(nn.Module):
    """stem -> CertifiedDEQ(f) -> head (module docstring); ``image_size`` (H, W) of the input images."""

    def __init__(self, image_size: tuple, num_classes: int, width: int = 32, forward_budget: int | None = None):
        super().__init__()
        groups = math.gcd(width, 8)
        state = tuple((s + 1) // 2 for s in image_size)   # the stem's stride 2
        stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width))
        self.deq = CertifiedDEQ(make_f(width, state, groups), injection=stem, forward_budget=forward_budget)
        self.head = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(2 * width, num_classes))

    def forward(self, x):
        return self.head(self.deq(x))


# -- measurements ------------------------------------------------------------------------------------------------
def measured_jacobian(model: CertifiedDEQClassifier, x: torch.Tensor, iters: int = 50) -> float:
    """max over the images x of ||J_f(z*)||_2 at their solved z* (eval mode)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        u = model.deq.injection(x)
        z = model.deq(x)
    f = model.deq.f
    sigma = jacobian_norm(lambda s: f(s, u), z.detach(), iters, per_sample=True)
    model.train(was_training)
    return float(sigma.max())


def counts(L: float) -> tuple:
    """The a-priori (forward from 0, adjoint from v) counts for the bound L at the relative tol TOL."""
    return apriori_iterations(L, TOL), adjoint_apriori_iterations(L, TOL)


# -- data --------------------------------------------------------------------------------------------------------
def load_data(args):
    """(train, val, description): lmdeq's application data layer (prepare_splits), limited and held out by seed."""
    from lmdeq.app.data.run_data import prepare_splits
    from lmdeq.app.train import TrainConfig

    cfg = TrainConfig(data=args.data, limit_train=args.limit_train, limit_val=args.limit_val, val_fraction=0.1,
                      seed=args.seed, channels=3)
    splits = prepare_splits(cfg, min_classes=2)
    if splits.val is None or len(splits.val) == 0:
        raise DataError("data: no validation images (the hold-out is empty; give more images)")
    return splits.train, splits.val, splits.describe()


def batches(data, batch: int, seed: int, epoch: int, augment: bool):
    from lmdeq.app.data.augment import normalize
    from lmdeq.app.data.batches import eval_batches, train_batches

    loader = train_batches(data, batch, seed, epoch, augment=augment, padding=4) if epoch is not None \
        else eval_batches(data, batch)
    for images, labels in loader:
        yield normalize(images), labels


def evaluate(model, data, batch: int = 250) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in batches(data, batch, 0, None, False):
            correct += int((model(x).argmax(1) == y).sum())
    model.train()
    return correct / len(data)


# -- the curve ---------------------------------------------------------------------------------------------------
def plot(curve: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = curve["epochs"]
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    trained = [r for r in rows if r["epoch"] > 0]
    a.plot([r["epoch"] for r in trained], [100 * r["train_acc"] for r in trained], "o-", label="train (running)")
    a.plot(ep, [100 * r["val_acc"] for r in rows], "s-", label=f"validation ({curve['data']['val']} images)")
    a.set_xlabel("epoch")
    a.set_ylabel("accuracy (%)")
    a.set_xticks(ep)
    a.set_ylim(0, 100)
    a.grid(alpha=0.3)
    a.legend(loc="upper left")
    a.set_title("Certified DEQ classifier: accuracy")
    b.plot(ep, [r["L"] for r in rows], "o-", color="C3", label="certified bound L = lipschitz_bound(f)")
    b.plot(ep, [r["jacobian_norm"] for r in rows], "s--", color="C2",
           label=f"measured max ||J_f(z*)||, {curve['jacobian_images']} val. images")
    b.axhline(1.0, color="k", lw=0.8, ls=":")
    for r in rows:
        b.annotate(f"{r['forward_count']}/{r['adjoint_count']}", (r["epoch"], r["L"]), textcoords="offset points",
                   xytext=(0, 7), ha="center", fontsize=8, color="C3")
    b.set_xlabel("epoch")
    b.set_ylabel("Lipschitz constant of z -> f(z, x)")
    b.set_xticks(ep)
    b.set_ylim(0, 1.1)
    b.grid(alpha=0.3)
    b.legend(loc="lower right", fontsize=8)
    b.set_title("bound vs measured (labels: a-priori fwd/adj counts)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="ImageFolder directory or .tar.gz of one (e.g. "
                   "../shared/data/cifar10-train-jpeg.tar.gz)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=10000, help="training images (stratified subset)")
    p.add_argument("--limit-val", type=int, default=2000, help="validation images (stratified subset)")
    p.add_argument("--width", type=int, default=48, help="channels of the equilibrium state")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate (cosine decay to 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--forward-budget", type=int, default=None,
                   help="iteration budget of the forward solve (caps are scaled so the a-priori count stays <= it)")
    p.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    p.add_argument("--jacobian-iters", type=int, default=50, help="power iterations for ||J_f(z*)||")
    p.add_argument("--out", default=None, help="directory for curve.json and curve.png")
    args = p.parse_args(argv)
    for name in ("epochs", "limit_train", "limit_val", "width", "batch", "jacobian_iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.forward_budget is not None and args.forward_budget < 1:
        p.error("--forward-budget must be >= 1")
    if not args.lr > 0:
        p.error("--lr must be > 0")
    return args


def run(args) -> int:
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    train, val, described = load_data(args)
    print(f"data: {described} ({args.data})", flush=True)
    if train.images.shape[1] != 3:
        raise DataError(f"data: expected RGB images, got {train.images.shape[1]} channels")
    size = tuple(train.images.shape[2:])
    model = CertifiedDEQClassifier(size, len(train.classes), args.width, args.forward_budget)
    deq = model.deq
    probe = next(iter(batches(val, 8, 0, None, False)))[0]

    def record(epoch, **extra):
        L = deq.lipschitz_bound()
        fwd, adj = counts(L)
        return {"epoch": epoch, **extra, "L": L, "forward_count": fwd, "adjoint_count": adj,
                "jacobian_norm": measured_jacobian(model, probe, args.jacobian_iters)}

    L0 = lipschitz_bound(deq.f)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: stem -> CertifiedDEQ(f) -> head, width {args.width}, state {args.width}x{(size[0] + 1) // 2}x"
          f"{(size[1] + 1) // 2}, {params} parameters; forward budget {args.forward_budget}", flush=True)
    fwd, adj = counts(L0)
    print(f"certified bound L = lipschitz_bound(f) = {L0:.4f} (structural ceiling (0.5 + 0.5*0.5)*0.8 = 0.6); "
          f"a-priori counts (rel tol {TOL:g}): forward {fwd}, adjoint {adj}", flush=True)
    first = record(0, val_acc=evaluate(model, val), seconds=0.0)
    print(f"epoch 0  val acc {100 * first['val_acc']:5.1f}%  L {first['L']:.4f}  counts {fwd}/{adj}  "
          f"measured ||J_f(z*)|| {first['jacobian_norm']:.4f}", flush=True)
    rows = [first]
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(train) / args.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * steps_per_epoch)
    losses = []
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        total = correct = seen = 0
        model.train()
        for x, y in batches(train, args.batch, args.seed, epoch, not args.no_augment):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            deq.constraint_step()
            total += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            losses.append(loss.item())
        seconds = time.perf_counter() - t0
        info = deq.last_info
        row = record(epoch, train_loss=total / seen, train_acc=correct / seen, val_acc=evaluate(model, val),
                     seconds=seconds, f_nstep=info["f_nstep"], b_nstep=info["b_nstep"],
                     f_residual=info["f_residual"])
        rows.append(row)
        print(f"epoch {epoch}  train loss {row['train_loss']:.4f}  train acc {100 * row['train_acc']:5.1f}%  "
              f"val acc {100 * row['val_acc']:5.1f}%  {seconds:6.1f} s  L {row['L']:.4f}  counts "
              f"{row['forward_count']}/{row['adjoint_count']} (ran {row['f_nstep']}/{row['b_nstep']})  "
              f"measured ||J_f(z*)|| {row['jacobian_norm']:.4f}", flush=True)
    total_s = time.perf_counter() - start
    last = rows[-1]
    ok = all(r["L"] < 1 and r["jacobian_norm"] <= r["L"] for r in rows)
    print(f"final: val acc {100 * last['val_acc']:.1f}%, L {last['L']:.4f} < 1, counts {last['forward_count']}/"
          f"{last['adjoint_count']}, measured ||J_f(z*)|| {last['jacobian_norm']:.4f} <= L: "
          f"{'yes' if ok else 'NO'}, {total_s:.0f} s in all", flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        curve = {"example": "certified_deq_classifier", "data": {"spec": args.data, "train": len(train),
                                                                  "val": len(val), "classes": list(train.classes)},
                 "config": {k: v for k, v in vars(args).items() if k not in ("data", "out")},
                 "tol": TOL, "jacobian_images": len(probe), "epochs": rows, "step_losses": losses, "seconds": total_s,
                 "torch_threads": torch.get_num_threads(), "bound_holds": ok}
        (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
        plot(curve, out / "curve.png")
        print(f"wrote {out / 'curve.json'} and {out / 'curve.png'}", flush=True)
    return 0 if ok else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (LmdeqError, OSError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
