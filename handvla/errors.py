"""Errors meant for users: each names the thing (file, field, option) and what was expected.

The CLI prints these as one line and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class HandvlaError(Exception):
    """Base class for errors caused by input, configuration or environment (not by a bug)."""


class InputError(HandvlaError, ValueError):
    """Bad input data: ``where`` (a file or object), ``field`` and what was ``expected``."""

    def __init__(self, where: str | Path | None, field: str | None, expected: str, got: str | None = None):
        self.where, self.field, self.expected, self.got = where, field, expected, got
        parts = []
        if where is not None:
            parts.append(str(where))
        if field is not None:
            parts.append(f"field '{field}'")
        msg = ": ".join(parts) + (": " if parts else "") + f"expected {expected}"
        if got is not None:
            msg += f", got {got}"
        super().__init__(msg)


class ConfigError(HandvlaError, ValueError):
    """A bad option or configuration value."""


class MissingResourceError(HandvlaError, FileNotFoundError):
    """A file the user must provide (MANO pickles, weights, a dataset) is not where it was looked for."""


class CheckpointError(HandvlaError):
    """A checkpoint folder that is missing pieces or does not load."""
