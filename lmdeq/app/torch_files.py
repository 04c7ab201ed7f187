"""torch.save / torch.load facts shared by the data cache and the training checkpoints: an object's
``torch.save`` bytes (serialised in memory, so that a file is then written in one atomic replacement), and
why a ``torch.load(..., weights_only=True)`` failed, in a few words (torch's own text advises unsafe
loading, which lmdeq never does)."""
from __future__ import annotations

import io
import re

import torch

from ..errors import first_line

__all__ = ["torch_save_bytes", "load_failure_reason"]


def torch_save_bytes(obj) -> memoryview:
    """``torch.save(obj)`` as bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer()


def load_failure_reason(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` raised ``err``: pickled Python objects, not a torch file, an
    empty / truncated / corrupt file, else the exception's type and first line."""
    text = str(err)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return (f"it pickles Python objects ({found[1]}) besides tensors and plain data; lmdeq never loads those, "
                "unpickling them can run arbitrary code")
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if found:
        return f"not a torch file: {found[1].strip()}"
    if isinstance(err, EOFError):
        return "empty or truncated file"
    if "PytorchStreamReader" in text:
        return "truncated or corrupt (" + text.split(":", 1)[-1].split(".")[0].strip() + ")"
    return f"{type(err).__name__}: {first_line(err)[:160]}" if text.strip() else type(err).__name__
