"""Small pieces every part of the pipeline uses: config lookups, rank-zero messages and files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

__all__ = ["get", "is_global_zero", "log_message", "read_results", "stage_steps"]

_log = logging.getLogger("s2svr_lightning")


def get(cfg: Any, path: str, default: Any = None) -> Any:
    """``cfg.<path>``, or ``default`` when it is absent or null."""
    value = OmegaConf.select(cfg, path, default=default) if isinstance(cfg, DictConfig) else default
    return default if value is None else value


def is_global_zero() -> bool:
    """Global rank zero, also before a Trainer has set ``rank_zero_only.rank`` (which only knows the local
    rank then): under multi-node DDP, node > 0 processes must not write the run's files either."""
    if getattr(rank_zero_only, "rank", 0) != 0:
        return False
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var):
            return int(os.environ[var]) == 0
    nodes = (os.environ.get(var) for var in ("NODE_RANK", "GROUP_RANK", "SLURM_NODEID"))
    return int(next((n for n in nodes if n), "0")) == 0


def log_message(message: str) -> None:
    """Rank-zero progress message: logged (console and the Hydra run's log file) or printed."""
    if not is_global_zero():
        return
    if logging.getLogger().hasHandlers():
        _log.info(message)
    else:
        print(message, flush=True)


def read_results(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``results.json`` of a run directory (an empty dict if there is none yet)."""
    path = Path(output_dir) / "results.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def stage_steps(cfg: DictConfig, stage: str) -> int:
    """``<stage>.max_steps`` (``debug=fast`` sets it by composition: each task file loads debug last)."""
    return int(get(cfg, f"{stage}.max_steps", 0))
