"""A CPU test double of lmdeq.cuda_graphs.GraphedCall.

Like a CUDA graph it keeps the *capture-time* ``fn`` (with everything its closure captured then) and
static input buffers that each call copies into; unlike a graph it re-runs that ``fn`` in Python.
A ``bind`` that leaked the capture-time inputs instead of reading the static buffers, or info that
is not carried through the outputs, gives wrong results with this double as it would on a GPU.
"""
import torch


class RerunCall:
    @staticmethod
    def supports(device) -> bool:
        return True

    def __init__(self, fn, inputs, device):
        self.fn = fn
        self.device = device
        self.static_in = [t.detach().clone() for t in inputs]
        _, self.meta = fn(self.static_in)   # the warm-up / capture run

    def __call__(self, inputs):
        torch._foreach_copy_(self.static_in, [t.detach() for t in inputs])
        outs, _ = self.fn(self.static_in)
        return [o.detach().clone() for o in outs], self.meta
