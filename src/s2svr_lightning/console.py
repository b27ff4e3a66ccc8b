"""What a training run prints: each stage, what it does and its progress, and the results, without the
lines of the libraries underneath that say nothing about this run.

- :func:`quiet_third_party`: while the pipeline runs, Lightning's product tips, its GPU / TPU
  availability lines and its "stopped: max_steps reached" line are dropped (logging filters on Lightning's
  ``rank_zero`` loggers), and so are deprecation warnings raised inside Lightning's own code (about the
  torch API Lightning calls: nothing the user or this package can change). Everything is put back when
  the run ends; a program that only imports the library is not touched. Warnings that Lightning raises
  about *our* or the user's calls are attributed to the caller, so they still show.
- :class:`ExpectedEvalModules`: a LightningModule that keeps a frozen network in eval mode on purpose
  (the student's teacher) silences Lightning's "Found N module(s) in eval mode at the start of training"
  for exactly that many modules, between ``on_fit_start`` and ``on_train_start``.
- :class:`ConsoleFormatter`: the console form of a run's log records (the message; the level in front of
  warnings and errors); the run's log file keeps the time stamp and the logger's name.
- :data:`STAGE_PURPOSE`: one line per stage for the run's console.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

__all__ = [
    "LIGHTNING_LOGGERS",
    "STAGE_PURPOSE",
    "ConsoleFormatter",
    "LightningNoiseFilter",
    "ExpectedEvalModules",
    "quiet_third_party",
]

# the loggers through which Lightning's rank_zero_info / rank_zero_warn go
LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
)

# Lightning's lines that say nothing about this run: product tips, which accelerators exist (the run's
# own device is in its config), and a stage that ended at its step count (the progress line says so).
_NOISE = re.compile(
    r"^(?:💡 Tip:"
    r"|(?:GPU|TPU|HPU|IPU) available:"
    r"|`Trainer\.fit` stopped: `max_steps=\d+` reached\.$)"
)

# modules whose deprecation warnings come from Lightning's own calls into torch
_LIGHTNING_MODULES = r"(?:lightning|pytorch_lightning|lightning_fabric|lightning_utilities)(?:\.|$)"

# third-party loggers whose INFO lines are about their own housekeeping (matplotlib's font cache)
_HOUSEKEEPING_LOGGERS = ("matplotlib",)

STAGE_PURPOSE = {
    "teacher": "the teacher flow net (PWC-Lite) learns optical flow from HQ frame pairs, without labels",
    "student": "the student flow net learns flow from LQ frame pairs, distilled from the frozen teacher",
    "restorer": "the S2SVR restorer learns to restore LQ clips, aligning frames with the student's flow",
    "test": "the restorer's checkpoint is scored on whole held-out sequences",
    "predict": "a video or frame folder is restored with the restorer's checkpoint",
}


class LightningNoiseFilter(logging.Filter):
    """Drops Lightning's tips, accelerator availability lines and "stopped: max_steps reached" line."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        return _NOISE.match(message) is None


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """While the ``with`` block runs: no Lightning tips / availability lines, no deprecation warnings from
    inside Lightning, no third-party housekeeping INFO lines. Restores every logger and warnings filter
    on exit."""
    noise = LightningNoiseFilter()
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    housekeeping = [logging.getLogger(name) for name in _HOUSEKEEPING_LOGGERS]
    levels = [lg.level for lg in housekeeping]
    for lg in loggers:
        lg.addFilter(noise)
    for lg in housekeeping:
        if lg.getEffectiveLevel() < logging.WARNING:
            lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category, module=_LIGHTNING_MODULES)
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(noise)
        for lg, level in zip(housekeeping, levels):
            lg.setLevel(level)


class ExpectedEvalModules:
    """Silences Lightning's "Found N module(s) in eval mode at the start of training" warning for exactly
    ``count`` modules: the frozen network a LightningModule keeps in eval mode on purpose.

    Call :meth:`start` in ``on_fit_start`` and :meth:`stop` in ``on_train_start`` and ``teardown`` (the
    warning comes between the two). Another number of modules in eval mode (a module of the user's left
    in eval mode by mistake) still warns.
    """

    def __init__(self) -> None:
        self._scope: warnings.catch_warnings | None = None

    def start(self, count: int) -> None:
        self.stop()
        if count <= 0:
            return
        self._scope = warnings.catch_warnings()
        self._scope.__enter__()
        warnings.filterwarnings(
            "ignore", message=rf"Found {int(count)} module\(s\) in eval mode at the start of training\."
        )

    def stop(self) -> None:
        if self._scope is not None:
            scope, self._scope = self._scope, None
            scope.__exit__(None, None, None)


class ConsoleFormatter(logging.Formatter):
    """The message alone for INFO and below; ``WARNING: message`` (or the level's name) above."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname}: {message}"
        return message
