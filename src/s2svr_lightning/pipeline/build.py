"""Objects from the config: the DataModule, the stage's LightningModule, callbacks and the Trainer.

Every node with a ``_target_`` is built by ``hydra.utils.instantiate``; the pipeline adds only what
depends on the run (checkpoint paths, step counts, the stage's folder). ``cfg.current`` names the stage
being built, for the YAML that interpolates it (``${current.stage_dir}``).
"""

from __future__ import annotations

import copy
import inspect
import pkgutil
import sys
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from s2svr_lightning.conf import ConfigError
from s2svr_lightning.lit.callbacks import (
    AtomicCheckpointIO,
    CheckpointOnInterrupt,
    PlainProgressBar,
    StageProgressBar,
)
from s2svr_lightning.pipeline.common import get, log_message
from s2svr_lightning.pipeline.loggers import build_loggers, logger_nodes
from s2svr_lightning.utils import to_plain

__all__ = [
    "FIT_STAGES",
    "for_stage",
    "build_datamodule",
    "build_module",
    "build_callbacks",
    "build_trainer",
    "check_stage_options",
    "module_class",
    "module_arguments",
    "resolve_strategy",
]

FIT_STAGES = ("teacher", "student", "restorer")


def for_stage(cfg: DictConfig, stage: str, out: Path) -> DictConfig:
    """A copy of ``cfg`` whose ``current`` node names ``stage`` and its folder ``out/<stage>``."""
    staged = copy.deepcopy(cfg)
    OmegaConf.update(staged, "current.stage", stage, force_add=True)
    OmegaConf.update(staged, "current.stage_dir", str(out / stage), force_add=True)
    # one prefix per key in a shared dashboard: restorer/val/psnr; the test scores are test/psnr already
    OmegaConf.update(staged, "current.log_prefix", stage if stage in FIT_STAGES else "", force_add=True)
    return staged


def _target(node: Any, where: str) -> Any:
    target = node.get("_target_") if node is not None else None
    if not target:
        raise ConfigError(f"{where}._target_ is missing: the class to build (e.g. {where} of config.yaml)")
    try:
        return pkgutil.resolve_name(str(target))  # what instantiate will import (without Hydra's error log)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{where}._target_: cannot import {target} ({type(err).__name__}: {err})") from None


