"""The one exception type the data layer raises for bad data on disk or bad data options."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset, file or option is missing or inconsistent.

    The message always names the file or folder and the problem, so that a user can fix it without a
    traceback. It subclasses ``ValueError`` so callers that catch bad input generically still catch it.
    """
