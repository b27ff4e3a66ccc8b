"""The training pipeline: teacher flow -> student flow -> restorer -> test, from one Hydra config.

``run(cfg)`` runs the stages listed in ``cfg.stage.run`` in order, each with its own Trainer under
``<output_dir>/<stage>/``, and hands each checkpoint to the next stage:

- ``teacher``: :class:`~s2svr_lightning.lit.TeacherFlowModule` on HQ frames;
- ``student``: :class:`~s2svr_lightning.lit.StudentFlowModule` on LQ frames, distilled from the teacher;
- ``restorer``: :class:`~s2svr_lightning.lit.restorer.RestorerModule`, flow net from the student;
- ``test``: the restorer on the whole held-out sequences, with the baseline (bicubic or the input).

Resuming: a stage writes ``<stage>/checkpoints/last.ckpt`` every ``callbacks.checkpoint_every_n_steps``
steps and on SIGTERM / Ctrl-C; run the same command again with the same ``hydra.run.dir`` and it
continues from there. A stage that finished (``<stage>/checkpoints/final.ckpt``, or ``test/metrics.json``)
is skipped and its recorded metrics reused. All checkpoints are written atomically.

``results.json`` in the output dir holds each stage's final metrics under its name, the checkpoint of
each stage under ``"checkpoints"`` and the wall time under ``"timings"``; ``run`` returns the value
named by ``cfg.optimized_metric`` (e.g. ``test.psnr``) for Hydra sweepers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from s2svr_lightning.callbacks import AtomicCheckpointIO, CheckpointOnInterrupt, atomic_write_bytes

__all__ = ["ConfigError", "STAGES", "TASKS", "run", "build_datamodule", "build_trainer", "read_results"]

STAGES = ("teacher", "student", "restorer", "test")
TASKS = ("deblur_gopro", "vsr_reds4", "vsr_vimeo", "cve_mfqe", "demo", "demo_deblur", "demo_cve")
_KIND_SCALE = {"vsr": 4, "deblur": 1, "cve": 1}
_DDP_START = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


class ConfigError(ValueError):
    """The configuration cannot run: the message says what to change."""


# --------------------------------------------------------------------------------------------- helpers
def _container(node: Any) -> Any:
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _get(cfg: Any, path: str, default: Any = None) -> Any:
    value = OmegaConf.select(cfg, path, default=default) if isinstance(cfg, DictConfig) else default
    return default if value is None else value


def _is_global_zero() -> bool:
    """Global rank zero, also before a Trainer has set ``rank_zero_only.rank`` (which only knows the local
    rank then): under multi-node DDP, node > 0 processes must not write the run's files either."""
    if getattr(rank_zero_only, "rank", 0) != 0:
        return False
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var):
            return int(os.environ[var]) == 0
    nodes = (os.environ.get(var) for var in ("NODE_RANK", "GROUP_RANK", "SLURM_NODEID"))
    return int(next((n for n in nodes if n), "0")) == 0


_log = logging.getLogger("s2svr_lightning")


def _say(message: str) -> None:
    """Rank-zero progress message: logged (console and the Hydra run's log file) or printed."""
    if not _is_global_zero():
        return
    if logging.getLogger().hasHandlers():
        _log.info(message)
    else:
        print(message, flush=True)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    if not _is_global_zero():
        return
    text = json.dumps(data, indent=2, sort_keys=False, default=float) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def read_results(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``results.json`` of a run directory (an empty dict if there is none yet)."""
    path = Path(output_dir) / "results.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def _scalar_metrics(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """``{"val/psnr": tensor(..)}`` -> ``{"psnr": ..}`` for the keys under ``prefix/``."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not key.startswith(prefix + "/"):
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)):
            out[key[len(prefix) + 1 :]] = float(value)
    return out


def _debug(cfg: Any, key: str) -> Any:
    """A ``debug`` group setting (``debug=fast``): applied on top of the task, whatever the merge order."""
    return _get(cfg, f"debug.{key}")


def stage_steps(cfg: DictConfig, stage: str) -> int:
    """``<stage>.max_steps``, capped by ``debug.max_steps``."""
    steps = int(_get(cfg, f"{stage}.max_steps", 0))
    cap = _debug(cfg, "max_steps")
    return min(steps, int(cap)) if cap is not None else steps


