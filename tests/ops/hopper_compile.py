"""Compile lmdeq's Triton kernels for Hopper (sm_90) without a GPU.

Two halves. In the test process (Triton interpreter on), :func:`record_launches` records every kernel
launch the ops make: kernel, argument types, constexpr values and launch options, twice: with the
general signature, and specialised on the argument values as Triton's JIT specialises a launch on a
GPU (:func:`specialisation`: an int equal to 1 becomes the constexpr 1; an int divisible by 16 and a
pointer aligned to 16 bytes carry ``tt.divisibility = 16``, which lets the compiler vectorise and fold
address arithmetic: different code, which may fail to build where the general one does not). Run as a
script (interpreter off, so ``lmdeq.kernels`` holds real ``JITFunction``s), it reads those records as
JSON on stdin, compiles each distinct one with ``triton.compile`` for ``GPUTarget('cuda', 90, 64)``
through Triton's own ptxas, and prints one JSON result per record (cubin size, or the error).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import sys

_POINTER = {"float32": "fp32", "float64": "fp64", "float16": "fp16", "bfloat16": "bf16", "int32": "i32",
            "int64": "i64", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "u1"}
_OPTIONS = ("num_warps", "num_stages")


def _arg_type(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + _POINTER[str(value.dtype).replace("torch.", "")]
    if isinstance(value, bool):
        return "u1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton signature type for {type(value).__name__}")


def specialisation(value):
    """How Triton's JIT (3.4 and later: ``native_specialize_impl``) specialises one non-constexpr argument
    value: ("constexpr", 1) for the int 1, ("D", type) for an int divisible by 16 or a tensor whose
    address is, (None, type) otherwise (floats and bools are never specialised)."""
    import torch

    if isinstance(value, torch.Tensor):
        return ("D" if value.data_ptr() % 16 == 0 else None), _arg_type(value)
    if isinstance(value, bool) or isinstance(value, float):
        return None, _arg_type(value)
    if isinstance(value, int):
        if value == 1:
            return "constexpr", 1
        return ("D" if value % 16 == 0 else None), _arg_type(value)
    raise TypeError(f"no Triton specialisation for {type(value).__name__}")


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
        signature, constexprs, spec_signature, spec_constexprs, divisible = {}, {}, {}, {}, []
        for name, param in params.items():
            if "constexpr" in str(param.annotation):
                signature[name] = spec_signature[name] = "constexpr"
                constexprs[name] = spec_constexprs[name] = _constexpr_value(bound[name])
                continue
            signature[name] = _arg_type(bound[name])
            kind, value = specialisation(bound[name])
            if kind == "constexpr":
                spec_signature[name], spec_constexprs[name] = "constexpr", value
            else:
                spec_signature[name] = value
                if kind == "D":
                    divisible.append(name)
        base = {"module": self.fn.__module__, "kernel": self.fn.__name__,
                "options": {k: kwargs[k] for k in _OPTIONS if k in kwargs}}
        records.append({**base, "signature": signature, "constexprs": constexprs, "divisible": []})
        records.append({**base, "signature": spec_signature, "constexprs": spec_constexprs, "divisible": divisible})
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
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in record["divisible"]}
    result = {"kernel": record["kernel"], "constexprs": record["constexprs"], "divisible": record["divisible"]}
    try:
        compiled = triton.compile(ASTSource(fn=fn, signature=record["signature"], constexprs=constexprs, attrs=attrs),
                                  target=GPUTarget("cuda", 90, 64), options=record["options"])
        result["cubin_bytes"] = len(compiled.asm["cubin"])
    except Exception as exc:  # every failure is reported with its kernel, none stops the others
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


def main() -> int:
    """Compile the records from stdin in a few worker processes (each compile is independent)."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    records = json.load(sys.stdin)
    workers = max(1, min(4, os.cpu_count() or 1, len(records)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(compile_for_hopper, records, chunksize=8))
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
