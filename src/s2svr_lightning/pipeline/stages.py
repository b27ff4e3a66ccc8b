"""The stages: teacher, student and restorer training, test, predict.

Each training stage writes under ``<run>/<stage>/``: ``checkpoints/last.ckpt`` (every
``callbacks.checkpoint_every_n_steps`` steps and on SIGTERM / Ctrl-C: resumed from),
``checkpoints/best-*.ckpt`` (the best ``<stage>.best.save_top_k`` by ``<stage>.best.monitor``),
``metrics.json`` and then ``checkpoints/final.ckpt``, the "finished" marker: a finished stage is
skipped and its metrics reused.
"""

from __future__ import annotations

import functools
import json
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from s2svr_lightning.atomic import write_json
from s2svr_lightning.checkpoint import peek
from s2svr_lightning.conf import ConfigError, stage_checkpoint, stage_paths
from s2svr_lightning.pipeline.build import (
    FIT_STAGES,
    build_datamodule,
    build_module,
    build_trainer,
    module_class,
)
from s2svr_lightning.pipeline.common import get, is_global_zero, log_message, stage_steps
from s2svr_lightning.pipeline.loggers import log_table
from s2svr_lightning.utils import to_plain

__all__ = ["RUNNERS", "choose_test_checkpoint", "fit_stage", "stage_paths"]

CHECKPOINT_CHOICES = ("best", "last", "final")


class _LastValidation(Callback):
    """The step and the ``val/*`` scores of the latest validation during training."""

    def __init__(self) -> None:
        self.step = -1
        self.metrics: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.step = int(trainer.global_step)
            self.metrics = _scalar_metrics(trainer.callback_metrics, "val")


def _scalar_metrics(metrics: Any, prefix: str) -> dict[str, float]:
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


def _saved_score(path: Path, monitor: str) -> float | None:
    """The ``monitor`` score that a ModelCheckpoint saved ``path`` for (its state in the file)."""
    states = peek(path).get("callbacks", {})
    for key, state in states.items():
        if str(key).startswith("ModelCheckpoint") and state.get("monitor") == monitor:
            score = state.get("current_score")
            return None if score is None else float(score)
    return None


def _best_record(trainer: L.Trainer, stage: str, cfg: DictConfig) -> dict[str, Any] | None:
    """The best-k checkpoints of the stage with their scores, best first."""
    best = cfg[stage].best
    if int(best.save_top_k) == 0:
        return None
    scored = []
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor == str(best.monitor):
            scored = [(p, float(s)) for p, s in cb.best_k_models.items() if Path(p).is_file()]
    if not scored:  # e.g. ddp_spawn: the callback's state stayed in the workers; each file has its score
        ckpt_dir = stage_paths(Path(trainer.default_root_dir).parent, stage)[0].parent
        scored = [
            (str(p), _saved_score(p, str(best.monitor))) for p in sorted(ckpt_dir.glob("best-step*.ckpt"))
        ]
    maximize = str(best.mode) == "max"
    scored.sort(key=lambda ps: (ps[1] is None, -ps[1] if maximize and ps[1] is not None else ps[1] or 0))
    return {
        "monitor": str(best.monitor),
        "mode": str(best.mode),
        "checkpoints": [{"path": p, "score": s} for p, s in scored],
    }


def fit_stage(cfg: DictConfig, out: Path, *, stage: str) -> tuple[dict[str, Any], bool]:
    """Fit (or resume, or skip) one training stage: its final validation metrics, and whether it ran.

    The stage's module is ``<stage>.module`` as the config has it: what it takes from an earlier stage
    (the teacher's checkpoint, the student's) is an interpolation there (``${stage_ckpt:teacher}``).
    """
    last, final, metrics_file = stage_paths(out, stage)
    if final.is_file() and metrics_file.is_file():
        log_message(f"[{stage}] finished earlier: {final} (skipped)")
        return json.loads(metrics_file.read_text()), False
    scfg = cfg[stage]
    max_steps = stage_steps(cfg, stage)
    limit_val = get(scfg, "limit_val_batches")
    module = build_module(cfg, stage)
    record = _LastValidation()
    trainer = build_trainer(
        cfg,
        stage,
        out,
        max_steps=max_steps,
        val_every_n_steps=int(get(scfg, "val_every_n_steps", 0)),
        limit_val_batches=limit_val,
        # the module says whether some parameters get no gradient in some steps (DDP must tolerate it)
        find_unused_parameters=bool(getattr(module, "ddp_find_unused_parameters", False)),
        extra_callbacks=[record],
    )
    datamodule = build_datamodule(cfg, stage)
    resume = str(last) if last.is_file() else None
    if resume:
        step = peek(last).get("global_step", "?")
        log_message(f"[{stage}] resuming from {last} at step {step} of {max_steps}")
    else:
        log_message(f"[{stage}] training for {max_steps} steps")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    except SIGTERMException:
        # Lightning stops between two steps and CheckpointOnInterrupt has saved last.ckpt; a SystemExit
        # without a code would report success
        log_message(
            f"[{stage}] stopped by SIGTERM at step {trainer.global_step}; "
            "run the same command again to resume"
        )
        raise SystemExit(128 + signal.SIGTERM) from None
    if trainer.interrupted:
        raise KeyboardInterrupt(f"{stage} stage interrupted at step {trainer.global_step}")
    if record.step == trainer.global_step and record.metrics:
        metrics = dict(record.metrics)  # the validation at the last step is the closing one
    else:
        trainer.limit_val_batches = 1.0 if limit_val is None else limit_val
        results = trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = _scalar_metrics(results[0] if results else trainer.callback_metrics, "val")
    metrics["steps"] = int(trainer.global_step)
    best = _best_record(trainer, stage, cfg)
    if best is not None:
        metrics["best"] = best
    # metrics first, then the final checkpoint: the checkpoint is the "finished" marker
    if is_global_zero():
        write_json(metrics_file, metrics, finite=False)
    trainer.save_checkpoint(final, weights_only=False)  # full state: training can go on from it
    return metrics, True


