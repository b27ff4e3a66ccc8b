"""The one exception type the data layer raises for bad data on disk or bad data options."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DatasetError", "file_error"]


class DatasetError(ValueError):
    """A dataset, file or option is missing or inconsistent.

    The message always names the file or folder and the problem, so that a user can fix it without a
    traceback. It subclasses ``ValueError`` so callers that catch bad input generically still catch it.
    """


def file_error(path: str | Path, what: str, err: Exception) -> DatasetError:
    """A :class:`DatasetError` naming the file, what failed, and the library's own error (PyAV, Pillow)."""
    return DatasetError(f"{path}: {what} ({type(err).__name__}: {err})")
