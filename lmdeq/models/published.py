"""Published weights in one line: ``model = lmdeq.models.pretrained("cifar10-small-lipschitz")``.

:data:`PUBLISHED` lists each published checkpoint with what a user needs to use it: the file and its sha256, the
preset, the data it was trained on and how it was split, the normalisation its inputs need (x = (u / 255 - mean)
/ std per channel, u the uint8 pixel), its epochs (of a schedule of ``schedule_epochs``), its accuracy on the
held-out split, and its certified Lipschitz bound at inference (estimated and verified, 3 decimals).
:func:`pretrained` returns the model in eval mode with those weights, after checking the file's sha256 (a damaged
or replaced file is an error, never a silently different model). The files live in the repository's weights/
directory; ``path=`` or the ``LMDEQ_WEIGHTS`` directory point elsewhere (an installed package has no weights/).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from ..errors import CheckpointError, ConfigError
from ..files import file_sha256

__all__ = ["PUBLISHED", "pretrained", "weights_path"]

_CIFAR10_SPLIT = "CIFAR-10 training split (50,000 images): 45,000 trained on, 5,000 held out by seed 0"
_CIFAR10_STATS = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
# digests of the images trained on and held out (what a checkpoint's data_digest records; eval compares)
_CIFAR10_DIGEST = {"train": "ea5e4f8695368ddf53035a8715ecedf3", "val": "df167893e2d72763ee5138f567370e9b"}

PUBLISHED = {
    # The best epoch so far of the run on MDEQ-small's 50-epoch schedule (docs/results/training.md).
    "cifar10-small-lipschitz": dict(
        file="cifar10-small-lipschitz.pt",
        sha256="e60ae126d1642ea22fd20569e5ecc6dea3ec858d785c43370a00f127a4ac044a",
        preset="cifar10-small", data=_CIFAR10_SPLIT,
        **_CIFAR10_STATS,
        val_acc=0.7224, epochs=23, schedule_epochs=50, lipschitz_bound_eval=0.301,
        lipschitz_bound_eval_verified=0.269,
        data_digest=_CIFAR10_DIGEST,
    ),
    # The 5-epoch demo the benchmarks' trained-weights rows and the tightness ledger were measured on.
    "cifar10-small-lipschitz-5ep": dict(
        file="cifar10-small-lipschitz-5ep.pt",
        sha256="2c35661c81ba8ba7d1ad022bca8c827460d210977018e14347719b0be150fdcc",
        preset="cifar10-small", data=_CIFAR10_SPLIT,
        **_CIFAR10_STATS,
        val_acc=0.6302, epochs=5, schedule_epochs=5, lipschitz_bound_eval=0.237, lipschitz_bound_eval_verified=0.213,
        data_digest=_CIFAR10_DIGEST,
    ),
}
_REPO_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


def weights_path(name: str, path: Optional[str | os.PathLike] = None) -> Path:
    """Where the file of published weights ``name`` is: ``path``, else ``$LMDEQ_WEIGHTS/<file>``, else the
    repository's weights/<file>; an error naming every place looked at when it is in none."""
    if name not in PUBLISHED:
        raise ConfigError(f"pretrained: unknown weights {name!r}; published: {sorted(PUBLISHED)}")
    file = PUBLISHED[name]["file"]
    places = [Path(path).expanduser()] if path is not None else []
    if os.environ.get("LMDEQ_WEIGHTS"):
        places.append(Path(os.environ["LMDEQ_WEIGHTS"]).expanduser() / file)
    places.append(_REPO_WEIGHTS / file)
    for place in places:
        if place.is_file():
            return place
    raise CheckpointError(f"pretrained: {file} is not at {', '.join(map(str, places))}; it is published in the "
                          "lmdeq repository's weights/ directory: pass path= or set LMDEQ_WEIGHTS to its directory")


def pretrained(name: str = "cifar10-small-lipschitz", path: Optional[str | os.PathLike] = None,
               device: str | torch.device = "cpu") -> torch.nn.Module:
    """The published model ``name`` (:data:`PUBLISHED`) in eval mode on ``device``; its inputs are images
    normalised with ``PUBLISHED[name]['mean']`` / ``['std']``."""
    from .classifier import mdeq

    file = weights_path(name, path)
    want = PUBLISHED[name]["sha256"]
    got = file_sha256(file)
    if got != want:
        raise CheckpointError(f"pretrained: {file} has sha256 {got[:12]}..., the published {name} has {want[:12]}...: "
                              "the file is damaged or another one")
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    model = mdeq(**ckpt["model_config"])
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval()
