"""lmdeq.checks: one exception type per kind of mistake (wrong type: ConfigTypeError, a TypeError and a ValueError;
wrong value: ConfigError, a ValueError), messages naming the argument, and the same answer wherever the check
is used."""
import numpy as np
import pytest
import torch

from lmdeq import checks
from lmdeq.errors import ConfigError, ConfigTypeError, LmdeqError


def test_the_exception_types_are_the_builtins_users_catch():
    assert issubclass(ConfigTypeError, TypeError) and issubclass(ConfigTypeError, ValueError)
    assert issubclass(ConfigError, ValueError) and not issubclass(ConfigError, TypeError)
    assert issubclass(ConfigTypeError, LmdeqError) and issubclass(ConfigError, LmdeqError)


@pytest.mark.parametrize("value,exc", [(True, ConfigTypeError), (1.0, ConfigTypeError), ("3", ConfigTypeError),
                                       (None, ConfigTypeError), (0, ConfigError), (-4, ConfigError)])
def test_integer_rejects(value, exc):
    with pytest.raises(exc) as info:
        checks.integer("rounds", value, 1, where="f: ")
    assert type(info.value) is exc
    assert str(info.value).startswith("f: rounds must be an int >= 1, got ")


def test_integer_accepts_integral_types_and_returns_an_int():
    for v in (3, np.int64(3), np.int32(3)):
        out = checks.integer("n", v, 0)
        assert out == 3 and type(out) is int
    assert checks.integer("n", -7) == -7   # no minimum


def test_count_accepts_what_range_accepts():
    for v in (4, 4.0, np.int64(4), torch.tensor(4)):
        out = checks.count("max_iter", v)
        assert out == 4 and type(out) is int
    for v, exc in [(True, ConfigTypeError), (2.5, ConfigTypeError), (torch.tensor(3.0), ConfigTypeError),
                   ("3", ConfigTypeError), (-1, ConfigError), (torch.tensor(-2), ConfigError)]:
        with pytest.raises(exc, match="max_iter must be an int >= 0"):
            checks.count("max_iter", v)


def test_number_intervals_and_messages():
    assert checks.number("tol", 1e-3, 0, low_open=True) == 1e-3
    assert checks.number("x", np.float32(0.5), 0, 1) == 0.5 and checks.number("x", torch.tensor(0.25)) == 0.25
    cases = [(dict(low=0, low_open=True), 0.0, "tol must be a finite number > 0, got 0.0"),
             (dict(low=0), -1.0, "tol must be a finite number >= 0, got -1.0"),
             (dict(low=0, high=1, high_open=True), 1.0, "tol must be a number in [0, 1), got 1.0"),
             (dict(low=0, high=1, low_open=True), 0, "tol must be a number in (0, 1], got 0"),
             (dict(), float("inf"), "tol must be a finite number, got inf"),
             (dict(), float("nan"), "tol must be a finite number, got nan")]
    for kw, v, msg in cases:
        with pytest.raises(ConfigError) as info:
            checks.number("tol", v, **kw)
        assert str(info.value) == msg and not isinstance(info.value, TypeError)
    for v in (True, "0.5", None, torch.ones(2)):
        with pytest.raises(ConfigTypeError, match="tol must be a finite number"):
            checks.number("tol", v)


def test_damping_boolean_choice():
    assert checks.damping("tau", 1) == 1.0
    for v in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"tau must be a number in \(0, 1\]"):
            checks.damping("tau", v)
    assert checks.boolean("flag", False) is False
    with pytest.raises(ConfigTypeError, match="flag must be a bool, got 1"):
        checks.boolean("flag", 1)
    assert checks.choice("mode", "abs", ("abs", "rel")) == "abs"
    for v in ("max", ["abs"], 1):
        with pytest.raises(ConfigError, match=r"mode must be one of \('abs', 'rel'\)"):
            checks.choice("mode", v, ("abs", "rel"))
    assert checks.choice("x0", None, ("v", None)) is None
    with pytest.raises(ConfigError):
        checks.choice("flag", 1, (True, False))   # 1 == True, but it is not a bool


@pytest.mark.parametrize("call", [
    lambda: __import__("lmdeq").ops.power_iteration_matrices([torch.randn(4, 3)], [torch.randn(4)], True),
    lambda: __import__("lmdeq").solvers.Anderson(m=True),
    lambda: __import__("lmdeq").cuda_graphs.GraphCache(max_graphs=True),
    lambda: __import__("lmdeq.app.bench.interleave").app.bench.interleave.interleaved_rounds({"a": lambda: 0.0},
                                                                                           rounds=True),
    lambda: __import__("lmdeq.models.constraints").models.constraints.update_norm_estimates([], True),
])
def test_a_bool_count_is_the_same_mistake_everywhere(call):
    """A bool where a count goes: ConfigTypeError in every layer (ops, solvers, CUDA graphs, benchmarks, models)."""
    with pytest.raises(ConfigTypeError, match="must be an int >= "):
        call()