# --------------------------------------------------------------------------------------------- checks
def validate_config(cfg: DictConfig) -> None:
    """Cheap checks of the composed config, before any data or network is built."""
    if cfg.get("task_name") is None:
        raise ConfigError(
            "no task selected: add +task=<name> with one of "
            + ", ".join(TASKS)
            + " (try `+task=demo`, which "
            "runs every stage on the built-in synthetic video)"
        )
    kind = cfg.get("kind")
    if kind not in _KIND_SCALE:
        raise ConfigError(f"kind must be one of {sorted(_KIND_SCALE)}, got {kind!r}")
    if int(cfg.scale) != _KIND_SCALE[kind]:
        raise ConfigError(f"scale must be {_KIND_SCALE[kind]} for kind={kind}, got {cfg.scale}")
    stages = list(_get(cfg, "stage.run", []))
    unknown = [s for s in stages if s not in STAGES]
    if not stages or unknown:
        raise ConfigError(f"stage.run must list stages among {STAGES}, got {stages}")
    order = [s for s in STAGES if s in stages]
    if stages != order:
        raise ConfigError(f"stage.run must keep the order {STAGES}, got {stages}")
    for stage in ("teacher", "student", "restorer"):
        if stage in stages and stage_steps(cfg, stage) <= 0:
            raise ConfigError(f"{stage}.max_steps must be > 0, got {_get(cfg, f'{stage}.max_steps')}")
    logger = _get(cfg, "logger.name", "csv")
    if logger not in ("csv", "tensorboard", "wandb", "none"):
        raise ConfigError(f"logger.name must be csv, tensorboard, wandb or none, got {logger!r}")
    if logger == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            try:
                import tensorboardX  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "logger=tensorboard needs the tensorboard package: `pip install tensorboard` "
                    "(or use the default logger=csv, or logger=wandb)"
                ) from None


def _module_classes() -> dict[str, list[type]]:
    from s2svr_lightning.lit import FlowModuleBase, StudentFlowModule, TeacherFlowModule
    from s2svr_lightning.lit.restorer import RestorerModule

    return {
        "teacher": [TeacherFlowModule],
        "student": [StudentFlowModule, FlowModuleBase],  # the student passes **kwargs to its base
        "restorer": [RestorerModule],
    }


def check_stage_options(cfg: DictConfig) -> None:
    """Every ``<stage>.module`` key must be an argument of the stage's module, and every stage's
    DataModule options must build: a typo fails here, before the first stage trains."""
    import inspect

    for stage, classes in _module_classes().items():
        if stage not in cfg.stage.run:
            continue
        accepted: set[str] = set()
        for cls in classes:
            params = inspect.signature(cls.__init__).parameters
            accepted |= {n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD}
        # the pipeline sets these itself
        set_by_pipeline = {"teacher_checkpoint", "flow_init", "model", "model_overrides", "kind", "scale"}
        given = set(_module_kwargs(cfg, stage))
        unknown = sorted(given - accepted)
        if unknown:
            raise ConfigError(
                f"{stage}.module has unknown option(s) {unknown}; {classes[0].__name__} accepts "
                f"{sorted(accepted - set_by_pipeline)}"
            )
    for stage in cfg.stage.run:
        try:
            build_datamodule(cfg, stage)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"the {stage} stage's data options do not work: {err} (see data and {stage}.data)"
            ) from err


def _multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # not under Hydra
        return False


def _num_processes(hw: Any) -> int:
    devices = _get(hw, "devices", 1)
    nodes = int(_get(hw, "num_nodes", 1))
    if isinstance(devices, int):
        n = devices if devices > 0 else 2  # -1: all devices, more than one
    elif isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        n = len(devices)
    else:
        n = 2 if str(devices) not in ("1", "auto") else 1
    return n * nodes


def resolve_strategy(hw: Any, *, find_unused_parameters: bool = False) -> Any:
    """The Trainer ``strategy`` for ``hardware`` (a DDPStrategy for the ddp family, else the name).

    Hydra multirun and subprocess ``ddp`` do not mix: every rank would re-run the whole sweep (Lightning
    re-launches ``sys.argv``, facts section 10). Under multirun, ``ddp`` becomes ``ddp_spawn``, which
    starts the workers from inside the job.
    """
    from lightning.pytorch.strategies import DDPStrategy

    name = str(_get(hw, "strategy", "auto"))
    if name == "ddp" and _multirun() and _num_processes(hw) > 1:
        _say(
            "note: under Hydra multirun, strategy=ddp would re-launch the whole sweep in each rank; "
            "using ddp_spawn"
        )
        name = "ddp_spawn"
    if name in _DDP_START:
        backend = _get(hw, "process_group_backend")
        return DDPStrategy(
            start_method=_DDP_START[name],
            find_unused_parameters=find_unused_parameters,
            process_group_backend=backend,
        )
    return name