def choose_test_checkpoint(cfg: DictConfig, out: Path) -> tuple[Path, str, float | None]:
    """The restorer checkpoint that the test stage scores: ``ckpt.restorer`` when given, else the
    restorer stage's best (``test.ckpt=best``, falling back to final when none was scored), last or final.

    Returns ``(path, choice, score)``; ``score`` is the best checkpoint's ``restorer.best.monitor``.
    """
    if get(cfg, "ckpt.restorer"):
        return stage_checkpoint(cfg, "restorer", needed_by="the test stage"), "given", None
    choice = str(cfg.test.ckpt)
    if choice not in CHECKPOINT_CHOICES:
        raise ConfigError(f"test.ckpt must be one of {', '.join(CHECKPOINT_CHOICES)}, got {choice!r}")
    last, final, metrics_file = stage_paths(out, "restorer")
    if choice == "best":
        recorded = json.loads(metrics_file.read_text()).get("best") if metrics_file.is_file() else None
        for entry in (recorded or {}).get("checkpoints", []):
            if Path(entry["path"]).is_file():
                return Path(entry["path"]), "best", entry.get("score")
        log_message(
            "[test] no best restorer checkpoint was scored (no validation in training): using final.ckpt"
        )
        choice = "final"
    path = last if choice == "last" else final
    if not path.is_file():
        raise ConfigError(
            f"test.ckpt={choice}: {path} not found. Train the restorer in this run folder first (stage=all), "
            "or pass ckpt.restorer=PATH"
        )
    return path, choice, None


def _test_output_writer(cfg: DictConfig, out: Path) -> list[Callback]:
    if not bool(cfg.test.save_outputs):
        return []
    try:
        from s2svr_lightning.lit.evaluation import TestOutputWriter
    except ImportError as err:
        raise ConfigError(f"test.save_outputs=true needs s2svr_lightning.lit.evaluation: {err}") from err
    return [TestOutputWriter(output_dir=str(out / "test"), save_images=bool(cfg.test.save_images))]


def run_test(cfg: DictConfig, out: Path) -> tuple[dict[str, Any], bool]:
    _, _, metrics_file = stage_paths(out, "test")
    save_outputs = bool(cfg.test.save_outputs)
    done = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    try:
        ckpt, choice, score = choose_test_checkpoint(cfg, out)
    except ConfigError:
        if done is None:
            raise
        ckpt, choice, score = Path(done["checkpoint"]), done.get("checkpoint_choice"), None
    # a finished test runs again only for another checkpoint, or to write the outputs it did not write
    if (
        done is not None
        and done.get("checkpoint") == str(ckpt)
        and (done.get("saved_outputs") or not save_outputs)
    ):
        log_message(f"[test] finished earlier: {metrics_file} (skipped)")
        return done, False
    try:  # warping error / tOF (s2svr_lightning.temporal): test.temporal, test.flow
        from s2svr_lightning.flow_estimators import temporal_metrics

        temporal = temporal_metrics(to_plain(cfg.metrics), str(cfg.test.temporal), cfg.test.flow)
    except (ValueError, OSError) as err:
        raise ConfigError(f"test.temporal={cfg.test.temporal} test.flow={cfg.test.flow}: {err}") from None
    # scored with this run's benchmark conventions (a checkpoint may come from another task's run)
    module = module_class(cfg, "restorer").load_from_checkpoint(
        str(ckpt),
        map_location="cpu",
        weights_only=True,
        metrics=to_plain(cfg.metrics),
        test_temporal=temporal,
    )
    trainer = build_trainer(cfg, "test", out, extra_callbacks=_test_output_writer(cfg, out))
    limit = get(cfg, "test.limit_batches")
    if limit is not None:
        trainer.limit_test_batches = limit
    datamodule = build_datamodule(cfg, "test")
    made, recorded = getattr(datamodule, "spec", None), getattr(module, "task", None)
    if made is not None and recorded is not None and dict(made.degradation) != dict(recorded.degradation):
        log_message(  # a checkpoint from another run: say that its input was made otherwise
            f"[test] note: the checkpoint's LQ was made with degradation {dict(recorded.degradation)}, "
            f"the test data's with {dict(made.degradation)}"
        )
    log_message(f"[test] scoring {ckpt} ({choice}) on the held-out sequences")
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics: dict[str, Any] = _scalar_metrics(results[0] if results else trainer.callback_metrics, "test")
    metrics.update(checkpoint=str(ckpt), checkpoint_choice=choice, checkpoint_score=score)
    metrics["saved_outputs"] = save_outputs
    metrics["per_sequence"] = module.test_per_sequence
    log_table(trainer.loggers, "test/per_sequence", module.test_per_sequence)
    if is_global_zero():
        write_json(metrics_file, metrics, finite=False)
    return metrics, True


