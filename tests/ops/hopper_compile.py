"""Compile lmdeq's Triton kernels for Hopper (sm_90) without a GPU.

Two halves. In the test process (Triton interpreter on), :func:`record_launches` records every kernel
launch the ops make: kernel, argument types, constexpr values and launch options. Run as a script
(interpreter off, so ``lmdeq.kernels`` holds real ``JITFunction``s), it reads those records as JSON on
stdin, compiles each distinct one with ``triton.compile`` for ``GPUTarget('cuda', 90, 64)`` through
Triton's own ptxas, and prints one JSON result per record (cubin size, or the error). The general
signature is compiled (no value specialisation such as ints equal to 1 or 16-byte divisibility).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import sys

_POINTER = {"float32": "fp32", "float64": "fp64", "float16": "fp16", "bfloat16": "bf16", "int32": "i32",
            "int64": "i64", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}
_OPTIONS = ("num_warps", "num_stages")


def _arg_type(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + _POINTER[str(value.dtype).replace("torch.", "")]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton signature type for {type(value).__name__}")


def _constexpr_value(value):
    """Constexprs as JSON: Triton dtypes by name, numbers and bools as they are."""
    import triton.language as tl

    if isinstance(value, tl.dtype):
        return {"dtype": value.name}
    if isinstance(value, tl.constexpr):
        return _constexpr_value(value.value)
    return value


@contextlib.contextmanager
def record_launches(records: list):
    """Append one record per interpreted kernel launch to ``records`` while active."""
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        params = inspect.signature(self.fn).parameters
        bound = dict(zip(self.arg_names, args), **{k: v for k, v in kwargs.items() if k in params})
        signature, constexprs = {}, {}
        for name, param in params.items():
            if "constexpr" in str(param.annotation):
                signature[name] = "constexpr"
                constexprs[name] = _constexpr_value(bound[name])
            else:
                signature[name] = _arg_type(bound[name])
        records.append({"module": self.fn.__module__, "kernel": self.fn.__name__, "signature": signature,
                        "constexprs": constexprs, "options": {k: kwargs[k] for k in _OPTIONS if k in kwargs}})
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield records
    finally:
        InterpretedFunction.run = original


def distinct(records: list) -> list:
    """The records without repeats (same kernel, signature, constexprs and options)."""
    seen, out = set(), []
    for r in records:
        key = json.dumps(r, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def compile_for_hopper(record: dict) -> dict:
    """Compile one record for sm_90; returns the record's kernel with ``cubin_bytes`` or ``error``."""
    import importlib

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(record["module"]), record["kernel"])
    constexprs = {k: tl.dtype(v["dtype"]) if isinstance(v, dict) else v for k, v in record["constexprs"].items()}
    result = {"kernel": record["kernel"], "constexprs": record["constexprs"]}
    try:
        compiled = triton.compile(ASTSource(fn=fn, signature=record["signature"], constexprs=constexprs),
                                  target=GPUTarget("cuda", 90, 64), options=record["options"])
        result["cubin_bytes"] = len(compiled.asm["cubin"])
    except Exception as exc:  # every failure is reported with its kernel, none stops the others
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


def main() -> int:
    records = json.load(sys.stdin)
    json.dump([compile_for_hopper(r) for r in records], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