# --------------------------------------------------------------------------------------------- builders
def build_datamodule(cfg: DictConfig, stage: str | None = None) -> Any:
    """The task's ``VideoRestorationDataModule``, with the stage's ``data`` overrides applied."""
    from s2svr_lightning.data import VideoRestorationDataModule

    kwargs = dict(_container(cfg.get("data") or {}))
    if stage is not None:
        kwargs.update(_container(_get(cfg, f"{stage}.data", {})) or {})
    if _debug(cfg, "num_workers") is not None:
        kwargs["num_workers"] = int(_debug(cfg, "num_workers"))
    return VideoRestorationDataModule(
        dataset=_container(cfg.dataset),
        task=cfg.kind,
        scale=int(cfg.scale),
        seed=int(cfg.seed),
        **kwargs,
    )


def _wandb_offline(lcfg: Any) -> bool:
    mode = str(_get(lcfg, "mode", "auto"))
    if mode in ("online", "offline"):
        return mode == "offline"
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return True


_WANDB_NOTICE_SHOWN: set[str] = set()


def _build_wandb(cfg: DictConfig, stage: str, out: Path) -> Any:
    from lightning.pytorch.loggers import WandbLogger

    lcfg = cfg.logger
    offline = _wandb_offline(lcfg)
    if offline and str(out) not in _WANDB_NOTICE_SHOWN:  # once per job (each job has its own run dir)
        _WANDB_NOTICE_SHOWN.add(str(out))
        _say(
            "wandb: no API key configured (WANDB_API_KEY unset, no `wandb login`): logging offline to "
            f"{out / 'wandb'}. Upload later with `wandb sync {out / 'wandb'}/offline-run-*`."
        )
    # one wandb run per job: the id is kept in the output dir, so a resumed job continues its run
    id_file = out / "wandb_run_id.txt"
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:8]  # wandb ids: lowercase letters and digits
        if _is_global_zero():
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id + "\n")
    warnings.filterwarnings("ignore", message=".*wandb run already in progress.*")
    return WandbLogger(
        project=_get(lcfg, "project", "s2svr-lightning"),
        entity=_get(lcfg, "entity"),
        name=_get(lcfg, "run_name") or f"{cfg.task_name}-{out.name}",
        group=_get(lcfg, "group") or str(cfg.task_name),
        tags=list(_get(lcfg, "tags", [])),
        save_dir=str(out),
        offline=offline,
        id=run_id,
        resume="allow",
        prefix=stage,
        log_model=False,
        config=_container(cfg),
    )


