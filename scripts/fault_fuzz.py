"""The generated cases of the fault table (scripts/fault_table.py): every input channel fuzzed (issue 28 item 7).

Each category comes from one enumeration, which the pytest fuzzers (tests/test_cli_fuzz.py,
tests/train/test_checkpoint_fuzz.py) import as well. Every case runs in a forked child of the fault table and
judges its own outcome with the table's words:

* ``fuzz: CLI flags`` -- every flag that takes a value, of every parser (:func:`parsers`: ``lmdeq`` train, eval,
  bench and any other subcommand, benchmarks/kernels.py, the time-to-accuracy script), given each of
  :data:`HOSTILE_VALUES` (as ``--flag=value``, after a valid base command line: :data:`COMMANDS`). Depth: the
  command's own entry point (``lmdeq.app.cli.main``, the kernel and time-to-accuracy scripts' ``main``) runs for
  real (parsing, then the command's own checks: the training config from the flags and TrainConfig, the
  checkpoint, model, run directory and data checks of run_training / run_evaluation, bench's device, preset,
  methods, weights and data checks, the time-to-accuracy settings, data and models) up to the instant the work
  would start, where :func:`stub_work` stops it (Trainer.fit, the evaluation pass, the speedup / solvers /
  kernel benchmarks, run_interleaved); so an accepted value has been read by everything that reads it before
  the work (the model is built, the run directory locked, the data decoded), but no training step runs.
  ``clear``: exit status 2 and a last line ``...: error: ...`` naming the flag (its name, destination or
  metavar: ``--resume CHECKPOINT`` is named by 'checkpoint: x does not exist');
  ``handled``: the value was accepted as a value of the flag's type and the command reached its work;
  ``silent``: it reached its work with a nonsense value (:func:`nonsense`: an empty or NUL-carrying string, a
  number that is non-finite or 2**63 or more in magnitude; or such a value among what the work received,
  :func:`nonsense_in`); ``other``: anything else (an exit 0 before the work, an error not naming the flag or
  its metavar).
* ``fuzz: environment`` -- every environment variable the code reads (:data:`ENV_VARIABLES`: lmdeq's own
  ``LMDEQ_*``, torchrun's, glibc's allocator thresholds) given each of :data:`ENV_VALUES` (a NUL cannot be
  in an environment variable at all), one at a time, under the cheapest command that reads it (``lmdeq info``,
  ``lmdeq train`` stopped at its work, or the library call). ``clear``: exit 2 with a one-line error naming the
  variable; ``handled``: exit 0 where the value has a documented meaning (:data:`ENV_MEANINGS`); ``silent``:
  exit 0 on a value without one.
* ``fuzz: checkpoint fields`` -- every field of a tiny run's best.pt and last.pt removed, or given each of
  :func:`wrong_values` of another type (:func:`checkpoint_damages`), through ``lmdeq eval --json`` (best.pt)
  and ``lmdeq train --resume`` into a new run directory for one more epoch (last.pt), run in full. ``clear``:
  exit 2 with a one-line error naming the file or the field; ``handled``: the same result as the intact file
  (eval: every number; resume: every tensor and number of the new run, rundir.compare_runs); ``silent``: exit
  0 with another result.
* ``fuzz: data files`` -- every kind of file in a class directory of a tiny ImageFolder (:data:`DATA_FILES`:
  special files, links of every kind, modes, sizes, damaged and odd images), through ``lmdeq train`` stopped at
  its work, then the folder scanned and decoded again to see what the run took. ``clear``: an error (exit 2)
  or a warning naming the file; ``handled``: the file decoded to the pixels it holds (its class unchanged);
  ``silent``: a file left out without a word, decoded to other pixels, or decoded when it holds no defined
  image; and every plain image of the folder must keep its class and pixels. The unreadable-file case is left
  out when the table runs as root (root reads any file).
* ``fuzz: autograd transforms`` -- every transform of :data:`TRANSFORMS` through ``deq_solve`` and ``DEQ``
  with each backward (Implicit, JFB, Phantom), on a float64 tanh contraction. ``handled``: the result equals
  the same transform of an unrolled float64 reference of the same gradient (:func:`reference`: the solve
  unrolled for Implicit; f, or Phantom's damped steps, at the detached fixed point for JFB and Phantom), or
  torch.autograd.gradcheck / gradgradcheck pass (Implicit, the exact gradient); ``clear``: refused with an
  LmdeqError (UnsupportedError naming the limitation); ``silent``: a wrong value, or a failed gradcheck.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_cases import CLASSES10, QUICK_TRAIN, TINY, Case, error_line  # noqa: E402

CLI, ENV, CKPT, DATA, AUTOGRAD = ("fuzz: CLI flags", "fuzz: environment", "fuzz: checkpoint fields",
                                  "fuzz: data files", "fuzz: autograd transforms")
TIMEOUT = 300.0            # seconds before a generated case counts as a hang
REACHED = "fuzz: reached"  # stdout marks of the children, read by the judges
ACCEPTED = "fuzz: accepted"
NONSENSE = "fuzz: nonsense:"
PROBLEM = "fuzz: problem:"
DECODED, NOT_TAKEN = "fuzz: decoded", "fuzz: not taken:"


class Reached(BaseException):
    """Raised by :func:`stub_work` where a command's work would start (a BaseException: no handler of the
    commands catches it); ``args``: (what work, why what it received is nonsense or None)."""


def nonsense_in(value, where: str = "", depth: int = 0) -> str | None:
    """Why a value that reached a command's work is nonsense (a string with a NUL character, a number that is
    non-finite or 2**63 or more in magnitude, anywhere in lists, tuples, dicts, dataclasses and lmdeq objects'
    attributes, 4 levels deep; tensors and modules are not looked into), or None."""
    import dataclasses

    if isinstance(value, str) and "\x00" in value:
        return f"a string with a NUL character ({where or 'an argument'})"
    why = _nonsense_number(value)
    if why is not None:
        return f"{why} ({where or 'an argument'})"
    if depth >= 4 or isinstance(value, (str, bytes)) or type(value).__module__.startswith("torch"):
        return None
    if isinstance(value, dict):
        items = [(f"{where}[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple, set)):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [(f"{where}.{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value)]
    elif type(value).__module__.startswith("lmdeq") and hasattr(value, "__dict__"):
        items = [(f"{where}.{k}", v) for k, v in vars(value).items()]
    else:
        return None
    return next((why for k, v in items if (why := nonsense_in(v, k, depth + 1)) is not None), None)


def stub_work() -> None:
    """Replace the work of every command by raising :class:`Reached` (in a forked child only): training
    (Trainer.fit), the evaluation pass, the speedup, solvers and kernel benchmarks, the time-to-accuracy rounds;
    each looks at what it received (:func:`nonsense_in`)."""
    from lmdeq.app.bench import kernels, solvers, speedup, tta_run
    from lmdeq.app.train import run, trainer

    def reached(what):
        def work(*args, **kwargs):
            raise Reached(what, nonsense_in((args, kwargs), "its arguments"))
        return work

    trainer.Trainer.fit = reached("training (Trainer.fit)")
    run.evaluate = reached("the evaluation pass")
    speedup.run = reached("the speedup benchmark")
    solvers.run = reached("the solver benchmark")
    kernels.run = reached("the kernel benchmark")
    tta_run.run_interleaved = reached("the time-to-accuracy rounds")


def _entry(entry: str):
    if entry == "kernels":
        from lmdeq.app.bench.kernels import main
    elif entry == "tta":
        from lmdeq.app.bench.tta_cli import main
    else:
        from lmdeq.app.cli import main
    return main


def run_to_work(entry: str, argv: list) -> int:
    """Run a command line of ``entry`` ('lmdeq', 'kernels' or 'tta') with :func:`stub_work` in place: its exit
    status, 0 when it reached its work (and a :data:`REACHED` line on stdout, then a :data:`NONSENSE` line if the
    work received nonsense)."""
    stub_work()
    try:
        return _entry(entry)(argv)
    except Reached as reached:
        what, why = reached.args
        print(f"{REACHED} {what}" + (f"\n{NONSENSE} {what} received {why}" if why else ""), flush=True)
        return 0


def _format(argv, w: Path) -> list:
    return [a.replace("{w}", str(w)) for a in argv]


def _here(w: Path, name: str) -> Path:
    """A fresh working directory of its own for a case (two levels down, so that '../x' stays inside it)."""
    here = w / "fuzz-cwd" / name / "here"
    here.mkdir(parents=True, exist_ok=True)
    return here


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:80] or "x"


def _names_one_of(line: str, names) -> bool:
    """Whether ``line`` names one of ``names`` as a word (not inside another word: 'out' is not in 'without')."""
    return any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", line) for n in names if n)


# -- CLI flags -----------------------------------------------------------------------------------------------
HOSTILE_VALUES = (("empty", ""), ("blank", " "), ("negative", "-1"), ("zero", "0"), ("huge", str(2 ** 70)),
                  ("nan", "nan"), ("inf", "inf"), ("overflow", "1e309"), ("unicode", "ünïcødé"),
                  ("wrong type", "x"), ("NUL", "a\x00b"), ("path traversal", "../x"), ("broken JSON", "[1,"))
EMPTY_OK = {"--tag", "--variants"}   # flags whose empty value is documented: no file-name suffix, no variants


def parsers() -> dict:
    """Every command-line parser: 'lmdeq <command>' (and 'lmdeq <command> <subcommand>'), the kernel benchmark
    script, the time-to-accuracy script."""
    from lmdeq.app.bench import kernels, tta_cli
    from lmdeq.app.cli import build_parser

    out = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[f"lmdeq {name}"] = sub
                for a in sub._actions:
                    if isinstance(a, argparse._SubParsersAction):
                        out.update({f"lmdeq {name} {n}": s for n, s in a.choices.items()})
    out["benchmarks/kernels.py"] = kernels.build_parser()
    out["lmdeq bench tta (script)"] = tta_cli.build_parser()
    return out


def value_flags(parser):
    """The optional arguments of ``parser`` that take a value."""
    for a in parser._actions:
        if a.option_strings and a.nargs != 0 and not isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            yield a


def minimal(parser) -> list:
    """Arguments ``parser`` requires, with placeholder values ('x')."""
    argv = []
    for a in parser._actions:
        if a.required and a.option_strings:
            argv += [a.option_strings[0], "x"]
        elif not a.option_strings and a.nargs is None and a.dest not in ("command", "subcommand"):
            argv.append("x")
    return argv


def nonsense(flag: str, got) -> str | None:
    """Why ``got``, the value a parser accepted for ``flag``, is nonsense (None: a value of the flag's type): an
    empty or blank string (unless the flag documents one: :data:`EMPTY_OK`), a string with a NUL character, a
    number that is non-finite or 2**63 or more in magnitude. A list (a repeatable flag) is judged by its last
    item."""
    if isinstance(got, list):
        got = got[-1] if got else None
    if isinstance(got, str) and not got.strip() and flag not in EMPTY_OK:
        return f"the empty value {got!r}"
    if isinstance(got, str) and "\x00" in got:
        return "a value with a NUL character"
    return _nonsense_number(got)


def _nonsense_number(v) -> str | None:
    """Why the number ``v`` is nonsense as a setting: non-finite, or 2**63 or more in magnitude (None: it is not)."""
    if isinstance(v, float) and not math.isfinite(v):
        return f"the non-finite number {v}"
    if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) >= 2 ** 63:
        return f"the number {v}, 2**63 or more in magnitude"
    return None


_TTA = ["--data", "{w}/data", "--device", "cpu", "--protocol", "cpu", "--epochs", "1", "--limit-train", "12",
        "--limit-val", "5", "--val-fraction", "0.25", "--methods", "lmdeq", "--variants", "", "--no-progress",
        "--out", ".", *[a for s in TINY[1::2] for a in ("--model-set", s)]]
# parser (and, for lmdeq bench, the flag's suite) -> (entry, a valid command line that reaches the work, fixtures)
COMMANDS = {
    "lmdeq train": ("lmdeq", ["train", "--data", "{w}/data", "--cache-dir", "{w}/cache", "--out", "run", *QUICK_TRAIN,
                              *TINY], ("data",)),
    "lmdeq eval": ("lmdeq", ["eval", "--checkpoint", "{w}/run/best.pt", "--cache-dir", "{w}/cache", "--device", "cpu",
                             "--no-progress"], ("run",)),
    "lmdeq bench": ("lmdeq", ["bench", "--quick", "--device", "cpu", "--out", "."], ()),
    "lmdeq bench solvers": ("lmdeq", ["bench", "solvers", "--quick", "--device", "cpu", "--out", "."], ()),
    "lmdeq bench tta": ("lmdeq", ["bench", "tta", *_TTA], ("data",)),
    "benchmarks/kernels.py": ("kernels", ["--device", "cpu", "--quick", "--out", "."], ()),
    "lmdeq bench tta (script)": ("tta", _TTA, ("data",)),
}


def _command(name: str, parser, action) -> str:
    """The :data:`COMMANDS` key of a flag: lmdeq bench's flags go to the suite whose group holds them."""
    if name != "lmdeq bench":
        return name
    title = next((g.title or "" for g in parser._action_groups if action in g._group_actions), "")
    return "lmdeq bench tta" if title.startswith("tta") else "lmdeq bench solvers" if title == "solvers" else name


def _without(base: list, parser, action) -> list:
    """``base`` less the occurrences of ``action``'s flag (unless it is repeatable) and of the flags it excludes."""
    drop = set() if isinstance(action, argparse._AppendAction) else set(action.option_strings)
    for group in parser._mutually_exclusive_groups:
        if action in group._group_actions:
            drop |= {s for a in group._group_actions if a is not action for s in a.option_strings}
    out, i = [], 0
    while i < len(base):
        a = parser._option_string_actions.get(base[i])
        n = 1 if a is None or a.nargs == 0 else 2
        if base[i] not in drop:
            out += base[i:i + n]
        i += n
    return out


def _flag_judge(flag: str, dest: str, metavar):
    names = (flag.lstrip("-"), flag, dest, metavar.lower() if isinstance(metavar, str) else "")

    def judge(w, rc, out, err):
        last = error_line(err)
        if rc == 0:
            accepted = next((ln[len(ACCEPTED):].strip() for ln in out.splitlines() if ln.startswith(ACCEPTED)), "")
            if not any(ln.startswith(REACHED) for ln in out.splitlines()):
                return "other", f"exit 0 before the work started (accepted {accepted})"
            why = next((ln for ln in out.splitlines() if ln.startswith(NONSENSE)), None)
            if why is not None:
                return "silent", f"{why[len(NONSENSE):].strip()}, without a word (accepted {accepted})"
            return "handled", f"accepted {accepted}; reached the work"
        if rc == 2 and ": error:" in last and _names_one_of(last, names):
            return "clear", last
        return "other", f"exit {rc}: {last}"
    return judge


def _flag_call(entry: str, flag: str, dest: str, argv: list, name: str):
    def call(w: Path) -> int:
        os.chdir(_here(w, name))
        line = _format(argv, w)
        if entry == "lmdeq":
            from lmdeq.app.cli import build_parser

            parser = build_parser()
        else:
            parser = parsers()["benchmarks/kernels.py" if entry == "kernels" else "lmdeq bench tta (script)"]
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            try:
                ns = parser.parse_args(line)
            except SystemExit:
                ns = None
        if ns is not None and hasattr(ns, dest):
            got = getattr(ns, dest)
            print(f"{ACCEPTED} {flag}={got!r}")
            why = nonsense(flag, got)
            if why is not None:
                print(f"{NONSENSE} the parser accepted {why}")
        return run_to_work(entry, line)
    return call


def cli_cases() -> list[Case]:
    """Every value flag of every parser x :data:`HOSTILE_VALUES` (see the module docstring)."""
    table = []
    for pname, parser in parsers().items():
        for action in value_flags(parser):
            flag = action.option_strings[0]
            cmd = _command(pname, parser, action)
            entry, base, needs = COMMANDS[cmd]
            for label, value in HOSTILE_VALUES:
                name = f"{pname} {flag} {label}"
                argv = _without(base, parser, action) + [f"{flag}={value}"]
                table.append(Case(name, CLI, [], needs=needs, timeout=TIMEOUT,
                                  judge=_flag_judge(flag, action.dest, action.metavar),
                                  call=_flag_call(entry, flag, action.dest, argv, _slug(name))))
    return table


# -- environment variables -----------------------------------------------------------------------------------
ENV_VALUES = (("empty", ""), ("garbage", "garbage"), ("unicode", "ünïcødé"), ("negative", "-1"),
              ("huge", str(2 ** 70)))
_SIZE = re.compile(r"\d+(\.\d+)?\s*[kKmMgGtT]?(i?[bB])?")
# kind of value -> (its documented meaning, whether a value has it)
ENV_MEANINGS = {
    "switch": ("0 or 1 (an empty value is an error)", lambda v: v.strip() in ("0", "1")),
    "backend": ("auto or a backend name (empty: auto)",
                lambda v: v.strip().lower() in ("", "auto", "cuda", "triton", "cpu", "torch")),
    "size": ("a size such as 64M (empty: the default)", lambda v: not v.strip() or bool(_SIZE.fullmatch(v.strip()))),
    "path": ("a directory (relative to the working directory; empty: the default)", lambda v: True),
    "hook": ("a fault point's name (a name that is no point is never reached)", lambda v: True),
    "torchrun": ("set by torchrun with the other two (alone: not torchrun's environment)", lambda v: False),
    "torchrun-only": ("read under torchrun only", lambda v: True),
    "glibc": ("glibc's threshold in bytes (empty: unset)", lambda v: not v.strip() or v.strip().isdigit()),
}
# variable -> (the command that reads it, kind of value)
ENV_VARIABLES = {
    "LMDEQ_TUNE_ALLOCATOR": ("info", "switch"), "LMDEQ_CUDA_GRAPHS": ("info", "switch"),
    "LMDEQ_BACKEND": ("model", "backend"), "LMDEQ_CACHE": ("train-default-cache", "path"),
    "LMDEQ_MAX_ARCHIVE_MEMBER": ("train-archive", "size"), "LMDEQ_MAX_ARCHIVE_TOTAL": ("train-archive", "size"),
    "LMDEQ_WEIGHTS": ("pretrained", "path"), "LMDEQ_RUNS": ("bench-default-out", "path"),
    "LMDEQ_FAULT_AT": ("train-fresh-cache", "hook"),
    "LMDEQ_HANG_AT": ("train-fresh-cache", "hook"), "RANK": ("train", "torchrun"), "WORLD_SIZE": ("train", "torchrun"),
    "LOCAL_RANK": ("train", "torchrun"), "TORCHELASTIC_RESTART_COUNT": ("train", "torchrun-only"),
    "TORCHELASTIC_RUN_ID": ("train", "torchrun-only"), "MALLOC_MMAP_THRESHOLD_": ("info", "glibc"),
    "MALLOC_TRIM_THRESHOLD_": ("info", "glibc"),
}
_TRAIN = ["train", "--data", "{w}/data", "--out", "run", *QUICK_TRAIN, *TINY]


def _env_call(reader: str, name: str):
    def call(w: Path):
        os.chdir(_here(w, name))
        if reader == "info":
            return _entry("lmdeq")(["info"])
        if reader == "model":   # a forward pass of a tiny MDEQ: its ops pick their backend
            import torch

            from lmdeq.models import mdeq

            mdeq("cifar10-small", channels=[8, 8], head_channels=[4, 8], final_channels=32, num_groups=4)(
                torch.rand(2, 3, 32, 32))
            return 0
        if reader == "pretrained":
            from lmdeq.models import pretrained

            pretrained()
            return 0
        argv = {"bench-default-out": ["bench", "solvers", "--quick", "--device", "cpu"],
                "train": _TRAIN + ["--cache-dir", "{w}/cache"], "train-default-cache": _TRAIN,
                "train-fresh-cache": _TRAIN + ["--cache-dir", "cache"],
                "train-archive": [a.replace("{w}/data", "{w}/good.tar.gz") for a in _TRAIN] + ["--cache-dir", "cache"]}
        return run_to_work("lmdeq", _format(argv[reader], w))
    return call


def _env_judge(var: str, value: str, kind: str):
    meaning, has_meaning = ENV_MEANINGS[kind]

    def judge(w, rc, out, err):
        last = error_line(err)
        if rc == 2 and ": error:" in last and var in last:
            return "clear", last
        if rc == 0:
            if has_meaning(value):
                return "handled", f"{var}={value!r}: {meaning}"
            return "silent", f"{var}={value!r} accepted without a word ({meaning})"
        return "other", f"exit {rc}: {last}"
    return judge


def env_cases() -> list[Case]:
    """Every variable of :data:`ENV_VARIABLES` x :data:`ENV_VALUES`, one at a time (see the module docstring)."""
    table = []
    for var, (reader, kind) in ENV_VARIABLES.items():
        needs = ("archives", "data") if reader == "train-archive" else ("data",) if reader.startswith("train") else ()
        for label, value in ENV_VALUES:
            name = f"{var} {label}"
            table.append(Case(name, ENV, [], needs=needs, timeout=TIMEOUT, env={var: value, "HOME": "{w}/fuzz-home"},
                              judge=_env_judge(var, value, kind), call=_env_call(reader, _slug("env " + name))))
    return table


# -- checkpoint fields ---------------------------------------------------------------------------------------
def wrong_values() -> list:
    """(label, value): what a damaged checkpoint field may hold instead of its own value."""
    import torch

    return [("text", "text"), ("int", 7), ("None", None), ("list", [1, 2]), ("dict", {"a": 1}),
            ("tensor", torch.ones(2))]


def checkpoint_damages(ckpt: dict):
    """(field, how, damaged checkpoint) for every field of ``ckpt`` in sorted order: removed, then given each of
    :func:`wrong_values` whose type differs from the field's."""
    for name in sorted(ckpt):
        yield name, "removed", {k: v for k, v in ckpt.items() if k != name}
        for label, value in wrong_values():
            if type(value) is not type(ckpt[name]):
                yield name, f"a {label}", {**ckpt, name: value}


def _ckpt_argv(kind: str, path: str, out: str) -> list:
    if kind == "best":
        return ["eval", "--checkpoint", path, "--cache-dir", "{w}/cache", "--device", "cpu", "--no-progress", "--json"]
    return ["train", "--resume", path, "--out", out, "--epochs", "2", "--cache-dir", "{w}/cache", "--device", "cpu",
            "--no-progress"]


def _eval_numbers(out: str) -> dict | None:
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        return None
    return {k: v for k, v in json.loads(lines[-1]).items() if k not in ("checkpoint", "time_s")}


def _ckpt_judge(kind: str, field: str, i: int):
    def judge(w, rc, out, err):
        last = error_line(err)
        if rc == 2 and ": error:" in last and (_names_one_of(last, (field,)) or f"{kind}-{i}.pt" in last):
            return "clear", last
        if rc != 0:
            return "other", f"exit {rc}: {last}"
        if kind == "best":
            want = json.loads((w / "ckpt-fuzz" / "reference-eval.json").read_text())
            got = _eval_numbers(out)
            differ = sorted(k for k in set(want) | set(got or {}) if (got or {}).get(k) != want.get(k))
            return ("silent", f"evaluated to other results than the intact file: {differ}") if differ else \
                ("handled", "evaluated to the intact file's results")
        from lmdeq.app.train.rundir import compare_runs

        problems = compare_runs(w / "ckpt-fuzz" / "out-reference", w / "ckpt-fuzz" / f"out-{i}")
        return ("silent", "resumed to another run than the intact file: " + "; ".join(problems)) if problems else \
            ("handled", "resumed to the intact file's run, bit for bit")
    return judge


def checkpoint_cases(w: Path, ensure) -> list[Case]:
    """Every field of the tiny run's best.pt (through lmdeq eval) and last.pt (through lmdeq train --resume),
    damaged by :func:`checkpoint_damages` (the run is built in ``w`` by ``ensure('run')`` to read its fields)."""
    import torch

    ensure("run")
    table = []
    for kind, command in (("best", "eval"), ("last", "train --resume")):
        ckpt = torch.load(w / "run" / f"{kind}.pt", weights_only=True)
        for i, (name, how, _) in enumerate(checkpoint_damages(ckpt)):
            argv = _ckpt_argv(kind, f"{{w}}/ckpt-fuzz/{kind}-{i}.pt", f"{{w}}/ckpt-fuzz/out-{i}")
            table.append(Case(f"{command} {kind}.pt: {name} {how}", CKPT, argv, needs=("ckpt-fuzz",),
                              timeout=TIMEOUT, judge=_ckpt_judge(kind, name, i)))
    return table


def _build_checkpoints(w: Path, run) -> None:
    import torch

    d = w / "ckpt-fuzz"
    d.mkdir(exist_ok=True)
    for kind in ("best", "last"):
        ckpt = torch.load(w / "run" / f"{kind}.pt", weights_only=True)
        for i, (_, _, damaged) in enumerate(checkpoint_damages(ckpt)):
            torch.save(damaged, d / f"{kind}-{i}.pt")
    shutil.copy(w / "run" / "last.pt", d / "intact-last.pt")
    for kind, path, out in (("best", str(w / "run" / "best.pt"), ""),
                            ("last", str(d / "intact-last.pt"), str(d / "out-reference"))):
        rc, stdout, err = run(_format(_ckpt_argv(kind, path, out), w))
        assert rc == 0, f"the intact {kind}.pt failed: {err[-2000:]}"
        if kind == "best":
            (d / "reference-eval.json").write_text(json.dumps(_eval_numbers(stdout)))


# -- data files ----------------------------------------------------------------------------------------------
def _pixels(seed: int, size=(32, 32)) -> np.ndarray:
    """(H, W, 3) uint8: the pixels of the image written with ``seed`` (fault_cases' image folders use the same)."""
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _huge_header_png() -> bytes:
    """A PNG whose header claims 50000 x 50000 pixels (its data is a 32 x 32 image's)."""
    raw = bytearray(_png_bytes(Image.fromarray(_pixels(5))))
    ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(raw)


def _image(root: Path, rel: str, image: Image.Image, fmt: str | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def _unix_socket(path: Path) -> None:
    """A unix socket at ``path`` (bound from its directory: socket paths are limited to ~100 bytes)."""
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path.name)
    finally:
        os.chdir(here)


def _kind_files(kind: str, root: Path, w: Path):
    """Create data-file ``kind`` in ``root`` (an ImageFolder of CLASSES10); returns (the odd entry's path relative to
    root, the pixels it holds, or None: it holds no image the run may take)."""
    k0 = root / "k0"
    rgb = _pixels(7)
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    if kind == "FIFO":
        os.mkfifo(k0 / "zz-fifo.png")
        return "k0/zz-fifo.png", None
    if kind == "unix socket":
        _unix_socket(k0 / "zz-socket.png")
        return "k0/zz-socket.png", None
    if kind == "symlink to a file inside the root":
        _image(root, ".store/img.png", Image.fromarray(rgb))
        os.symlink("../.store/img.png", k0 / "zz-inside.png")
        return "k0/zz-inside.png", rgb
    if kind == "symlink to another class's image":
        os.symlink("../k1/0.png", k0 / "zz-dup.png")
        return "k0/zz-dup.png", None
    if kind == "symlink out of the root":
        _image(w, "fuzz-outside.png", Image.fromarray(rgb))
        os.symlink(w / "fuzz-outside.png", k0 / "zz-outside.png")
        return "k0/zz-outside.png", None
    if kind == "symlink loop":
        os.symlink("zz-loop-b.png", k0 / "zz-loop-a.png")
        os.symlink("zz-loop-a.png", k0 / "zz-loop-b.png")
        return "k0/zz-loop-a.png", None
    if kind == "dangling symlink":
        os.symlink("missing.png", k0 / "zz-dangling.png")
        return "k0/zz-dangling.png", None
    if kind == "hard link":
        os.link(root / "k1" / "0.png", k0 / "zz-hard.png")
        return "k0/zz-hard.png", _pixels(100)
    if kind == "directory symlink to another class":
        os.symlink("../k1", k0 / "zz-dirlink")
        return "k0/zz-dirlink", None
    if kind == "directory symlink loop":
        os.symlink("..", k0 / "zz-up")
        return "k0/zz-up", None
    if kind == "directory symlink inside the root":
        _image(root, ".more/img.png", Image.fromarray(rgb))
        os.symlink("../.more", k0 / "zz-more")
        return "k0/zz-more/img.png", rgb
    if kind == "no read permission":
        _image(root, "k0/zz-locked.png", Image.fromarray(rgb)).chmod(0)
        return "k0/zz-locked.png", None
    if kind == "empty file":
        (k0 / "zz-empty.png").write_bytes(b"")
        return "k0/zz-empty.png", None
    if kind == "truncated JPEG":
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG")
        (k0 / "zz-truncated.jpg").write_bytes(buf.getvalue()[:300])
        return "k0/zz-truncated.jpg", None
    if kind == "truncated PNG":
        raw = _png_bytes(Image.fromarray(rgb))
        (k0 / "zz-truncated.png").write_bytes(raw[: len(raw) // 2])
        return "k0/zz-truncated.png", None
    if kind == "1x1 image":
        _image(root, "k0/zz-1x1.png", Image.fromarray(rgb[:1, :1]))
        return "k0/zz-1x1.png", None
    if kind == "huge-dimension header":
        (k0 / "zz-huge.png").write_bytes(_huge_header_png())
        return "k0/zz-huge.png", None
    if kind == "16-bit grayscale PNG":
        _image(root, "k0/zz-g16.png", Image.fromarray(ramp))
        return "k0/zz-g16.png", np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, axis=2)
    if kind == "32-bit integer TIFF":
        _image(root, "k0/zz-i32.tif", Image.fromarray(ramp.astype(np.int32), mode="I"))
        return "k0/zz-i32.tif", np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, axis=2)
    if kind == "float TIFF":
        _image(root, "k0/zz-float.tif", Image.fromarray(ramp.astype(np.float32), mode="F"))
        return "k0/zz-float.tif", None
    if kind == "palette PNG":
        colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 99, 199]], dtype=np.uint8)
        index = np.random.default_rng(8).integers(0, 4, (32, 32), dtype=np.uint8)
        image = Image.fromarray(index, mode="P")
        image.putpalette(colours.flatten().tolist())
        _image(root, "k0/zz-palette.png", image)
        return "k0/zz-palette.png", colours[index]
    if kind == "LA PNG":
        gray, alpha = rgb[..., 0], rgb[..., 1]
        _image(root, "k0/zz-la.png", Image.fromarray(np.stack([gray, alpha], axis=2), mode="LA"))
        return "k0/zz-la.png", np.repeat(gray[..., None], 3, axis=2)
    if kind == "RGBA PNG":
        _image(root, "k0/zz-rgba.png", Image.fromarray(np.concatenate([rgb, rgb[..., :1]], axis=2), mode="RGBA"))
        return "k0/zz-rgba.png", rgb
    if kind == "CMYK TIFF":
        cmy = rgb
        _image(root, "k0/zz-cmyk.tif", Image.fromarray(np.concatenate([cmy, np.zeros_like(cmy[..., :1])], axis=2),
                                                        mode="CMYK"))
        return "k0/zz-cmyk.tif", 255 - cmy   # black 0: each colour is 255 minus its ink
    if kind == "grayscale PNG":
        _image(root, "k0/zz-gray.png", Image.fromarray(rgb[..., 2]))
        return "k0/zz-gray.png", np.repeat(rgb[..., 2:3], 3, axis=2)
    if kind == "bilevel PNG":
        bits = rgb[..., 0] > 127
        _image(root, "k0/zz-bits.png", Image.fromarray(bits))
        return "k0/zz-bits.png", np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    if kind == "non-image bytes named .jpg":
        (k0 / "zz-junk.jpg").write_bytes(np.random.default_rng(9).bytes(2048))
        return "k0/zz-junk.jpg", None
    if kind == "PNG bytes named .jpg":
        (k0 / "zz-png.jpg").write_bytes(_png_bytes(Image.fromarray(rgb)))
        return "k0/zz-png.jpg", rgb
    if kind == "upper-case extension":
        _image(root, "k0/zz-upper.PNG", Image.fromarray(rgb), "PNG")
        return "k0/zz-upper.PNG", rgb
    if kind == "directory named like an image":
        _image(root, "k0/zz-dir.png/img.png", Image.fromarray(rgb))
        return "k0/zz-dir.png/img.png", rgb
    if kind == "unicode and newline in the name":
        _image(root, "k0/zz-ünï\ncode.png", Image.fromarray(rgb))
        return "k0/zz-ünï\ncode.png", rgb
    raise ValueError(f"unknown data-file kind {kind!r}")


