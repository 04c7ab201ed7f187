"""The classification head's global average pooling (a sum and one division): the same logits and
gradients as a mean over the spatial dims, in both memory formats (float64)."""
import pytest
import torch

from lmdeq.models.outer import ClassificationHead


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_head_equals_mean_pooling(channels_last):
    torch.manual_seed(0)
    head = ClassificationHead([4, 8], [2, 4], 16, 10).double().train()
    z = [torch.randn(3, 4, 32, 32, dtype=torch.float64), torch.randn(3, 8, 16, 16, dtype=torch.float64)]
    if channels_last:
        head = head.to(memory_format=torch.channels_last)
        z = [t.contiguous(memory_format=torch.channels_last) for t in z]
    z = [t.requires_grad_() for t in z]

    def reference(z):
        y = head.increase[0](z[0])
        for i, down in enumerate(head.downsample):
            y = head.increase[i + 1](z[i + 1]) + down(y)
        return head.classifier(head.final(y).mean(dim=(2, 3)))

    w = torch.randn(3, 10, dtype=torch.float64)
    inputs = z + list(head.parameters())
    out = head(z)
    got = torch.autograd.grad((out * w).sum(), inputs)
    ref = reference(z)
    want = torch.autograd.grad((ref * w).sum(), inputs)
    assert float((out - ref).detach().norm() / ref.detach().norm()) < 1e-13
    for a, b in zip(got, want):
        assert float((a - b).norm()) <= 1e-12 * float(b.norm()) + 1e-15
