"""Errors a training run raises; importable without torch (the command line catches them)."""


class TrainingError(RuntimeError):
    """The run cannot go on (for example, too many non-finite steps in a row); the message says why."""
