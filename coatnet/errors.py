"""The error every weights or checkpoint reader raises, and the one-line form of a reader's own error."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A weights or checkpoint file that is missing, unreadable, or does not fit the requested model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A weights file that is not there: a user error (ValueError) that callers may still catch as FileNotFoundError."""


def first_line(err: BaseException) -> str:
    """An error's type and first line, for a one-line message about a file that could not be read."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__