DATA_FILES = ("FIFO", "unix socket", "symlink to a file inside the root", "symlink to another class's image",
              "symlink out of the root", "symlink loop", "dangling symlink", "hard link",
              "directory symlink to another class", "directory symlink loop", "directory symlink inside the root",
              "no read permission", "empty file", "truncated JPEG", "truncated PNG", "1x1 image",
              "huge-dimension header", "16-bit grayscale PNG", "32-bit integer TIFF", "float TIFF", "palette PNG",
              "LA PNG", "RGBA PNG", "CMYK TIFF", "grayscale PNG", "bilevel PNG", "non-image bytes named .jpg",
              "PNG bytes named .jpg", "upper-case extension", "directory named like an image",
              "unicode and newline in the name")


def data_files() -> tuple:
    """:data:`DATA_FILES`, less the unreadable file when this process runs as root (root reads any file)."""
    return tuple(k for k in DATA_FILES if k != "no read permission" or os.geteuid() != 0)


def _data_root(w: Path, kind: str) -> Path:
    return w / "fuzz-data" / _slug(kind) / "train"


def _check_taken(root: Path, odd: str, expected) -> list[str]:
    """What the run took of the folder, decoded again (scan, then decode) and compared: PROBLEM lines (a plain
    image lost, relabelled or changed; the odd entry decoded wrongly or when it holds no image) and one line
    saying what became of the odd entry."""
    from lmdeq.app.data import folder
    from lmdeq.app.data.scan import scan_image_folder

    logging.disable(logging.CRITICAL)   # the run has reported already
    classes, samples = scan_image_folder(root)
    images, labels, skipped = folder._decode(root, samples, 0, False, False)
    left_out = {p for p, _ in skipped}
    taken = [(os.path.relpath(p, root), label) for p, label in samples if os.path.relpath(p, root) not in left_out]
    decoded = {rel: (images[i].permute(1, 2, 0).numpy(), int(labels[i]), label) for i, (rel, label) in enumerate(taken)}
    lines = []
    for c, name in enumerate(CLASSES10):
        for i in range(2):
            rel = f"{name}/{i}.png"
            got = decoded.get(rel)
            if got is None or got[1] != classes.index(name) or not np.array_equal(got[0], _pixels(100 * c + i)):
                lines.append(f"{PROBLEM} the plain image {rel} was " + ("left out" if got is None else
                             f"given class {classes[got[1]]}" if got[1] != classes.index(name) else "decoded wrongly"))
    if odd in decoded:
        if expected is None:
            lines.append(f"{PROBLEM} {odd!r} was decoded, but it holds no image the run may take")
        elif not np.array_equal(decoded[odd][0], expected):
            lines.append(f"{PROBLEM} {odd!r} decoded to other pixels than it holds")
        else:
            lines.append(f"{DECODED} {odd!r} to the pixels it holds, class {classes[decoded[odd][1]]}")
    else:
        lines.append(f"{NOT_TAKEN} {odd!r}")
    return lines


