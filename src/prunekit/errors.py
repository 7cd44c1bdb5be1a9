"""User-facing errors: one line saying what was wrong and how to fix it."""

from __future__ import annotations


class PrunekitError(Exception):
    """A problem with the user's input. The CLI prints its message on one line and exits 2."""


class ConfigError(PrunekitError, ValueError):
    """An invalid setting (method, sparsity, pattern, ...)."""


class DataError(PrunekitError, ValueError):
    """A calibration or evaluation source that cannot be used."""


class ModelLoadError(PrunekitError, OSError):
    """A model spec that cannot be resolved or loaded."""


class OutputError(PrunekitError, OSError):
    """An output location that cannot be written safely."""