def check_predict(cfg: DictConfig) -> tuple[Path, Path | None]:
    """``stage=predict``'s inputs, checked before any work: ``(input, output or None)``."""
    if not get(cfg, "ckpt.restorer"):
        raise ConfigError("stage=predict needs ckpt.restorer=PATH (a restorer stage checkpoint)")
    ckpt = Path(cfg.ckpt.restorer)
    if not ckpt.is_file():
        raise ConfigError(f"ckpt.restorer={ckpt}: no such file")
    try:  # only the kind marker is read
        kind = peek(ckpt).get("s2svr_kind")
    except Exception as err:  # torch raises several types for a file that is not a checkpoint
        raise ConfigError(f"ckpt.restorer={ckpt}: not a readable checkpoint ({type(err).__name__})") from None
    if kind != "restorer":
        raise ConfigError(
            f"ckpt.restorer={ckpt} is a {kind or 'non-s2svr'} checkpoint; predict needs a restorer stage "
            "checkpoint (<run>/restorer/checkpoints/best-*.ckpt or final.ckpt)"
        )
    source = get(cfg, "predict.input")
    if not source:
        raise ConfigError("stage=predict needs predict.input=VIDEO_OR_FRAME_FOLDER")
    if not Path(source).exists():
        raise ConfigError(f"predict.input={source}: no such file or folder")
    target = get(cfg, "predict.output")
    return Path(source), (Path(target) if target else None)


def predict_options(cfg: DictConfig):
    """The :class:`~s2svr_lightning.restore.options.RestoreOptions` that ``predict.*`` sets: the command
    line's, defaults included (device, precision and tile ``auto``), with no progress bar."""
    from s2svr_lightning.restore.options import RestoreOptions, parse_tile

    try:
        return RestoreOptions(
            device=str(cfg.predict.device),
            precision=str(cfg.predict.precision),
            tile=parse_tile(get(cfg, "predict.tile")),
            overwrite=bool(cfg.predict.overwrite),
            progress=False,
            compile=bool(cfg.predict.compile),
        )
    except ValueError as err:
        raise ConfigError(f"predict.tile: {err}") from None


def run_predict(cfg: DictConfig, out: Path) -> tuple[dict[str, Any], bool]:
    """Restore ``predict.input`` with ``ckpt.restorer`` through
    :func:`~s2svr_lightning.restore.run.restore_video` (the streaming path of the ``restore`` command), with
    the :class:`~s2svr_lightning.restore.options.RestoreOptions` that ``predict.*`` sets."""
    from s2svr_lightning.restore.run import restore_video

    source, target = check_predict(cfg)
    if target is None:
        target = out / "predict" / source.name
    try:
        options, chosen = predict_options(cfg).resolved()  # device and precision "auto" as the CLI does
    except ValueError as err:
        raise ConfigError(f"predict: {err}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    log_message(f"[predict] restoring {source} -> {target} with {cfg.ckpt.restorer}: {chosen}")
    try:
        summary = restore_video(cfg.ckpt.restorer, source, target, options)
    except FileExistsError as err:
        raise ConfigError(f"predict.output: {err} (here: predict.overwrite=true)") from None
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"predict: {err}") from None
    metrics = {"input": str(source), "output": str(target), "checkpoint": str(cfg.ckpt.restorer)}
    return {**metrics, "frames": summary.frames, "seconds": round(summary.seconds, 1)}, True


# stage -> runner(cfg, out): one runner for every training stage
RUNNERS = {
    **{stage: functools.partial(fit_stage, stage=stage) for stage in FIT_STAGES},
    "test": run_test,
    "predict": run_predict,
}