def _data_call(kind: str):
    def call(w: Path) -> int:
        root = _data_root(w, kind)
        odd, expected = json.loads((root.parent / "expected.json").read_text())["odd"], None
        stored = root.parent / "expected.npy"
        if stored.exists():
            expected = np.load(stored)
        os.chdir(_here(w, _slug("data " + kind)))
        rc = run_to_work("lmdeq", _format(["train", "--data", str(root.parent), "--cache-dir", "cache", "--out", "run",
                                           *QUICK_TRAIN, *TINY], w))
        if rc == 0:
            print("\n".join(_check_taken(root, odd, expected)))
        return rc
    return call


def _data_judge(kind: str):
    def judge(w, rc, out, err):
        last = error_line(err)
        odd = json.loads((_data_root(w, kind).parent / "expected.json").read_text())["odd"]
        entry = odd.split("/")[1]   # the name in the class directory
        if rc == 2:
            return ("clear", last) if ": error:" in last and entry in last else ("other", f"exit 2: {last}")
        if rc != 0:
            return "other", f"exit {rc}: {last}"
        problems = [ln[len(PROBLEM):].strip() for ln in out.splitlines() if ln.startswith(PROBLEM)]
        if problems:
            return "silent", "; ".join(problems)
        if any(ln.startswith(NOT_TAKEN) for ln in out.splitlines()):
            warned = [ln for ln in err.splitlines() if ": warning:" in ln and entry in ln]
            return ("clear", warned[0]) if warned else ("silent", f"{odd!r} left out without a word")
        done = next((ln for ln in out.splitlines() if ln.startswith(DECODED)), None)
        return ("handled", "decoded " + done[len(DECODED):].strip()) if done else ("other", "nothing checked")
    return judge