def build_loggers(cfg: DictConfig, stage: str, out: Path) -> list[Any]:
    """The stage's loggers: CSV (``<stage>/logs``), TensorBoard (``<stage>/tensorboard``) or wandb (one
    run per job, keys prefixed by the stage)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    name = _get(cfg, "logger.name", "csv")
    stage_dir = out / stage
    if name == "csv":
        flush = int(_get(cfg, "logger.flush_logs_every_n_steps", 100))
        return [CSVLogger(save_dir=str(stage_dir), name="logs", flush_logs_every_n_steps=flush)]
    if name == "tensorboard":
        return [TensorBoardLogger(save_dir=str(stage_dir), name="tensorboard", default_hp_metric=False)]
    if name == "wandb":
        return [_build_wandb(cfg, stage, out)]
    return []


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
    """A Trainer for ``stage`` writing under ``out/<stage>``: hardware, loggers, checkpoints."""
    hw, cb = cfg.hardware, cfg.get("callbacks") or {}
    stage_dir = out / stage
    callbacks: list[Callback] = list(extra_callbacks or [])
    fitting = max_steps > 0
    if fitting:
        ckpt_dir = stage_dir / "checkpoints"
        every = int(_get(cb, "checkpoint_every_n_steps", 500))
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
    loggers = build_loggers(cfg, stage, out)
    if fitting and loggers and bool(_get(cb, "lr_monitor", True)):
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    kwargs: dict[str, Any] = dict(
        accelerator=_get(hw, "accelerator", "auto"),
        devices=_get(hw, "devices", "auto"),
        num_nodes=int(_get(hw, "num_nodes", 1)),
        strategy=resolve_strategy(hw, find_unused_parameters=find_unused_parameters),
        precision=_get(hw, "precision", "32-true"),
        sync_batchnorm=bool(_get(hw, "sync_batchnorm", False)),
        logger=loggers if loggers else False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(stage_dir),
        enable_progress_bar=bool(_get(cb, "progress_bar", True)),
        enable_model_summary=bool(_get(cb, "model_summary", False)),
        log_every_n_steps=int(_get(cb, "log_every_n_steps", 50)),
        num_sanity_val_steps=0,
        # evaluation shards whole sequences across ranks without padded duplicates (facts section 10);
        # the DataModule shards the training set itself
        use_distributed_sampler=False,
        enable_checkpointing=fitting,
    )
    if fitting:
        kwargs.update(max_steps=max_steps, max_epochs=-1)
        if val_every_n_steps and val_every_n_steps > 0:
            kwargs.update(
                val_check_interval=min(int(val_every_n_steps), max_steps), check_val_every_n_epoch=None
            )
        else:
            kwargs.update(limit_val_batches=0)
    if limit_val_batches is not None and kwargs.get("limit_val_batches") != 0:
        kwargs["limit_val_batches"] = limit_val_batches
    kwargs.update(_container(cfg.get("trainer") or {}) or {})
    kwargs.update(_container(_debug(cfg, "trainer") or {}) or {})
    return L.Trainer(**kwargs)


# --------------------------------------------------------------------------------------------- stages
def _stage_paths(out: Path, stage: str) -> tuple[Path, Path, Path]:
    ckpt_dir = out / stage / "checkpoints"
    return ckpt_dir / "last.ckpt", ckpt_dir / "final.ckpt", out / stage / "metrics.json"


def _input_checkpoint(cfg: DictConfig, out: Path, stage: str, needed_by: str) -> Path:
    given = _get(cfg, f"ckpt.{stage}")
    path = Path(given) if given else _stage_paths(out, stage)[1]
    if not path.is_file():
        where = f"ckpt.{stage}={given}" if given else f"{path} (the {stage} stage of this output dir)"
        raise ConfigError(
            f"the {needed_by} stage needs a {stage} checkpoint, not found: {where}. Run stage={stage} "
            f"first with the same hydra.run.dir, use stage=all, or pass ckpt.{stage}=PATH"
        )
    return path


def _fit_stage(
    cfg: DictConfig,
    stage: str,
    out: Path,
    make_module: Any,
    *,
    find_unused_parameters: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Fit (or resume, or skip) one training stage: its final validation metrics, and whether it ran."""
    last, final, metrics_file = _stage_paths(out, stage)
    if final.is_file() and metrics_file.is_file():
        _say(f"[{stage}] finished earlier: {final} (skipped)")
        return json.loads(metrics_file.read_text()), False
    scfg = cfg[stage]
    max_steps = stage_steps(cfg, stage)
    val_every = _debug(cfg, "val_every_n_steps")
    limit_val = _debug(cfg, "limit_val_batches")
    limit_val = _get(scfg, "limit_val_batches") if limit_val is None else limit_val
    trainer = build_trainer(
        cfg,
        stage,
        out,
        max_steps=max_steps,
        val_every_n_steps=int(_get(scfg, "val_every_n_steps", 0) if val_every is None else val_every),
        limit_val_batches=limit_val,
        find_unused_parameters=find_unused_parameters,
    )
    datamodule = build_datamodule(cfg, stage)
    module = make_module()
    resume = str(last) if last.is_file() else None
    if resume:
        _say(f"[{stage}] resuming from {last}")
    else:
        _say(f"[{stage}] training for {max_steps} steps")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    except SIGTERMException:
        # Lightning stops between two steps and CheckpointOnInterrupt has saved last.ckpt; a SystemExit
        # without a code would report success
        _say(
            f"[{stage}] stopped by SIGTERM at step {trainer.global_step}; "
            "run the same command again to resume"
        )
        raise SystemExit(128 + signal.SIGTERM) from None
    if trainer.interrupted:
        raise KeyboardInterrupt(f"{stage} stage interrupted at step {trainer.global_step}")
    # the closing validation, whatever the validation schedule during training was
    trainer.limit_val_batches = 1.0 if limit_val is None else limit_val
    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = _scalar_metrics(results[0] if results else trainer.callback_metrics, "val")
    metrics["steps"] = int(trainer.global_step)
    # metrics first, then the final checkpoint: the checkpoint is the "finished" marker
    _write_json(metrics_file, metrics)
    trainer.save_checkpoint(final, weights_only=False)  # full state: training can go on from it
    return metrics, True


