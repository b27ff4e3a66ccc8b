"""Loggers from ``cfg.logger``: one node with a ``_target_``, a mapping of such nodes, or nothing.

:class:`StageWandbLogger` is the wandb logger of ``logger=wandb``: one wandb run per job shared by every
stage (its id is kept in the run folder, so a resumed job continues its run), keys ``<stage>/val/psnr``
and ``test/psnr``, offline when no API key is configured.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig

from s2svr_lightning.conf import ConfigError
from s2svr_lightning.pipeline.common import is_global_zero, log_message

__all__ = ["StageWandbLogger", "build_loggers", "logger_nodes", "log_table", "wandb_offline"]


def wandb_offline(mode: str = "auto") -> bool:
    """Whether wandb runs offline: ``mode`` online / offline, or (auto) when no API key is configured."""
    if mode in ("online", "offline"):
        return mode == "offline"
    if mode != "auto":
        raise ConfigError(f"logger.mode must be auto, online or offline, got {mode!r}")
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return True


_NOTICE_SHOWN: set[str] = set()


class StageWandbLogger(WandbLogger):
    """``WandbLogger`` for the pipeline's stages.

    Args:
        save_dir: the run folder (wandb writes ``<save_dir>/wandb``; the run id is kept in
            ``<save_dir>/wandb_run_id.txt``).
        mode: ``auto`` (online when an API key is configured, else offline), ``online`` or ``offline``.
        prefix: the stage; keys are joined with ``/`` (``restorer/val/psnr``), no prefix for the test stage.
        log_model: ``True``: the stage's checkpoints become ``model`` artifacts at its end; ``"all"``: at
            every save. Offline runs keep them for ``wandb sync``.
        name: the run's name (default ``<group>-<run folder name>``).
        **kwargs: ``project``, ``entity``, ``group``, ``tags``, ... as for ``wandb.init``.
    """

    LOGGER_JOIN_CHAR = "/"

    def __init__(
        self,
        *,
        save_dir: str | os.PathLike,
        mode: str = "auto",
        prefix: str | None = None,
        log_model: bool | Literal["all"] = False,
        name: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        out = Path(save_dir)
        offline = wandb_offline(mode)
        if offline and str(out) not in _NOTICE_SHOWN:  # once per job (each job has its own run folder)
            _NOTICE_SHOWN.add(str(out))
            log_message(
                "wandb: no API key configured (WANDB_API_KEY unset, no `wandb login`): logging offline to "
                f"{out / 'wandb'}. Upload later with `wandb sync {out / 'wandb'}/offline-run-*`."
            )
        id_file = out / "wandb_run_id.txt"
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:8]  # wandb ids: lowercase letters and digits
            if is_global_zero():
                id_file.parent.mkdir(parents=True, exist_ok=True)
                id_file.write_text(run_id + "\n")
        # every stage makes a logger; the first one starts the job's run and the others reuse it
        warnings.filterwarnings("ignore", message=".*wandb run already in progress.*")
        super().__init__(
            name=name or (f"{group}-{out.name}" if group else out.name),
            group=group,
            tags=list(tags),
            save_dir=str(out),
            id=run_id,
            prefix=prefix or "",
            log_model=log_model,
            # Lightning refuses offline=True with log_model; wandb's own offline mode keeps artifacts
            mode="offline" if offline else "online",
            checkpoint_name=f"model-{run_id}-{prefix}" if prefix else None,
            **kwargs,
        )


def logger_nodes(cfg: DictConfig) -> dict[str, Any]:
    """The logger configs of ``cfg.logger`` by name: ``{}`` (none), one node, or a mapping of nodes."""
    node = cfg.get("logger") or {}
    if "_target_" in node:
        return {"logger": node}
    bad = [k for k, v in node.items() if not (isinstance(v, Mapping) and "_target_" in v)]
    if bad:
        raise ConfigError(
            f"logger.{bad[0]}: expected a logger config with a _target_ (e.g. logger=csv, logger=many), "
            f"got {node[bad[0]]!r}"
        )
    return dict(node.items())


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiate the loggers of ``cfg.logger`` (``cfg.current`` set to the stage)."""
    loggers = []
    for name, node in logger_nodes(cfg).items():
        try:
            loggers.append(instantiate(node, _convert_="all"))
        except ConfigError:
            raise
        except Exception as err:
            where = "logger" if name == "logger" else f"logger.{name}"
            raise ConfigError(f"{where}: cannot build {node.get('_target_')}: {err}") from err
    return loggers


def log_table(loggers: Sequence[Logger], key: str, rows: Mapping[str, Mapping[str, Any]]) -> None:
    """A table with one row per ``rows`` key (e.g. per-sequence scores) to every wandb logger."""
    columns = sorted({c for r in rows.values() for c in r})
    if not rows:
        return
    data = [[name, *(r.get(c) for c in columns)] for name, r in rows.items()]
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(key=key, columns=["sequence", *columns], data=data)
