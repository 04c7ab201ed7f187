"""Any input channel count, image size and class count (issue 24 item 1): every preset builds and runs on its own
input shape, a shape that does not fit is a clear error naming the setting, and the certified bound holds — the
stem and head are outside f, so L bounds ||J_f|| whatever the input — checked by power iteration on J_f^T J_f
at a random state, at init and after training steps, on every preset."""
import pytest
import torch

from lmdeq.errors import ConfigError
from lmdeq.models import PRESETS, mdeq
from lmdeq.models.presets import PRESET_DATA, describe_presets

HEAVY = {"imagenet-small", "imagenet-large"}   # 224x224 inputs: init check only (training steps are slow on CPU)


def _jacobian_norm(f, z, iters: int = 8) -> float:
    """A lower estimate of max over samples of ||J_f(z)||_2 (power iteration on J^T J, per sample, float64)."""
    z = [t.detach().double().requires_grad_() for t in z]
    fz = f(z)
    v = [torch.randn_like(t) for t in z]
    est = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((t.flatten(1) ** 2).sum(1) for t in v)).clamp_min(1e-30)
        v = [t / norm.view(-1, *[1] * (t.dim() - 1)) for t in v]
        # J v by double-vjp: u -> J^T u is linear in u, its vjp with v is J v
        u = [torch.zeros_like(t, requires_grad=True) for t in fz]
        jtu = torch.autograd.grad(fz, z, u, create_graph=True)
        jv = torch.autograd.grad(jtu, u, v, retain_graph=True)
        jtjv = torch.autograd.grad(fz, z, list(jv), retain_graph=True)
        est = float(torch.sqrt(sum((t.flatten(1) * s.flatten(1)).sum(1) for t, s in zip(jtjv, v))).max())
        v = [t.detach() for t in jtjv]
    return est


def _model(preset):
    torch.manual_seed(0)
    return mdeq(preset).double()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_on_its_input_and_its_bound_holds(preset):
    model = _model(preset)
    spec = PRESETS[preset]
    assert model.input_shape == (spec["in_channels"], spec["image_size"], spec["image_size"])
    x = torch.randn(2, *model.input_shape, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, spec["num_classes"]) and torch.isfinite(logits).all()
    f, z0 = model.fixed_point_problem(x[:1])
    z = [torch.randn_like(t) for t in z0]
    measured, bound = _jacobian_norm(f, z), model.lipschitz_bound()
    assert 0 < measured <= bound < 1, (measured, bound)
    if preset in HEAVY:
        return
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)   # large steps: move the weights far from init
    y = torch.arange(2) % spec["num_classes"]
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        model.constraint_step()
    torch.manual_seed(1)
    f, z0 = model.fixed_point_problem(x[:1])   # training mode: this pass's dropout masks
    z = [torch.randn_like(t) for t in z0]
    measured, bound = _jacobian_norm(f, z), model.lipschitz_bound()
    assert 0 < measured <= bound < 1, (measured, bound)


def test_presets_say_what_data_they_are_for():
    assert set(PRESET_DATA) == set(PRESETS)
    for name, data in PRESET_DATA.items():
        assert len(data["mean"]) == len(data["std"]) == PRESETS[name]["in_channels"]
    lines = describe_presets()
    assert len(lines) == len(PRESETS) and lines[5].startswith("mnist-small") and "1x28x28" in lines[5]


@pytest.mark.parametrize("overrides,match", [
    (dict(image_size=31), "image_size 31 does not fit: .* multiple of 2 \\(e.g. 30 or 32\\)"),
    (dict(image_size=30, channels=[24, 24, 24], head_channels=[8, 8, 8]), "multiple of 4 \\(e.g. 28 or 32\\)"),
    (dict(image_size=40, downsample=2, channels=[24, 24, 24], head_channels=[8, 8, 8]), "multiple of 16 \\(e.g. 32 or 48\\)"),
    (dict(image_size=2, channels=[24, 24, 24], head_channels=[8, 8, 8]), "image_size 2 does not fit.*e.g. 4"),
    (dict(downsample=3), "downsample must be one of \\(0, 1, 2\\)"),
    (dict(in_channels=0), "in_channels must be an int >= 1"),
    (dict(num_classes=0), "num_classes must be an int >= 1"),
])
def test_a_shape_that_does_not_fit_is_a_clear_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        mdeq("cifar10-small", **overrides)


@pytest.mark.parametrize("shape,match", [
    ((2, 3, 28, 28), "takes 1-channel images: its in_channels"),
    ((2, 1, 32, 32), "takes 28x28 images: its image_size"),
    ((2, 1, 28), "must have shape \\(B, 1, 28, 28\\)"),
])
def test_images_of_another_shape_are_refused_naming_the_setting(shape, match):
    model = mdeq("mnist-small")
    with pytest.raises(ConfigError, match=match):
        model(torch.zeros(shape))


def test_downsampling_stem_and_any_channel_count():
    model = mdeq("cifar10-small", in_channels=5, image_size=64, downsample=1, num_classes=7)
    assert [t.shape for t in model.fixed_point_problem(torch.zeros(1, 5, 64, 64))[1]] == \
        [(1, 24, 32, 32), (1, 24, 16, 16)]
    assert model(torch.zeros(3, 5, 64, 64)).shape == (3, 7)
    assert mdeq(**model.config).config == model.config
