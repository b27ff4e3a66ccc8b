"""s2svr-lightning: S2SVR video restoration (ICML 2022) in PyTorch Lightning.

The public API is imported lazily, so ``import s2svr_lightning`` stays cheap (Lightning and the data
stack load only when a name that needs them is first used).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Idle OpenMP threads sleep instead of spinning (unless the user chose a policy). Set before torch is
# imported, which this package does lazily. On 2 cores beside another busy process, 2 spinning threads ran
# a 64-channel 3x3 conv at 32x32 in 72-95 ms, 2 passive threads in 18-25 ms and 1 thread in 26-35 ms
# (benchmarks/OPTIMISATIONS.md, "Threads on a busy machine").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_EXPORTS = {
    # networks
    "pwclite": "s2svr_lightning.models",
    "s2svr_vsr": "s2svr_lightning.models",
    "s2svr_deblur": "s2svr_lightning.models",
    "s2svr_cve": "s2svr_lightning.models",
    "build_model": "s2svr_lightning.models",
    "PWCLite": "s2svr_lightning.models",
    "S2SVR": "s2svr_lightning.models",
    "flow_warp": "s2svr_lightning.models",
    # training
    "TeacherFlowModule": "s2svr_lightning.lit",
    "StudentFlowModule": "s2svr_lightning.lit",
    "RestorerModule": "s2svr_lightning.lit",
    "VideoRestorationDataModule": "s2svr_lightning.data",
    # the task, checkpoints, inference
    "Task": "s2svr_lightning.task",
    "load_restorer": "s2svr_lightning.checkpoint",
    "StreamingRestorer": "s2svr_lightning.restore.stream",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 's2svr_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