def data_file_cases() -> list[Case]:
    """Every kind of :func:`data_files` in a tiny ImageFolder, through lmdeq train (see the module docstring)."""
    return [Case(f"train on a folder with: {kind}", DATA, [], needs=("fuzz-data",), timeout=TIMEOUT,
                 judge=_data_judge(kind), call=_data_call(kind)) for kind in data_files()]


def _build_data_files(w: Path) -> None:
    from fault_cases import image_folder

    for kind in data_files():
        root = image_folder(_data_root(w, kind))
        odd, expected = _kind_files(kind, root, w)
        (root.parent / "expected.json").write_text(json.dumps({"odd": odd}))
        if expected is not None:
            np.save(root.parent / "expected.npy", expected)


# -- autograd transforms -------------------------------------------------------------------------------------
BACKWARDS = ("Implicit", "JFB", "Phantom")
ENTRIES = ("deq_solve", "DEQ")
TOLERANCE = 1e-7      # relative, float64: the solves stop at a residual of 1e-14
UNROLLED = 300        # steps of the reference (the contraction has ||W|| = 0.6: 0.6**300 ~ 1e-67)
PHANTOM = dict(steps=3, tau=0.5)


def _problem():
    """(W, x, V) in float64: f(z) = tanh(z W^T + x) with ||W||_2 = 0.6, and a direction V for W."""
    import torch

    g = torch.Generator().manual_seed(7)
    W = torch.randn(6, 6, generator=g, dtype=torch.float64)
    W = 0.6 * W / torch.linalg.matrix_norm(W, 2)
    return W, torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)