def _instantiate(node: Any, where: str, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``; an error raised by the target itself is raised as it is."""
    _target(node, where)
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, Exception):
            raise err.__cause__ from None
        raise ConfigError(f"{where}: {err}") from None


# --------------------------------------------------------------------------------------------- data
def build_datamodule(cfg: DictConfig, stage: str | None = None) -> Any:
    """The ``data`` node's DataModule, with ``<stage>.data`` applied."""
    options = dict(to_plain(cfg.data))
    if stage is not None:
        options.update(to_plain(get(cfg, f"{stage}.data", {})) or {})
    return _instantiate(options, "data")


# --------------------------------------------------------------------------------------------- modules
def module_class(cfg: DictConfig, stage: str) -> type:
    return _target(cfg[stage].module, f"{stage}.module")


def _accepted_arguments(cls: type) -> set[str] | None:
    """Keyword arguments of ``cls``: its own, and its bases' while each passes ``**kwargs`` on; None when
    ``**kwargs`` reaches ``LightningModule`` (any name may be accepted then)."""
    accepted: set[str] = set()
    for klass in cls.__mro__:
        if klass in L.LightningModule.__mro__:
            return None
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        accepted |= {n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return accepted
    return None


def module_arguments(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """``<stage>.module``, resolved: a hand-off (``${stage_ckpt:...}``) whose checkpoint is missing raises
    its :class:`ConfigError` (OmegaConf wraps what a resolver raises)."""
    try:
        return to_plain(cfg[stage].module)
    except InterpolationResolutionError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        raise (cause or ConfigError(f"{stage}.module: {err}")) from None


def build_module(cfg: DictConfig, stage: str) -> L.LightningModule:
    """``<stage>.module``, instantiated (its inputs from earlier stages are interpolations in the config)."""
    return _instantiate(module_arguments(cfg, stage), f"{stage}.module")


# --------------------------------------------------------------------------------------------- callbacks
def _extra_callbacks(cfg: DictConfig, stage: str) -> list[Callback]:
    """``callbacks.extra``: ``monitor: null`` / ``mode: null`` stand for the stage's best metric."""
    built = []
    best = cfg[stage].best if stage in FIT_STAGES else None
    for name, node in (get(cfg, "callbacks.extra", {}) or {}).items():
        if node is None:  # removed with callbacks.extra.NAME=null
            continue
        where = f"callbacks.extra.{name}"
        fill = {}
        if "monitor" in node and node.monitor is None:
            if best is None:
                continue  # a metric-driven callback has nothing to watch outside training
            fill["monitor"] = best.monitor
            if "mode" in node and node.mode is None:
                fill["mode"] = best.mode
        try:
            built.append(_instantiate(node, where, **fill))
        except ConfigError:
            raise
        except Exception as err:
            raise ConfigError(f"{where}: {type(err).__name__}: {err}") from err
    return built


def build_callbacks(
    cfg: DictConfig, stage: str, out: Path, *, max_steps: int, has_logger: bool
) -> tuple[list[Callback], bool]:
    """The stage's callbacks and whether Lightning's own progress bar is on.

    Training stages: ``last.ckpt`` every ``callbacks.checkpoint_every_n_steps`` (and on SIGTERM / Ctrl-C),
    the best ``<stage>.best.save_top_k`` by ``<stage>.best.monitor``, then ``callbacks.extra``.
    """
    callbacks: list[Callback] = []
    fitting = max_steps > 0
    if fitting:
        ckpt_dir = out / stage / "checkpoints"
        every = int(cfg.callbacks.checkpoint_every_n_steps)
        best = cfg[stage].best
        if int(best.save_top_k) != 0:
            callbacks.append(
                ModelCheckpoint(
                    dirpath=str(ckpt_dir),
                    filename="best-step{step:07d}",
                    auto_insert_metric_name=False,
                    monitor=str(best.monitor),
                    mode=str(best.mode),
                    save_top_k=int(best.save_top_k),
                    save_last=False,
                    save_on_train_epoch_end=False,  # scored at each validation
                )
            )
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(ckpt_dir),
                filename="step{step:07d}",
                auto_insert_metric_name=False,
                save_top_k=0,
                save_last=True,
                every_n_train_steps=max(1, min(every, max_steps)),
            )
        )
        callbacks.append(CheckpointOnInterrupt(ckpt_dir / "last.ckpt"))
        for cb in _extra_callbacks(cfg, stage):
            if isinstance(cb, LearningRateMonitor) and not has_logger:
                continue  # it needs a logger to write to
            callbacks.append(cb)
    else:
        callbacks += [cb for cb in _extra_callbacks(cfg, stage) if isinstance(cb, ProgressBar)]
    if any(isinstance(cb, ProgressBar) for cb in callbacks):
        return callbacks, True
    mode = cfg.callbacks.progress_bar
    if mode == "auto":
        if sys.stdout.isatty():
            callbacks.append(StageProgressBar(stage))
            return callbacks, True
        callbacks.append(PlainProgressBar(int(cfg.callbacks.progress_every_n_steps), name=stage))
        return callbacks, True
    if not isinstance(mode, bool):
        raise ConfigError(f"callbacks.progress_bar must be auto, true or false, got {mode!r}")
    return callbacks, mode


# --------------------------------------------------------------------------------------------- trainer
def build_trainer(
    cfg: DictConfig,
    stage: str,
    out: Path,
    *,
    max_steps: int = -1,
    val_every_n_steps: int = 0,
    limit_val_batches: int | float | None = None,
    find_unused_parameters: bool = False,
    extra_callbacks: list[Callback] | None = None,
) -> L.Trainer:
    """The ``trainer`` node for ``stage``, writing under ``out/<stage>``, with its loggers and callbacks.

    A training stage validates every ``val_every_n_steps`` steps, or once at its last step when that is 0
    (the best checkpoint needs a score); ``<stage>.best.save_top_k=0`` with 0 skips validation in training.
    """
    staged = for_stage(cfg, stage, out)
    loggers = build_loggers(staged)
    callbacks, progress = build_callbacks(staged, stage, out, max_steps=max_steps, has_logger=bool(loggers))
    fitting = max_steps > 0
    computed: dict[str, Any] = dict(
        strategy=resolve_strategy(cfg.hardware, find_unused_parameters=find_unused_parameters),
        logger=loggers if loggers else False,
        callbacks=list(extra_callbacks or []) + callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(out / stage),
        enable_progress_bar=progress,
        enable_checkpointing=fitting,
    )
    if fitting:
        computed.update(max_steps=max_steps, max_epochs=-1)
        every = int(val_every_n_steps or 0)
        if every <= 0 and int(cfg[stage].best.save_top_k) != 0:
            every = max_steps
        if every > 0:
            computed.update(val_check_interval=min(every, max_steps), check_val_every_n_epoch=None)
        else:
            computed.update(limit_val_batches=0)
    if limit_val_batches is not None and computed.get("limit_val_batches") != 0:
        computed["limit_val_batches"] = limit_val_batches
    options = trainer_options(staged, stage)
    # a key the config sets wins over the pipeline's
    computed = {k: v for k, v in computed.items() if k not in options}
    try:
        return _instantiate(options, "trainer", **computed)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"trainer: {err}") from err


