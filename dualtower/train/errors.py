"""Errors a training run raises; importable without torch (the command line catches them)."""

from ..errors import DualtowerError


class TrainingError(DualtowerError, RuntimeError):
    """The run cannot go on (for example, too many non-finite steps in a row); the message says why."""