def _f(z, W, x):
    import torch

    return torch.tanh(z @ W.T + x)


def lmdeq_solve(entry: str, backward: str):
    """z*(W, x) by lmdeq: ``deq_solve`` or a ``DEQ`` layer, with the backward named."""
    import torch

    from lmdeq import DEQ, JFB, FixedPoint, Implicit, Phantom, deq_solve

    solver = FixedPoint(max_iter=400, tol=1e-14)
    method = {"Implicit": lambda: Implicit(solver=solver), "JFB": JFB,
              "Phantom": lambda: Phantom(**PHANTOM)}[backward]()

    def solve(W, x):
        if entry == "DEQ":
            return DEQ(_f, solver=solver, backward=method)(torch.zeros_like(x), W, x)[0]
        return deq_solve(lambda z: _f(z, W, x), torch.zeros_like(x), solver=solver, backward=method)[0]
    return solve


def reference(backward: str):
    """z*(W, x) unrolled in plain torch, with the gradient ``backward`` defines: the whole unrolled solve
    (Implicit: its derivative converges to the implicit one), or f at the detached fixed point (JFB), or
    Phantom's damped steps from it; any transform applies to it."""
    import torch

    def solve(W, x):
        z = torch.zeros_like(x)
        if backward == "Implicit":
            for _ in range(UNROLLED):
                z = _f(z, W, x)
            return z
        for _ in range(UNROLLED):
            z = _f(z, W.detach(), x.detach()).detach()
        if backward == "JFB":
            return _f(z, W, x)
        for _ in range(PHANTOM["steps"]):
            z = (1 - PHANTOM["tau"]) * z + PHANTOM["tau"] * _f(z, W, x)
        return z
    return solve


