"""lmdeq's MDEQ-large computes the released models' functions: with weights transplanted under the released
parameter names, the injection, the equilibrium map f and the classification head of

* lmdeq's original MDEQ equal locuslab/deq's MDEQ (MDEQ-Vision, cls_mdeq_LARGE.yaml), and
* lmdeq's Lipschitz MDEQ (constraint 'released', and 'certified' with a cap that does not bind) equal the
  authors' Lipschitz MDEQ (iiduka-researches/Lipschitz_mdeq, cls_mdeq_LARGE.yaml: mean-only GroupNorm,
  s * ReLU, residual and fusion mixing with alpha, beta and the softmax over level penalties)

to ~1e-15 in float64, in evaluation mode and in training mode (batch statistics, the same dropout masks).

The reference below is a functional re-statement of the released forward passes (their module structure
and parameter names, torch.nn.functional for conv / batch norm / standard group norm), not lmdeq code.
The classification head is locuslab's (the authors' copy of mdeq.py is not in their repository's
MDEQ-Vision/lib/models; their code imports locuslab's structure).
"""

import pytest
import torch
from torch.nn import functional as F

from lmdeq.models import AUTHORS_SOLVER, mdeq

from ..bench.scripts import load_script

# lmdeq state-dict name -> released name: benchmarks/independent/mdeq_small.py (the independent MDEQ-small, which
# loads lmdeq's weights the same way) holds the mapping.
_INDEPENDENT = load_script("benchmarks/independent/mdeq_small.py")
RENAMES = _INDEPENDENT.RENAMES


def transplant(model):
    """{released name: tensor} from an lmdeq model's state dict (every entry mapped exactly once)."""
    return _INDEPENDENT.lmdeq_to_released(model.state_dict())


class Released:
    """The released forward pass over a {name: tensor} dict; records which names it read."""

    def __init__(self, params, lipschitz, training, masks, knobs):
        self.p, self.used = params, set()
        self.lipschitz, self.training, self.masks = lipschitz, training, masks
        self.s, self.alpha, self.beta, self.groups = knobs["s"], knobs["alpha"], knobs["beta"], knobs["groups"]

    def __getitem__(self, name):
        self.used.add(name)
        return self.p[name]

    def has(self, name):
        return name in self.p

    # -- layers ------------------------------------------------------------------------------------------
    def conv(self, x, prefix, stride=1, padding=None):
        if self.has(prefix + "weight_g"):   # weight norm: v * g / ||v|| per output channel
            v, g = self[prefix + "weight_v"], self[prefix + "weight_g"]
            w = v * (g / v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, 1, 1, 1))
        else:
            w = self[prefix + "weight"]
        bias = self[prefix + "bias"] if self.has(prefix + "bias") else None
        pad = w.shape[-1] // 2 if padding is None else padding
        return F.conv2d(x, w, bias, stride=stride, padding=pad)

    def bn(self, x, prefix):
        self[prefix + "num_batches_tracked"]
        weight = self[prefix + "weight"] if self.has(prefix + "weight") else None
        bias = self[prefix + "bias"] if self.has(prefix + "bias") else None
        return F.batch_norm(x, self[prefix + "running_mean"].clone(), self[prefix + "running_var"].clone(),
                            weight, bias, training=self.training, momentum=0.1, eps=1e-5)

    def gn(self, x, prefix, groups):
        weight = self[prefix + "weight"] if self.has(prefix + "weight") else None
        bias = self[prefix + "bias"] if self.has(prefix + "bias") else None
        if not self.lipschitz:   # locuslab: nn.GroupNorm
            return F.group_norm(x, groups, weight, bias, eps=1e-5)
        n, c, h, w = x.shape     # the authors' CustomGroupNorm(use_std=False): subtract the group mean only
        flat = x.reshape(n, groups, -1)
        out = (flat - flat.mean(dim=-1, keepdim=True)).reshape(n, c, h, w)
        return out if weight is None else out * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)

    def act(self, x):
        return torch.relu(x) * (self.s if self.lipschitz else 1.0)

    # -- the model ------------------------------------------------------------------------------------------
    def injection(self, x):
        y = torch.relu(self.bn(self.conv(x, "downsample.0."), "downsample.1."))
        y = torch.relu(self.bn(self.conv(y, "downsample.3."), "downsample.4."))
        if self.has("stage0.0.weight"):
            y = torch.relu(self.bn(self.conv(y, "stage0.0."), "stage0.1."))
        return y

    def block(self, i, x, injection):
        pre = f"fullstage.branches.{i}.blocks.0."
        out = self.act(self.gn(self.conv(x, pre + "conv1."), pre + "gn1.", self.groups))
        out = self.conv(out, pre + "conv2.")
        if self.training:
            out = out * self.masks[i]
        out = self.gn(out + injection, pre + "gn2.", self.groups)
        out = (1 - self.alpha) * x + self.alpha * out if self.lipschitz else out + x
        return self.gn(self.act(out), pre + "gn3.", self.groups)

    def fuse(self, i, j, x):
        pre = f"fullstage.fuse_layers.{i}.{j}.net."
        if j > i:   # 1x1 conv, GN, nearest upsampling
            y = self.gn(self.conv(x, pre + "conv."), pre + "gnorm.", self.groups)
            return F.interpolate(y, scale_factor=2 ** (j - i), mode="nearest")
        for k in range(i - j):   # stride-2 3x3 convs with GN, activation between them
            x = self.gn(self.conv(x, f"{pre}{k}.conv.", stride=2, padding=1), f"{pre}{k}.gnorm.", self.groups)
            if k < i - j - 1:
                x = self.act(x)
        return x

    def f(self, z, injection):
        n = len(z)
        blocks = [self.block(i, z[i], injection if i == 0 else 0.0) for i in range(n)]
        out = []
        for i in range(n):
            others = [j for j in range(n) if j != i]
            terms = [self.fuse(i, j, blocks[j]) for j in others]
            if self.lipschitz:
                penalties = torch.tensor([float(j - i) if j > i else 0.0 for j in others], dtype=torch.float64)
                weights = torch.softmax(-penalties, dim=0)
                y = (1 - self.beta) * blocks[i] + self.beta * sum(w * t for w, t in zip(weights, terms))
            else:
                y = blocks[i] + sum(terms)
            pre = f"fullstage.post_fuse_layers.{i}."
            out.append(self.gn(self.conv(self.act(y), pre + "conv."), pre + "gnorm.", self.groups // 2))
        return out

    def bottleneck(self, i, x):
        pre = f"incre_modules.{i}.0."
        out = torch.relu(self.bn(self.conv(x, pre + "conv1."), pre + "bn1."))
        out = torch.relu(self.bn(self.conv(out, pre + "conv2."), pre + "bn2."))
        out = self.bn(self.conv(out, pre + "conv3."), pre + "bn3.")
        residual = self.bn(self.conv(x, pre + "downsample.0."), pre + "downsample.1.") \
            if self.has(pre + "downsample.0.weight") else x
        return torch.relu(out + residual)

    def head(self, z):
        y = self.bottleneck(0, z[0])
        for i in range(1, len(z)):
            down = torch.relu(self.bn(self.conv(y, f"downsamp_modules.{i - 1}.0.", stride=2, padding=1),
                                      f"downsamp_modules.{i - 1}.1."))
            y = self.bottleneck(i, z[i]) + down
        y = torch.relu(self.bn(self.conv(y, "final_layer.0."), "final_layer.1."))
        y = F.avg_pool2d(y, kernel_size=y.shape[2:]).flatten(1)
        return F.linear(y, self["classifier.weight"], self["classifier.bias"])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def _randomise_(model):
    """Move every parameter and batch-norm statistic off its init (gammas of the Lipschitz variant stay in
    [-gamma_max, gamma_max], the box the released clamp keeps them in)."""
    g = torch.Generator().manual_seed(7)
    for name, p in model.named_parameters():
        if "gn" in name or "norms" in name or name.endswith("norm.weight") or name.endswith("norm.bias"):
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 2 - 1)
        else:
            p.add_(0.3 * p.std().nan_to_num(0.05) * torch.randn(p.shape, generator=g, dtype=p.dtype))
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=g, dtype=b.dtype))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))


