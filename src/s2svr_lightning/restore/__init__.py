"""Restoring videos with a trained restorer: the streaming restorer, one input, a batch, export, the CLI.

- :mod:`~s2svr_lightning.restore.stream`: :class:`StreamingRestorer` (carried states, bounded memory,
  spatial tiles);
- :mod:`~s2svr_lightning.restore.run`: :func:`restore_video`, one input into one output (the loop of one
  stream: :mod:`~s2svr_lightning.restore.loop`; several processes on one video:
  :mod:`~s2svr_lightning.restore.segments`);
- :mod:`~s2svr_lightning.restore.batch`: many inputs into one folder;
- :mod:`~s2svr_lightning.restore.export`: one streaming step as TorchScript / ONNX;
- :mod:`~s2svr_lightning.restore.options`: :class:`RestoreOptions`, built once by the command line
  (:mod:`~s2svr_lightning.restore.cli`, ``s2svr-restore`` / ``python -m s2svr_lightning.restore``) or by
  ``stage=predict``.

Names are imported lazily (as in :mod:`s2svr_lightning`): importing one module of the package does not
load the others.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {  # module: the names it exports
    ".stream": ("StreamingRestorer",),
    ".options": ("RestoreOptions",),
    ".loop": ("RestoreSummary",),
    ".run": ("restore_video",),
    ".export": ("export_step",),
    ".cli": ("build_parser", "main"),
}

__all__ = [name for names in _EXPORTS.values() for name in names]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
