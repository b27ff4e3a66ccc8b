"""The training pipeline: teacher flow -> student flow -> restorer -> test, from one Hydra config.

``run(cfg)`` runs the stages listed in ``cfg.stage.run`` in order, each with its own Trainer under
``<run>/<stage>/``. What a stage takes from an earlier one is declared in the config:
``student.module.teacher_checkpoint: ${stage_ckpt:teacher}`` and
``restorer.module.flow_init: ${stage_ckpt:student,...}`` resolve to ``ckpt.<stage>`` when given, else to
that stage's ``final.ckpt`` in the run folder (checked before the first stage trains):

- ``teacher``: ``teacher.module`` (:class:`~s2svr_lightning.lit.TeacherFlowModule`) on HQ frames;
- ``student``: ``student.module`` (:class:`~s2svr_lightning.lit.StudentFlowModule`) on LQ frames,
  distilled from the teacher;
- ``restorer``: ``restorer.module`` (:class:`~s2svr_lightning.lit.restorer.RestorerModule`), its flow
  net from the student;
- ``test``: the restorer's best (or last, or final: ``test.ckpt``) checkpoint on the whole held-out
  sequences, with the task's baseline;
- ``predict`` (on its own: ``stage=predict``): ``predict.input`` restored with ``ckpt.restorer``.

The run folder is Hydra's run dir: ``${paths.log_dir}/${task_name}/${run_name}`` for a named run. Running
the same command again resumes (``resume=auto``): finished stages are skipped, an interrupted stage
continues from its ``last.ckpt`` at the step it reached, a finished run is only reported. A folder that
holds another task's run is refused before anything runs.

``results.json`` in the run folder holds each stage's final metrics under its name (with its best
checkpoints and their scores under ``"best"``), the checkpoint of each stage under ``"checkpoints"`` and
the wall time under ``"timings"``; ``run`` returns the value named by ``cfg.optimized_metric`` (e.g.
``test.psnr``) for Hydra sweepers.

Where things are: :mod:`.build` makes the objects of the config (DataModule, LightningModules,
callbacks, Trainer), :mod:`.loggers` the loggers, :mod:`.stages` runs each stage (one runner for the
three training stages, one for test, one for predict).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from s2svr_lightning.atomic import write_json
from s2svr_lightning.checkpoint import peek
from s2svr_lightning.conf import TASKS, ConfigError, check_schema, stage_paths
from s2svr_lightning.console import STAGE_PURPOSE, quiet_third_party
from s2svr_lightning.data.datasets import check_dataset_options
from s2svr_lightning.models.s2svr import CHECKPOINTING
from s2svr_lightning.pipeline.build import (
    FIT_STAGES,
    build_datamodule,
    build_trainer,
    check_stage_options,
    resolve_strategy,
)
from s2svr_lightning.pipeline.common import get, is_global_zero, log_message, read_results, stage_steps
from s2svr_lightning.pipeline.loggers import logger_nodes
from s2svr_lightning.pipeline.stages import RUNNERS, check_predict
from s2svr_lightning.task import Task
from s2svr_lightning.utils import to_plain

__all__ = [
    "ConfigError",
    "STAGES",
    "TASKS",
    "run",
    "build_datamodule",
    "build_trainer",
    "check_stage_options",
    "format_table",
    "output_dir",
    "read_results",
    "resolve_strategy",
    "stage_steps",
    "validate_config",
]

STAGES = (*FIT_STAGES, "test", "predict")
RESUME_MODES = ("auto", "never")


# --------------------------------------------------------------------------------------------- checks
def validate_config(cfg: DictConfig) -> DictConfig:
    """Cheap checks of the composed config, before any data or network is built; the typed config."""
    cfg = check_schema(cfg)
    if cfg.get("task_name") is None:
        raise ConfigError(
            f"no task selected: add +task=<name> with one of {', '.join(TASKS)} (try `+task=demo`, which "
            "runs every stage on the built-in synthetic video)"
        )
    try:
        expected = Task.create(cfg.kind).scale
        if int(cfg.scale) != expected:
            raise ConfigError(f"scale must be {expected} for kind={cfg.kind}, got {cfg.scale}")
        Task.create(
            cfg.kind,
            scale=cfg.scale,
            degradation=OmegaConf.to_container(cfg.degradation),
            metrics=cfg.metrics,
        )
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"the task (kind, scale, degradation, metrics): {err}") from None
    try:  # how LQ is made is the task's degradation only: a dataset option of the old kind says so
        check_dataset_options(to_plain(cfg.dataset) or {})
    except ValueError as err:
        raise ConfigError(str(err)) from None
    stages = list(cfg.stage.run)
    unknown = [s for s in stages if s not in STAGES]
    if not stages or unknown:
        raise ConfigError(f"stage.run must list stages among {STAGES}, got {stages}")
    order = [s for s in STAGES if s in stages]
    if stages != order:
        raise ConfigError(f"stage.run must keep the order {STAGES}, got {stages}")
    if "predict" in stages and len(stages) > 1:
        raise ConfigError(f"stage=predict runs on its own, got stage.run={stages}")
    for key in ("hardware.threads", *(f"{s}.threads" for s in FIT_STAGES)):
        threads = get(cfg, key)
        if threads is not None and int(threads) < 1:
            raise ConfigError(f"{key} must be a positive number of threads or null, got {threads}")
    for stage in FIT_STAGES:
        if stage in stages and stage_steps(cfg, stage) <= 0:
            raise ConfigError(f"{stage}.max_steps must be > 0, got {cfg[stage].max_steps}")
        if stage in stages and str(cfg[stage].best.mode) not in ("min", "max"):
            raise ConfigError(f"{stage}.best.mode must be min or max, got {cfg[stage].best.mode!r}")
    checkpointing = OmegaConf.select(cfg, "model.overrides.checkpointing", default="none")
    if checkpointing not in CHECKPOINTING:  # here, not when the restorer stage starts hours later
        raise ConfigError(
            f"model.overrides.checkpointing must be one of {', '.join(CHECKPOINTING)}, got {checkpointing!r}"
        )
    if str(cfg.resume) not in RESUME_MODES:
        raise ConfigError(f"resume must be one of {', '.join(RESUME_MODES)}, got {cfg.resume!r}")
    if "predict" in stages:
        check_predict(cfg)
    for node in logger_nodes(cfg).values():
        if str(node.get("_target_", "")).endswith("TensorBoardLogger"):
            _require_tensorboard()
    return cfg


def _require_tensorboard() -> None:
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


# --------------------------------------------------------------------------------------------- summary
def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def format_table(results: Mapping[str, Any], *, kind: str) -> str:
    """The closing table: flow EPE against zero flow, restorer PSNR / SSIM against the baseline."""
    baseline = Task.create(kind).baseline_name
    rows = ["| stage | metric | S2SVR | reference |", "|---|---|---|---|"]
    for stage in ("teacher", "student"):
        r = results.get(stage)
        if r and "epe" in r:
            rows.append(
                f"| {stage} | EPE (px) | {_fmt(r['epe'], 3)} | zero flow {_fmt(r.get('epe_zero'), 3)} |"
            )
    for stage, label in (("restorer", "restorer (val)"), ("test", "test")):
        r = results.get(stage)
        if r and "psnr" in r:
            rows.append(
                f"| {label} | PSNR / SSIM | {_fmt(r['psnr'])} / {_fmt(r.get('ssim'), 4)} | "
                f"{baseline} {_fmt(r.get('baseline_psnr'))} / {_fmt(r.get('baseline_ssim'), 4)} |"
            )
    r = results.get("test")
    if r and "psnr" in r and "delta_psnr" in r:
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
            log_message(
                f"warning: optimized_metric {name!r} is not in results.json; returning None to the sweeper"
            )
            return None
        node = node[part]
    return float(node)


# --------------------------------------------------------------------------------------------- run folder
def output_dir(cfg: DictConfig) -> Path:
    """The run folder: ``paths.output_dir`` (Hydra's run dir by default)."""
    path = get(cfg, "paths.output_dir")
    if not path:
        raise ConfigError(
            "paths.output_dir is not set (it defaults to Hydra's run dir, ${hydra:runtime.output_dir})"
        )
    return Path(path)


def _stage_state(out: Path, stage: str) -> str | None:
    """What a run folder holds of ``stage``: "finished", "at step N" or None."""
    last, final, metrics_file = stage_paths(out, stage)
    if stage in FIT_STAGES and final.is_file() and metrics_file.is_file():
        return "finished"
    if stage == "test" and metrics_file.is_file():
        return "finished"
    if stage in FIT_STAGES and last.is_file():
        step = peek(last).get("global_step", "?")
        return f"interrupted at step {step} (continues from {last})"
    return None


def check_run_folder(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The run folder's earlier results (``{}`` for a new run), after checking that this command may use
    it: same task, and ``resume=auto``. Says what is resumed and from where."""
    results = read_results(out)
    held = results.get("task")
    if held is not None and held != str(cfg.task_name):
        name = get(cfg, "run_name")
        which = f"run_name={name}" if name else f"the run folder {out}"
        raise ConfigError(
            f"{which} holds a run of task {held!r}, not {cfg.task_name!r} ({out}): choose another run_name"
        )
    stages = [s for s in cfg.stage.run if s != "predict"]
    states = {s: _stage_state(out, s) for s in stages}
    started = {s: v for s, v in states.items() if v}
    if not started:
        return results
    if str(cfg.resume) == "never":
        raise ConfigError(
            f"{out} already holds this run ({', '.join(f'{s} {v}' for s, v in started.items())}) and "
            "resume=never: choose another run_name, or resume=auto to continue it"
        )
    if all(v == "finished" for v in states.values()):
        log_message(f"the run in {out} finished earlier: reporting its results (nothing is retrained)")
    else:
        done = ", ".join(f"{s} {v}" for s, v in started.items())
        log_message(f"resuming the run in {out}: {done}")
    return results


def _single_log_lines() -> None:
    """Under Hydra the root logger prints to the console and to ``<run>/__main__.log``; the ``lightning``
    package adds its own console handler too, which would print every Lightning message twice."""
    if not logging.getLogger().hasHandlers():
        return
    lightning_logger = logging.getLogger("lightning")
    for handler in list(lightning_logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            lightning_logger.removeHandler(handler)


def set_threads(threads: int | None) -> None:
    """Use ``threads`` torch threads here and in every process started from here (DDP ranks, workers).

    Small tensors gain little from a thread pool and lose much when another busy process shares the
    cores: on 2 cores beside one, two OpenMP threads ran 10-30x slower than one on a 16x16 conv.
    """
    if threads is None:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(int(threads))
    torch.set_num_threads(int(threads))


class _ThreadSetting:
    """The process's torch threads and the thread variables its children inherit, to return to."""

    _NAMES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

    def __init__(self, threads: int, env: dict[str, str | None]) -> None:
        self.threads, self.env = threads, env

    @classmethod
    def current(cls) -> _ThreadSetting:
        return cls(torch.get_num_threads(), {name: os.environ.get(name) for name in cls._NAMES})

    def apply(self) -> None:
        for name, value in self.env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        torch.set_num_threads(self.threads)


# --------------------------------------------------------------------------------------------- entry
def _write_results(out: Path, results: Mapping[str, Any]) -> None:
    """The run's ``results.json``, on global rank zero only (non-finite scores kept as ``NaN``)."""
    if is_global_zero():
        write_json(out / "results.json", results, finite=False)


def run(cfg: DictConfig) -> float | None:
    """Run the configured stages; returns ``cfg.optimized_metric`` from ``results.json`` (or None)."""
    cfg = validate_config(cfg)
    _single_log_lines()
    out = output_dir(cfg)
    matmul = get(cfg, "hardware.matmul_precision")
    if matmul:
        torch.set_float32_matmul_precision(str(matmul))
    set_threads(get(cfg, "hardware.threads"))
    process_threads = _ThreadSetting.current()
    predicting = list(cfg.stage.run) == ["predict"]
    if not predicting:
        # the DataModule's cheap check (dataset root, layout) and every stage's options, before any training
        build_datamodule(cfg).check()
        check_stage_options(cfg)
    results = check_run_folder(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    results.update({"task": str(cfg.task_name), "kind": str(cfg.kind), "scale": int(cfg.scale)})
    results.setdefault("checkpoints", {})
    results.setdefault("timings", {})
    _write_results(out, results)  # marks the folder as this task's run from the start
    stages = list(cfg.stage.run)
    try:
        with quiet_third_party():
            _run_stages(cfg, out, stages, results, process_threads)
    finally:
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish()  # one run per job, also between multirun jobs
    if bool(cfg.print_table) and is_global_zero() and not predicting:
        print(
            f"\n{cfg.task_name}: results in {out / 'results.json'}\n"
            + format_table(results, kind=str(cfg.kind))
        )
    return _optimized_metric(cfg, results)


def _run_stages(
    cfg: DictConfig, out: Path, stages: list[str], results: dict[str, Any], process_threads: _ThreadSetting
) -> None:
    """The stages in order, each announced with what it does; ``results.json`` after each."""
    for number, stage in enumerate(stages, 1):
        count = f"stage {number} of {len(stages)}: " if len(stages) > 1 else ""
        log_message(f"[{stage}] {count}{STAGE_PURPOSE.get(stage, stage)}")
        # a stage may choose its own (the demo's tiny restorer runs faster on one thread than on two)
        stage_threads = get(cfg, f"{stage}.threads")
        if stage_threads is None:
            process_threads.apply()
        else:
            set_threads(stage_threads)
        started = time.perf_counter()
        metrics, ran = RUNNERS[stage](cfg, out)
        elapsed = time.perf_counter() - started
        results[stage] = metrics
        if stage in ("test", "predict"):
            results["checkpoints"][stage] = metrics.get("checkpoint")
        else:
            results["checkpoints"][stage] = str(stage_paths(out, stage)[1])
        if ran:  # seconds of this invocation (a resumed stage counts only its remaining part)
            results["timings"][stage] = round(elapsed, 1)
        _write_results(out, results)
