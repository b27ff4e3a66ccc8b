"""s2svr-lightning: S2SVR video restoration (ICML 2022) in PyTorch Lightning.

The public API is imported lazily, so ``import s2svr_lightning`` stays cheap (Lightning and the data
stack load only when a name that needs them is first used).
"""

from __future__ import annotations

from s2svr_lightning import commands as _commands
from s2svr_lightning.lazy import lazy_exports

# Importing the library changes nothing process-wide. The commands set up their own process
# (s2svr_lightning.commands.apply_process_settings): the console scripts in their entry points, and
# `python -m s2svr_lightning[.<command>]` here, while Python locates the module it was started to run
# (before the command's module imports torch).
if _commands.started_as_module_command():
    _commands.apply_process_settings()

__version__ = _commands.package_version()

_EXPORTS = {  # module: the names it exports
    "s2svr_lightning.models": (
        "pwclite",
        "s2svr_vsr",
        "s2svr_deblur",
        "s2svr_cve",
        "build_model",
        "PWCLite",
        "S2SVR",
        "flow_warp",
    ),
    "s2svr_lightning.lit": ("TeacherFlowModule", "StudentFlowModule", "RestorerModule"),
    "s2svr_lightning.data": ("VideoRestorationDataModule",),
    "s2svr_lightning.task": ("Task",),
    "s2svr_lightning.checkpoint": ("load_restorer",),
    "s2svr_lightning.restore.stream": ("StreamingRestorer",),
}

__all__ = ["__version__", *(name for names in _EXPORTS.values() for name in names)]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