def _module_kwargs(cfg: DictConfig, stage: str) -> dict[str, Any]:
    return dict(_container(_get(cfg, f"{stage}.module", {})) or {})


def run_teacher(cfg: DictConfig, out: Path) -> tuple[dict[str, Any], bool]:
    from s2svr_lightning.lit import TeacherFlowModule

    return _fit_stage(cfg, "teacher", out, lambda: TeacherFlowModule(**_module_kwargs(cfg, "teacher")))


def run_student(cfg: DictConfig, out: Path) -> tuple[dict[str, Any], bool]:
    from s2svr_lightning.lit import StudentFlowModule

    kwargs = _module_kwargs(cfg, "student")
    kwargs.setdefault("scale", int(cfg.scale))  # the flow-input rule "hq" reads the LQ pair at x scale
    if kwargs.get("w_dis", 0.1) > 0 or kwargs.get("init_from_teacher", True):
        kwargs["teacher_checkpoint"] = str(_input_checkpoint(cfg, out, "teacher", "student"))
    return _fit_stage(cfg, "student", out, lambda: StudentFlowModule(**kwargs))


def run_restorer(cfg: DictConfig, out: Path) -> tuple[dict[str, Any], bool]:
    from s2svr_lightning.lit.restorer import RestorerModule

    kwargs = _module_kwargs(cfg, "restorer")
    if bool(_get(cfg, "restorer.flow_from_student", True)):
        kwargs["flow_init"] = str(_input_checkpoint(cfg, out, "student", "restorer"))
    kwargs.setdefault("total_steps", stage_steps(cfg, "restorer"))

    def make() -> RestorerModule:
        return RestorerModule(
            model=cfg.model.name,
            model_overrides=_container(cfg.model.get("overrides") or {}),
            kind=str(cfg.kind),
            scale=int(cfg.scale),
            degradation=_container(cfg.get("degradation") or {}),
            metrics=_container(cfg.metrics),
            **kwargs,
        )

    # the frozen flow net has no gradient for its first steps: DDP must tolerate unused parameters then
    frozen = int(kwargs.get("flow_freeze_steps", 5000)) > 0
    return _fit_stage(cfg, "restorer", out, make, find_unused_parameters=frozen)


def run_test(cfg: DictConfig, out: Path) -> tuple[dict[str, Any], bool]:
    from s2svr_lightning.lit.restorer import RestorerModule

    _, _, metrics_file = _stage_paths(out, "test")
    if metrics_file.is_file():
        _say(f"[test] finished earlier: {metrics_file} (skipped)")
        return json.loads(metrics_file.read_text()), False
    ckpt = _input_checkpoint(cfg, out, "restorer", "test")
    module = RestorerModule.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=True)
    # score with this run's benchmark conventions (a checkpoint may come from another task's run)
    module.test_metrics = type(module.test_metrics)(**_container(cfg.metrics))
    trainer = build_trainer(cfg, "test", out, limit_val_batches=None)
    limit = _debug(cfg, "limit_test_batches")
    limit = _get(cfg, "test.limit_batches") if limit is None else limit
    if limit is not None:
        trainer.limit_test_batches = limit
    datamodule = build_datamodule(cfg, "test")
    _say(f"[test] scoring {ckpt} on the held-out sequences")
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics: dict[str, Any] = _scalar_metrics(results[0] if results else trainer.callback_metrics, "test")
    metrics["checkpoint"] = str(ckpt)
    metrics["per_sequence"] = module.test_per_sequence
    _write_json(metrics_file, metrics)
    return metrics, True


_RUNNERS = {"teacher": run_teacher, "student": run_student, "restorer": run_restorer, "test": run_test}


