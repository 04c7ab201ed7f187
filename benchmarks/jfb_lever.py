"""What skipping the adjoint solve would cost (a lever towards the paper's 4.75x): lmdeq's fast path (c) with the
implicit gradient vs the Jacobian-free gradient (JFB: backpropagate through one application of f at z*).

For a contraction f with ||J_f|| <= L, the implicit gradient is g = (I - J^T)^{-1} J_theta^T v and JFB drops
the Neumann tail: ||g - g_JFB|| <= L / (1 - L) ||J_theta^T v|| relative to the first term, so the certified
bound bounds the error of the cheaper gradient. Measured here on trained weights and real images: the
relative error and cosine of the parameter gradients (JFB vs implicit) per batch, next to the certified L and
L / (1 - L), and the training-step time of both, interleaved round by round.

    python benchmarks/jfb_lever.py --weights weights/cifar10-small-lipschitz-5ep.pt \\
        --data ../shared/data/cifar10-train-jpeg.tar.gz --batches 4 --rounds 7 --out benchmarks/results/jfb-lever.json

The result JSON goes to --out, or to jfb-lever.json in a new run folder outside the checkout
(lmdeq/app/bench/outputs.py); an existing file is refused before any work unless --force.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from lmdeq.app.argtypes import output_file, path, positive_int
from lmdeq.app.bench.device import environment, load_average
from lmdeq.app.bench.outputs import add_out_arguments, result_file
from lmdeq.app.bench.interleave import interleaved_rounds, ratio_spread, spread
from lmdeq.app.bench.speedup import _batch
from lmdeq.models import mdeq
from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.errors import ConfigError


def _model(ckpt: dict, backward: str) -> torch.nn.Module:
    model = mdeq(**{**ckpt["model_config"], "backward": backward})
    model.load_state_dict(ckpt["model_state"], strict=False)
    return model


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=path, required=True)
    p.add_argument("--data", type=path, default=None)
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--batches", type=positive_int, default=4, help="batches for the gradient comparison")
    p.add_argument("--rounds", type=positive_int, default=7)
    p.add_argument("--warmup", type=positive_int, default=2)
    add_out_arguments(p, "jfb-lever", out_type=output_file, what="the result JSON")
    args = p.parse_args(argv)
    try:   # where the JSON goes, before any work
        out = result_file(args.out, "jfb-lever", "jfb-lever.json", args.force)
    except ConfigError as err:
        p.error(str(err))
    ckpt = load_checkpoint(args.weights)
    implicit, jfb = _model(ckpt, "implicit"), _model(ckpt, "jfb")
    bound = float(implicit.lipschitz_bound())
    errors = []
    for k in range(args.batches):
        x, y = _batch(args.batch, "cpu", args.data, seed=k)
        implicit.train(), jfb.train()
        torch.manual_seed(k)
        g_i = _grads(implicit, x, y)
        torch.manual_seed(k)   # the same dropout masks
        g_j = _grads(jfb, x, y)
        errors.append({"rel_err": float((g_j - g_i).norm() / g_i.norm()),
                       "cosine": float(torch.dot(g_j, g_i) / (g_j.norm() * g_i.norm()))})
    x, y = _batch(args.batch, "cpu", args.data, seed=0)
    opts = {n: torch.optim.Adam(m.parameters(), lr=1e-3) for n, m in (("implicit", implicit), ("jfb", jfb))}

    def step(name, model):
        def run():
            opts[name].zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opts[name].step()
            model.constraint_step()
        return run

    load_start = load_average()
    seconds = interleaved_rounds({"implicit": step("implicit", implicit), "jfb": step("jfb", jfb)}, args.rounds,
                                 args.warmup, lambda: None)
    ms = {n: [1e3 * t for t in v] for n, v in seconds.items()}
    result = {"weights": args.weights, "certified_L": bound, "L_over_1_minus_L": bound / (1 - bound),
              "gradient": errors, "train_ms": {n: spread(v) for n, v in ms.items()},
              "ratio_implicit_over_jfb": ratio_spread(ms["implicit"], ms["jfb"]), "env": environment("cpu"),
              "load_average": [load_start, load_average()], "batch": args.batch, "data": args.data}
    print(json.dumps({k: v for k, v in result.items() if k != "env"}, indent=1))
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
