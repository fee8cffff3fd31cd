"""Errors a training run raises; importable without torch (the command line catches them). TrainingError lives
with the library's other errors (`dualtower.errors`)."""

from ..errors import TrainingError

__all__ = ["TrainingError"]