VARIANTS = {
    "original": dict(lipschitz=False),
    "lipschitz-released": dict(lipschitz=True, constraint="released", **AUTHORS_SOLVER),
    "lipschitz-certified-loose-cap": dict(lipschitz=True, conv_cap=1e6, init_power_iters=1),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def transplanted(request):
    torch.manual_seed(0)
    model = mdeq("cifar10-large", **VARIANTS[request.param]).double()
    _randomise_(model)
    return model, transplant(model)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_lmdeq_computes_the_released_function(transplanted, training):
    model, params = transplanted
    model.train(training)
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    z = [torch.randn(s, generator=g, dtype=torch.float64) for s in model.cell.state_shapes(2)]
    with torch.no_grad():
        f, _ = model.fixed_point_problem(x)             # draws this pass's dropout masks in training mode
        masks = [blk.drop.mask for blk in model.cell.blocks]
        ours_inj = model.injection(model.stem(x))
        with model.cell.frozen_weights():
            ours_f = f(z)
        ours_head = model.head(z)
    knobs = dict(s=cfg.get("s", 1.0), alpha=cfg.get("alpha", 0.0), beta=cfg.get("beta", 0.0),
                 groups=cfg["num_groups"])
    ref = Released(params, cfg["lipschitz"], training, masks, knobs)
    with torch.no_grad():
        inj = ref.injection(x)
        ref_f = ref.f(z, inj)
        ref_head = ref.head(z)
    assert _rel(ours_inj, inj) < 1e-13
    for ours, theirs in zip(ours_f, ref_f):
        assert _rel(ours, theirs) < 1e-13
    assert _rel(ours_head, ref_head) < 1e-13
    assert ref.used == set(params), sorted(set(params) - ref.used)[:5]   # every transplanted weight is used
