"""lmdeq's documented, user-facing errors: a bad argument, setting, file, data set, checkpoint or run
directory. Each message names the culprit and says what to do.

Every class also derives from the builtin exception a library user would expect (ValueError,
FileNotFoundError, ...), so ``except ValueError`` keeps working. The ``lmdeq`` command line prints
an :class:`LmdeqError` as one line and exits with status 2; any other exception is a bug in lmdeq and
keeps its traceback.
"""
from __future__ import annotations

__all__ = ["LmdeqError", "UnsupportedError", "BackendError", "ConfigError", "ConfigTypeError", "DataError", "DataNotFoundError",
           "DataUnavailableError", "CheckpointError", "RunDirectoryError", "RunLockedError", "NonFiniteError",
           "first_line"]


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name when it has none."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class LmdeqError(Exception):
    """Base of lmdeq's user-facing errors (the command line prints them as one line)."""


class ConfigError(LmdeqError, ValueError):
    """A setting or command-line argument with a value that cannot work (the message names it)."""


class ConfigTypeError(ConfigError, TypeError):
    """A setting of the wrong type."""


class DataError(LmdeqError, ValueError):
    """A data set, archive, image file or cache directory that cannot be used (the message names the file)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data path or file that does not exist."""


class DataUnavailableError(LmdeqError, RuntimeError):
    """The named data could not be loaded or downloaded."""


class CheckpointError(LmdeqError, ValueError):
    """A checkpoint file that is missing, unreadable, incomplete or does not fit its model."""


class RunDirectoryError(LmdeqError, FileExistsError):
    """A run directory that cannot be used as asked (it holds another run, resuming would rewind it, ...)."""


class RunLockedError(RunDirectoryError):
    """Another live process is training into the run directory."""


class UnsupportedError(LmdeqError, NotImplementedError):
    """A use lmdeq refuses rather than answer wrongly (e.g. a gradient of the implicit gradient)."""


class BackendError(LmdeqError, RuntimeError):
    """A kernel backend forced by LMDEQ_BACKEND that cannot run on the tensors' device."""


class NonFiniteError(LmdeqError, FloatingPointError):
    """Training or evaluation produced NaN/Inf (a diverged run, or non-finite weights)."""