# --------------------------------------------------------------------------------------------- summary
def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def format_table(results: Mapping[str, Any], *, kind: str) -> str:
    """The closing table: flow EPE against zero flow, restorer PSNR / SSIM against the baseline."""
    baseline = {"vsr": "bicubic", "deblur": "blurred input", "cve": "compressed input"}[kind]
    rows = ["| stage | metric | S2SVR | reference |", "|---|---|---|---|"]
    for stage in ("teacher", "student"):
        r = results.get(stage)
        if r and "epe" in r:
            rows.append(
                f"| {stage} | EPE (px) | {_fmt(r['epe'], 3)} | zero flow {_fmt(r.get('epe_zero'), 3)} |"
            )
    r = results.get("restorer")
    if r and "psnr" in r:
        rows.append(
            f"| restorer (val) | PSNR / SSIM | {_fmt(r['psnr'])} / {_fmt(r.get('ssim'), 4)} | "
            f"{baseline} {_fmt(r.get('baseline_psnr'))} / {_fmt(r.get('baseline_ssim'), 4)} |"
        )
    r = results.get("test")
    if r and "psnr" in r:
        rows.append(
            f"| test | PSNR / SSIM | {_fmt(r['psnr'])} / {_fmt(r.get('ssim'), 4)} | "
            f"{baseline} {_fmt(r.get('baseline_psnr'))} / {_fmt(r.get('baseline_ssim'), 4)} |"
        )
        if "delta_psnr" in r:
            rows.append(
                f"| test | delta PSNR (dB) / delta SSIM (x1e-4) | {_fmt(r['delta_psnr'])} / "
                f"{_fmt(r['delta_ssim'] * 1e4, 1)} | 0 / 0 |"
            )
    return "\n".join(rows)


def _optimized_metric(cfg: DictConfig, results: Mapping[str, Any]) -> float | None:
    name = cfg.get("optimized_metric")
    if not name:
        return None
    node: Any = results
    for part in str(name).split("."):
        if not isinstance(node, Mapping) or part not in node:
            _say(f"warning: optimized_metric {name!r} is not in results.json; returning None to the sweeper")
            return None
        node = node[part]
    return float(node)


# --------------------------------------------------------------------------------------------- entry
def _single_log_lines() -> None:
    """Under Hydra the root logger prints to the console and to ``<run>/__main__.log``; the ``lightning``
    package adds its own console handler too, which would print every Lightning message twice."""
    if not logging.getLogger().hasHandlers():
        return
    lightning_logger = logging.getLogger("lightning")
    for handler in list(lightning_logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            lightning_logger.removeHandler(handler)


def output_dir(cfg: DictConfig) -> Path:
    """The run's output dir: ``paths.output_dir`` (Hydra's run dir by default)."""
    path = _get(cfg, "paths.output_dir")
    if not path:
        raise ConfigError(
            "paths.output_dir is not set (it defaults to Hydra's run dir, ${hydra:runtime.output_dir})"
        )
    return Path(path)


def run(cfg: DictConfig) -> float | None:
    """Run the configured stages; returns ``cfg.optimized_metric`` from ``results.json`` (or None)."""
    validate_config(cfg)
    _single_log_lines()
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    matmul = _get(cfg, "hardware.matmul_precision")
    if matmul:
        torch.set_float32_matmul_precision(str(matmul))
    # the DataModule's cheap check (dataset root, layout) and every stage's options, before any training
    build_datamodule(cfg).check()
    check_stage_options(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    results = read_results(out)
    results.update({"task": str(cfg.task_name), "kind": str(cfg.kind), "scale": int(cfg.scale)})
    results.setdefault("checkpoints", {})
    results.setdefault("timings", {})
    try:
        for stage in cfg.stage.run:
            started = time.perf_counter()
            metrics, ran = _RUNNERS[stage](cfg, out)
            elapsed = time.perf_counter() - started
            results[stage] = metrics
            if stage == "test":
                results["checkpoints"]["test"] = metrics.get("checkpoint")
            else:
                results["checkpoints"][stage] = str(_stage_paths(out, stage)[1])
            if ran:  # seconds of this invocation (a resumed stage counts only its remaining part)
                results["timings"][stage] = round(elapsed, 1)
            _write_json(out / "results.json", results)
    finally:
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish()  # one run per job, also between multirun jobs
    if bool(cfg.get("print_table", True)) and _is_global_zero():
        print(
            f"\n{cfg.task_name}: results in {out / 'results.json'}\n"
            + format_table(results, kind=str(cfg.kind))
        )
    return _optimized_metric(cfg, results)