def _leaves(W, x):
    return W.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()


def _loss(z):
    return (z ** 2).sum()


def _backward(s, W, x, V, twice=False):
    W, x = _leaves(W, x)
    loss = _loss(s(W, x))
    loss.backward(retain_graph=twice)
    if twice:
        loss.backward()
    return W.grad, x.grad


def _grad(s, W, x, V):
    import torch

    W, x = _leaves(W, x)
    return torch.autograd.grad(_loss(s(W, x)), (W, x))


def _second(s, W, x, V, wrt_input=False):
    import torch

    W, x = _leaves(W, x)
    (g,) = torch.autograd.grad(_loss(s(W, x)), x if wrt_input else W, create_graph=True)
    return torch.autograd.grad(g.norm() if wrt_input else (g ** 2).sum(), W)


def _checkpointed(s, W, x, V, reentrant):
    from torch.utils.checkpoint import checkpoint

    W, x = _leaves(W, x)
    _loss(checkpoint(s, W, x, use_reentrant=reentrant)).backward()
    return W.grad, x.grad


def _functional_call(s, W, x, V):
    import torch

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W = torch.nn.Parameter(torch.zeros(6, 6, dtype=torch.float64))

        def forward(self, inputs):
            return s(self.W, inputs)

    params = {"W": W.detach().clone().requires_grad_()}
    return torch.autograd.grad(_loss(torch.func.functional_call(Layer(), params, (x,))), params["W"])


