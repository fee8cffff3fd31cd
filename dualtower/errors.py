"""The library's errors, one base (`DualtowerError`); importable without torch.

A user error (`UserError` and what derives from it) says that what was given is wrong: an input file, a flag, a
config key, a model name. Its message names the input and the problem, and the command line shows it as one
line (exit 2). Anything else reaching the command line is a fault of ours: one line, a hint to run with --debug
for the traceback, exit 1. User errors are ValueErrors (and NotFound a FileNotFoundError, UnknownName a
KeyError), so code catching those keeps working.
"""

from __future__ import annotations


class DualtowerError(Exception):
    """The base of every error dualtower raises on purpose."""


class UserError(DualtowerError, ValueError):
    """What was given is wrong; the message names it and the problem."""


class NotFound(UserError, FileNotFoundError):
    """A file, folder or model that was named does not exist."""


class UnknownName(UserError, KeyError):
    """A name (an architecture, a format, an item) that is not known; the message suggests the closest."""

    def __str__(self) -> str:  # a KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


class MissingDependency(DualtowerError, ImportError):
    """A feature's optional dependency is not installed; the message names the pip command that adds it."""


class TrainingError(DualtowerError, RuntimeError):
    """A training run cannot go on (for example, too many non-finite steps in a row); the message says why."""


def unpickling_reason(error: Exception) -> str:
    """What torch.load(weights_only=True) found wrong, without its advice to load with weights_only=False (which
    would run the file's code): its "WeightsUnpickler error" line where it has one, else the first line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    found = next((ln for ln in lines if ln.startswith(("WeightsUnpickler error", "Trying to load unsupported",
                                                        "Unsupported global"))), None)
    if found is None:
        found = lines[0] if lines else ""
        if "weights_only" in found:
            found = "objects other than tensors, numbers and strings"
    return f"{type(error).__name__}: {found[:200]}"


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is about what the user gave (shown as one line, exit 2) rather than a fault of ours. Besides
    our own user errors: a file the user named that the system cannot find, and text or JSON the user gave that
    does not decode."""
    import json

    return isinstance(error, (UserError, MissingDependency, TrainingError, FileNotFoundError, json.JSONDecodeError,
                              UnicodeDecodeError))


def require(module: str, feature: str, extra: str):
    """`import module`, or MissingDependency naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"{feature} needs {module.split('.')[0]}, which is not installed: "
                                f"pip install 'dualtower[{extra}]'") from e
