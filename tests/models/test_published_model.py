"""The published 5-epoch checkpoint through the certified blocks: its stored config still builds the model it was published
as (layerwise bound, no budget, the same logits and bound as before the blocks were made public: the reference
values below were computed from it before that change), and the composed bound of the same weights is tighter,
yet above the measured ||J_f(z*)||."""
import pytest
import torch

from lmdeq.models import PUBLISHED, mdeq, pretrained, resolve_config
from lmdeq.models.published import weights_path
from lmdeq.solvers import FixedPoint
from lmdeq.deq import jacobian_norm


# Logits of samples 0-2 of torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(123)) and the certified
# bound (eval mode) of the published model, before the change (lmdeq 0.1.0 at commit 1892aa5).
REFERENCE_LOGITS = [
    [-3.6414284706115723, -4.142911911010742, -1.070346713066101, -2.1819489002227783, 1.7272262573242188,
     -6.138147354125977, 4.812710762023926, -4.586868762969971, -2.5077168941497803, -2.6582419872283936],
    [-3.760578155517578, -4.346655368804932, -1.147599220275879, -2.1789896488189697, 1.8040966987609863,
     -6.4521894454956055, 5.252634048461914, -4.493820667266846, -2.9393703937530518, -2.6925742626190186],
    [-3.7011001110076904, -3.7362515926361084, -1.4434939622879028, -2.092275619506836, 1.1661595106124878,
     -6.002264976501465, 4.315499782562256, -4.684659004211426, -1.9130723476409912, -2.1281163692474365]]
REFERENCE_BOUND = 0.23718029736948634


def _checkpoint():
    return torch.load(weights_path("cifar10-small-lipschitz-5ep"), map_location="cpu", weights_only=True)


def test_the_published_config_keeps_its_behaviour():
    cfg = _checkpoint()["model_config"]
    assert not {"bound", "forward_budget", "backward_budget"} & set(cfg)   # saved before these settings existed
    resolved = resolve_config(**cfg)
    assert (resolved["bound"], resolved["forward_budget"], resolved["backward_budget"]) == ("layerwise", None, None)
    model = pretrained("cifar10-small-lipschitz-5ep")
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        logits = model(x)
    assert torch.allclose(logits[:3], torch.tensor(REFERENCE_LOGITS), rtol=1e-5, atol=1e-5)
    assert model.lipschitz_bound() == pytest.approx(REFERENCE_BOUND, rel=1e-12)
    assert round(model.lipschitz_bound(), 3) == PUBLISHED["cifar10-small-lipschitz-5ep"]["lipschitz_bound_eval"]


def test_the_composed_bound_of_the_published_weights_is_tighter_and_still_above_the_measured_norm():
    ckpt = _checkpoint()
    model = mdeq(**ckpt["model_config"], bound="composed").eval()
    model.load_state_dict(ckpt["model_state"])   # a layerwise checkpoint: composed norms estimated at first use
    composed = model.lipschitz_bound()
    assert composed < model.cell.layerwise_bound() == pytest.approx(REFERENCE_BOUND, rel=1e-12)
    assert composed < 0.95 * REFERENCE_BOUND
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        x = torch.randn(1, 3, 32, 32, generator=gen)
        f, z0 = model.fixed_point_problem(x)
        with torch.no_grad():
            z = FixedPoint(max_iter=60, tol=1e-6, stop_mode="rel").solve(f, z0).value
        assert jacobian_norm(f, [t.detach() for t in z], iters=15) <= composed