def _forward_ad(s, W, x, V):
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        return (fwAD.unpack_dual(s(fwAD.make_dual(W, V), x)).tangent,)


def _under(mode):
    def transform(s, W, x, V):
        W, x = _leaves(W, x)
        with mode():
            z = s(W, x)
        return (z.detach(),) if not z.requires_grad else (z, "a result that requires grad")
    return transform


def _meta(s, W, x, V):
    return (s(W.to("meta"), x.to("meta")), "a result on the meta device (no solve can run there)")


def _gradcheck(second: bool):
    def transform(s, W, x, V):
        import torch
        from torch.autograd.gradcheck import GradcheckError

        check = torch.autograd.gradgradcheck if second else torch.autograd.gradcheck
        try:
            check(s, _leaves(W, x))
        except GradcheckError as err:
            return (None, f"gradcheck failed: {str(err).splitlines()[0]}")
        return ()
    return transform


def _torch():
    import torch

    return torch


# name -> transform(solve, W, x, V): a tuple of tensors, compared with the same transform of the reference (a str
# item: a wrong outcome; an empty tuple: a check against finite differences that passed)
TRANSFORMS = {
    ".backward()": _backward,
    ".backward() twice (retain_graph)": lambda s, W, x, V: _backward(s, W, x, V, twice=True),
    "torch.autograd.grad": _grad,
    "double backward (create_graph)": _second,
    "gradient penalty on the input (create_graph)": lambda s, W, x, V: _second(s, W, x, V, wrt_input=True),
    "torch.func.grad": lambda s, W, x, V: (_torch().func.grad(lambda w: _loss(s(w, x)))(W),),
    "torch.func.vjp": lambda s, W, x, V: _torch().func.vjp(lambda w: s(w, x), W)[1](_torch().ones(3, 6, dtype=W.dtype)),
    "torch.func.jvp": lambda s, W, x, V: (_torch().func.jvp(lambda w: s(w, x), (W,), (V,))[1],),
    "torch.func.jacrev": lambda s, W, x, V: (_torch().func.jacrev(lambda w: s(w, x))(W),),
    "torch.func.jacfwd": lambda s, W, x, V: (_torch().func.jacfwd(lambda w: s(w, x))(W),),
    "torch.func.hessian": lambda s, W, x, V: (_torch().func.hessian(lambda w: _loss(s(w, x)))(W),),
    "torch.func.vmap": lambda s, W, x, V: (_torch().func.vmap(lambda xi: s(W, xi[None])[0])(x),),
    "torch.func.linearize": lambda s, W, x, V: (_torch().func.linearize(lambda w: s(w, x), W)[1](V),),
    "torch.func.functional_call": _functional_call,
    "forward-mode AD (dual numbers)": _forward_ad,
    "torch.autograd.functional.jacobian": lambda s, W, x, V: (
        _torch().autograd.functional.jacobian(lambda w: s(w, x), W),),
    "torch.autograd.functional.jacobian(vectorize=True)": lambda s, W, x, V: (
        _torch().autograd.functional.jacobian(lambda w: s(w, x), W, vectorize=True),),
    "torch.autograd.functional.jvp": lambda s, W, x, V: (
        _torch().autograd.functional.jvp(lambda w: s(w, x), W, V)[1],),
    "torch.autograd.functional.hvp": lambda s, W, x, V: (
        _torch().autograd.functional.hvp(lambda w: _loss(s(w, x)), W, V)[1],),
    "torch.utils.checkpoint": lambda s, W, x, V: _checkpointed(s, W, x, V, reentrant=False),
    "torch.utils.checkpoint (reentrant)": lambda s, W, x, V: _checkpointed(s, W, x, V, reentrant=True),
    "torch.no_grad": _under(lambda: _torch().no_grad()),
    "torch.inference_mode": _under(lambda: _torch().inference_mode()),
    "meta device": _meta,
    "torch.autograd.gradcheck (float64)": _gradcheck(second=False),
    "torch.autograd.gradgradcheck (float64)": _gradcheck(second=True),
}
# The checks against finite differences apply to the exact gradient only: JFB's and Phantom's are approximations.
EXACT_ONLY = ("torch.autograd.gradcheck (float64)", "torch.autograd.gradgradcheck (float64)")


