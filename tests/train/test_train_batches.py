"""Augmentation against a per-image reference, normalisation in float64, seeded epoch batches."""
import pytest
import torch
import torch.nn.functional as F

from lmdeq.app.data.augment import CIFAR10_MEAN, CIFAR10_STD, crop_flip, normalize
from lmdeq.app.data.batches import epoch_plan, eval_batches, train_batches
from lmdeq.app.data.images import LabelledImages


def _reference_crop_flip(img, oy, ox, flip, p):
    """One image: zero-pad, slice the crop, then mirror (torchvision's RandomCrop + RandomHorizontalFlip)."""
    _, h, w = img.shape
    out = F.pad(img, (p, p, p, p))[:, oy:oy + h, ox:ox + w]
    return out.flip(-1) if flip else out


@pytest.mark.parametrize("shape,p", [((1, 3, 32, 32), 4), ((5, 3, 7, 5), 2), ((3, 1, 4, 9), 0)])
def test_crop_flip_matches_reference(shape, p):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    offsets = torch.randint(0, 2 * p + 1, (shape[0], 2), generator=g)
    flips = torch.randint(0, 2, (shape[0],), generator=g).bool()
    out = crop_flip(images, offsets, flips, p)
    for b in range(shape[0]):
        ref = _reference_crop_flip(images[b], int(offsets[b, 0]), int(offsets[b, 1]), bool(flips[b]), p)
        assert torch.equal(out[b], ref)
    assert out.is_contiguous() and out.dtype == torch.uint8


def test_crop_flip_non_contiguous_input():
    base = torch.randint(0, 256, (4, 6, 6, 3), dtype=torch.uint8)
    images = base.permute(0, 3, 1, 2)  # channels-last view
    offsets, flips = torch.tensor([[0, 0], [2, 1], [1, 2], [2, 2]]), torch.tensor([True, False, True, False])
    assert torch.equal(crop_flip(images, offsets, flips, 1), crop_flip(images.contiguous(), offsets, flips, 1))


def test_crop_flip_bad_arguments():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="offsets must be"):
        crop_flip(x, torch.zeros(3, 2, dtype=torch.int64), torch.zeros(2, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match=r"offsets must lie in \[0, 2\]"):
        crop_flip(x, torch.full((2, 2), 3), torch.zeros(2, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match="padding"):
        crop_flip(x, torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, dtype=torch.bool), -1)


def test_normalize_matches_float64_reference():
    u = torch.randint(0, 256, (3, 3, 5, 7), dtype=torch.uint8)
    ref = (u.double() / 255 - torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
    out = normalize(u)
    assert out.dtype == torch.float32
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-6
    with pytest.raises(TypeError, match="uint8"):
        normalize(u.float())


def _data(n=23):
    g = torch.Generator().manual_seed(1)
    return LabelledImages(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                          torch.arange(n) % 3, ("a", "b", "c"))


def _collect(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_train_batches_are_a_function_of_seed_and_epoch():
    data = _data()
    x1, y1 = _collect(train_batches(data, 5, seed=3, epoch=2))
    torch.manual_seed(123)  # the global RNG must not matter
    x2, y2 = _collect(train_batches(data, 5, seed=3, epoch=2, workers=2))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = _collect(train_batches(data, 5, seed=3, epoch=3))
    assert not torch.equal(x1, x3)
    sizes = [len(y) for _, y in train_batches(data, 5, seed=3, epoch=2)]
    assert sizes == [5, 5, 5, 5, 3]


def test_train_batches_visit_every_image_once():
    data = _data()
    plan = epoch_plan(len(data), seed=0, epoch=1, augment=False, padding=4)
    x, y = _collect(train_batches(data, 4, seed=0, epoch=1, augment=False))
    assert torch.equal(x, data.images[plan.order]) and torch.equal(y, data.labels[plan.order])
    assert sorted(plan.order.tolist()) == list(range(len(data)))


def test_eval_batches_in_order_and_bad_arguments():
    data = _data()
    x, y = _collect(eval_batches(data, 7))
    assert torch.equal(x, data.images) and torch.equal(y, data.labels)
    with pytest.raises(ValueError, match="batch_size"):
        eval_batches(data, 0)
    with pytest.raises(ValueError, match="workers"):
        eval_batches(data, 2, workers=-1)
    with pytest.raises(TypeError, match="LabelledImages"):
        eval_batches(data.images, 2)
