"""``lmdeq train --config FILE``: train flags written in a file, and the resolved config a run directory keeps.

A config file is a mapping of train flags (:mod:`lmdeq.app.train.arguments`) by name, with dashes or underscores
(``batch-size`` or ``batch_size``), read by its suffix: ``.yaml`` / ``.yml`` (PyYAML), ``.toml`` (tomllib; tomli
before Python 3.11) or ``.json``. A value means what the flag's text means on the command line: a number or a
string goes through the flag's own check (``lr: "1e-3"``, a string in YAML 1.1, is the number 0.001); a flag
without a value (``strict``, ``original``, ``no-augment``, ...) takes true (the flag given) or false (its
opposite: ``original: false`` is the Lipschitz MDEQ, ``no-augment: false`` augments); ``log`` a list or a
comma-separated string; ``set`` a mapping of model settings to their values (typed as the file types them; the
command line's ``--set`` replaces the same key); null (YAML, JSON) or leaving a key out: not given. ``config``
cannot be set inside a file. Relative paths are relative to the current directory, as on the command line. A key
no flag has, a value of the wrong type or one its flag refuses is a ConfigError naming the key and the file.

The resolved config (:func:`resolved_config`, written by ``lmdeq train`` as ``<run>/config.json`` after the first
commit of each invocation) holds the value of every train flag but ``--config``, ``--resume`` and
``--allow-data-change`` (how one invocation started, not what the run is): the training config after the
command line, the file, the checkpoint (when resuming) and the defaults, and the runtime flags. ``lmdeq train
--config <run>/config.json --out NEW`` trains the same run again in NEW.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ...errors import ConfigError
from ..atomic import atomic_write_bytes
from .config import TrainConfig

CONFIG_JSON = "config.json"
SUFFIXES = (".yaml", ".yml", ".toml", ".json")
# Flags a config file cannot set, and those a resolved config leaves out.
NOT_IN_FILE = ("config",)
NOT_RESOLVED = ("config", "resume", "allow_data_change", "dataset")


def _read(path: Path) -> dict:
    """The mapping of a config file (ConfigError naming the file when it is unreadable or not a mapping)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"config: {path} is not a .yaml, .yml, .toml or .json file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"config: cannot read {path} ({err.strerror or err})") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"config: reading {path} needs the PyYAML package, which is not installed; pip install "
                              "pyyaml (or pip install 'lmdeq[yaml]'), or write the file as .toml or .json") from None
        load, errors = (lambda b: yaml.safe_load(b)), (yaml.YAMLError,)
    elif suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:
            try:
                import tomli as tomllib
            except ImportError:
                raise ConfigError(f"config: reading {path} needs the tomli package before Python 3.11, which is not "
                                  "installed; pip install tomli (or pip install 'lmdeq[toml]')") from None
        load, errors = (lambda b: tomllib.loads(b.decode("utf-8"))), (tomllib.TOMLDecodeError, UnicodeDecodeError)
    else:
        load, errors = (lambda b: json.loads(b.decode("utf-8"))), (ValueError,)
    try:
        values = load(raw)
    except errors as err:
        detail = " ".join(str(err).split())
        kind = {".yml": "YAML"}.get(suffix, suffix[1:].upper())
        raise ConfigError(f"config: {path} is not valid {kind} ({detail[:200]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config: {path} must hold a mapping of flag names to values, not a "
                          f"{type(values).__name__}")
    return values


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each long flag's name without '--' (dashes) -> its action."""
    return {s[2:]: a for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def _exclusive(parser: argparse.ArgumentParser) -> list[set[str]]:
    """The destinations of each mutually exclusive group of flags."""
    return [{a.dest for a in g._group_actions} for g in parser._mutually_exclusive_groups]


def _scalar(key: str, value, action: argparse.Action, where: str):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: {key} must be a number or a string, got {type(value).__name__} {value!r}")
    try:
        parsed = action.type(str(value)) if action.type is not None else str(value)
    except (argparse.ArgumentTypeError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {key}: {err}") from None
    if action.choices is not None and parsed not in action.choices:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return parsed


def _overrides(value, where: str) -> list[tuple[str, object]]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise ConfigError(f"{where}: set must be a mapping of model settings to values, got {type(value).__name__}")
    return list(value.items())


def file_arguments(path: str | os.PathLike, parser: argparse.ArgumentParser) -> dict:
    """The flag values of the config file ``path`` by destination (see the module docstring), checked against
    the flags of ``parser`` (the train parser)."""
    path = Path(path)
    where = f"config {path}"
    flags = _flags(parser)
    out: dict = {}
    set_by: dict[str, str] = {}
    for raw_key, value in _read(path).items():
        key = str(raw_key).replace("_", "-")
        action = flags.get(key)
        if action is None or key in NOT_IN_FILE:
            why = "cannot be set inside a config file" if key in NOT_IN_FILE else "is not a train flag"
            raise ConfigError(f"{where}: {raw_key!r} {why} (keys are the flags of lmdeq train --help, without --)")
        if value is None:
            continue
        dest = action.dest
        if dest in set_by:
            raise ConfigError(f"{where}: {raw_key!r} and {set_by[dest]!r} set the same thing")
        set_by[dest] = str(raw_key)
        if dest == "overrides":
            out[dest] = _overrides(value, where)
        elif action.nargs == 0:   # a flag without a value: true gives it, false its opposite
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be true or false, got {type(value).__name__} {value!r}")
            out[dest] = action.const if value else not action.const
        elif dest == "log":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
                raise ConfigError(f"{where}: log must be a list of logger names or a comma-separated string")
            out[dest] = [n for v in items for n in _scalar(key, v, action, where)]
        elif dest == "resume" and isinstance(value, bool):
            if value:
                out[dest] = True
        elif dest == "lr_restarts" and isinstance(value, list):
            out[dest] = _scalar(key, ",".join(map(str, value)), action, where) if value else []
        else:
            out[dest] = _scalar(key, value, action, where)
    for group in _exclusive(parser):
        both = sorted(set_by[d] for d in group if d in set_by)
        if len(both) > 1:
            raise ConfigError(f"{where}: {' and '.join(map(repr, both))} cannot both be set")
    return out


def resolved_config(cfg: TrainConfig, settings: dict, parser: argparse.ArgumentParser) -> dict:
    """The resolved config of a run (see the module docstring) by flag name, in the parser's order: ``cfg``'s
    fields and the runtime ``settings`` (by destination: device, workers, out, log, ...)."""
    values = {**settings, **cfg.to_dict()}
    values["overrides"] = values.pop("model_overrides")
    flags = _flags(parser)
    unknown = sorted(set(values) - {a.dest for a in flags.values()})
    if unknown:
        raise ValueError(f"resolved_config: {unknown} are no train flags")
    out: dict = {}
    done: set[str] = set()
    for key, action in flags.items():
        dest = action.dest
        if dest in NOT_RESOLVED or dest not in values or dest in done:
            continue
        done.add(dest)   # (a destination of two flags, --lipschitz / --original: written once, by the first)
        value = values[dest]
        if dest == "overrides":
            out["set"] = dict(value)
        elif action.nargs == 0:   # true: the flag given; false: its opposite
            out[key] = value == action.const
        else:
            out[key] = value
    return out


def write_resolved_config(run_dir: str | os.PathLike, resolved: dict) -> None:
    """``<run_dir>/config.json``, atomically."""
    text = json.dumps(resolved, indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(Path(run_dir) / CONFIG_JSON, text.encode("utf-8"), fault=CONFIG_JSON)