def _relative_error(got, want) -> float:
    if got is None or want is None:
        return math.inf if (got is None) != (want is None) else 0.0
    return float((got - want).norm() / max(float(want.norm()), 1e-300))


def _autograd_call(entry: str, backward: str, transform: str):
    def call(w: Path) -> int:
        W, x, V = _problem()
        got = TRANSFORMS[transform](lmdeq_solve(entry, backward), W, x, V)
        wrong = [g for g in got if isinstance(g, str)]
        if wrong:
            print(f"{PROBLEM} {wrong[0]}")
            return 0
        if not got:   # a check against finite differences that passed
            print(f"fuzz: {transform} passed")
            return 0
        want = TRANSFORMS[transform](reference(backward), W, x, V)
        error = max(_relative_error(g, r) for g, r in zip(got, want))
        if error > TOLERANCE or len(got) != len(want):
            print(f"{PROBLEM} relative error {error:.1e} against the unrolled float64 reference")
        else:
            print(f"fuzz: equal to the unrolled float64 reference (relative error {error:.1e})")
        return 0
    return call


def _autograd_judge(w, rc, out, err):
    last = error_line(err)
    if rc == 2 and ": error:" in last:
        return "clear", last
    if rc != 0:
        return "other", f"exit {rc}: {last}"
    problem = next((ln for ln in out.splitlines() if ln.startswith(PROBLEM)), None)
    if problem is not None:
        return "silent", problem[len(PROBLEM):].strip()
    return "handled", next((ln for ln in out.splitlines() if ln.startswith("fuzz: ")), "")[len("fuzz: "):]


def autograd_cases() -> list[Case]:
    """Every transform of :data:`TRANSFORMS` x entry (deq_solve, DEQ) x backward (see the module docstring)."""
    return [Case(f"{transform} through {entry} ({backward})", AUTOGRAD, [], timeout=TIMEOUT, judge=_autograd_judge,
                 call=_autograd_call(entry, backward, transform))
            for transform in TRANSFORMS for entry in ENTRIES for backward in BACKWARDS
            if transform not in EXACT_ONLY or backward == "Implicit"]


# -- the cases and their fixtures ----------------------------------------------------------------------------
def cases(w: Path, ensure) -> list[Case]:
    """Every generated case; ``ensure(need)`` builds a fixture in the work directory ``w`` (the checkpoint cases
    read the fields of a tiny run's files)."""
    return cli_cases() + env_cases() + checkpoint_cases(w, ensure) + data_file_cases() + autograd_cases()


def build(w: Path, need: str, run, ensure) -> bool:
    """Build the generated cases' fixture ``need`` in ``w`` (``run(argv)``: (exit status, stdout, stderr) of an
    lmdeq command line; ``ensure``: builds another fixture first); False for a fixture that is not theirs."""
    if need == "ckpt-fuzz":
        ensure("run")
        _build_checkpoints(w, run)
    elif need == "fuzz-data":
        _build_data_files(w)
    else:
        return False
    return True
