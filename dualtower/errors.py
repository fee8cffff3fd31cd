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


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is about what the user gave (shown as one line, exit 2) rather than a fault of ours. Besides
    our own user errors: a file the user named that the system cannot find, and text or JSON the user gave that
    does not decode."""
    import json

    if isinstance(error, (UserError, MissingDependency)):
        return True
    from .train.errors import TrainingError

    return isinstance(error, (TrainingError, FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError))


def require(module: str, feature: str, extra: str):
    """`import module`, or MissingDependency naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"{feature} needs {module.split('.')[0]}, which is not installed: "
                                f"pip install 'dualtower[{extra}]'") from e