def trainer_options(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The ``trainer`` node, then ``<stage>.trainer`` (one stage's, e.g. the restorer's gradient clipping),
    which wins over it."""
    options = dict(to_plain(cfg.trainer))
    if stage in FIT_STAGES:
        options.update(to_plain(get(cfg, f"{stage}.trainer", {})) or {})
    return options


# --------------------------------------------------------------------------------------------- checks
def _check_trainer_options(cfg: DictConfig, stage: str) -> None:
    """Every key of ``trainer`` and ``<stage>.trainer`` must be a ``Trainer`` argument."""
    options = trainer_options(cfg, stage)
    accepted = _accepted_arguments(_target(options, "trainer"))
    unknown = sorted(
        k for k in options if not str(k).startswith("_") and accepted is not None and k not in accepted
    )
    if unknown:
        where = [w for w in ("trainer", f"{stage}.trainer") if set(unknown) & set(get(cfg, w, {}) or {})]
        raise ConfigError(
            f"{' / '.join(where) or 'trainer'} has unknown option(s) {unknown}: not arguments of "
            f"{options['_target_']} (see its documentation for the accepted names)"
        )


def check_stage_options(cfg: DictConfig) -> None:
    """Every ``<stage>.module`` key must be an argument of its ``_target_``, every stage's DataModule
    options must build, every callback must build and every stage's input checkpoint must be there: a typo
    or a missing checkpoint fails here, before the first stage trains."""
    stages = list(cfg.stage.run)
    for stage in FIT_STAGES:
        if stage not in stages:
            continue
        cls = module_class(cfg, stage)
        accepted = _accepted_arguments(cls)
        given = {k for k in cfg[stage].module if not str(k).startswith("_")}  # not _target_, _convert_
        unknown = sorted(given - accepted) if accepted is not None else []
        if unknown:
            raise ConfigError(
                f"{stage}.module has unknown option(s) {unknown}; {cls.__name__} accepts {sorted(accepted)}"
            )
        _extra_callbacks(cfg, stage)
        _check_trainer_options(cfg, stage)
    for name, node in logger_nodes(cfg).items():
        _target(node, "logger" if name == "logger" else f"logger.{name}")
    for stage in stages:
        if stage == "predict":
            continue
        try:
            build_datamodule(cfg, stage)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"the {stage} stage's data options do not work: {err} (see data and {stage}.data)"
            ) from err
    for stage in FIT_STAGES:
        if stage in stages:  # the hand-offs: each checkpoint exists, or an earlier stage of this run makes it
            module_arguments(cfg, stage)


_DDP_START = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


def _multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # not under Hydra
        return False


def _num_processes(hw: Any) -> int:
    devices = get(hw, "devices", 1)
    nodes = int(get(hw, "num_nodes", 1))
    if isinstance(devices, int):
        n = devices if devices > 0 else 2  # -1: all devices, more than one
    elif isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        n = len(devices)
    else:
        n = 2 if str(devices) not in ("1", "auto") else 1
    return n * nodes


def resolve_strategy(hw: Any, *, find_unused_parameters: bool = False) -> Any:
    """The Trainer ``strategy`` for ``hardware`` (a DDPStrategy for the ddp family, else the name).

    Hydra multirun and subprocess ``ddp`` do not mix: Lightning re-launches ``sys.argv`` for each rank,
    which under multirun re-runs the whole sweep in every rank. Under multirun, ``ddp`` becomes
    ``ddp_spawn``, which starts the workers from inside the job.
    """
    from lightning.pytorch.strategies import DDPStrategy

    name = str(get(hw, "strategy", "auto"))
    if name == "ddp" and _multirun() and _num_processes(hw) > 1:
        log_message(
            "note: under Hydra multirun, strategy=ddp would re-launch the whole sweep in each rank; "
            "using ddp_spawn"
        )
        name = "ddp_spawn"
    if name in _DDP_START:
        return DDPStrategy(
            start_method=_DDP_START[name],
            find_unused_parameters=find_unused_parameters,
            process_group_backend=get(hw, "process_group_backend"),
        )
    return name
