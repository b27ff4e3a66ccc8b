"""The pipeline's Lightning callbacks and plugins: atomic checkpoints, interruption, plain progress.

- :class:`AtomicCheckpointIO`: the trainer's checkpoint writer. Lightning's default one goes through an
  fsspec transaction whose temporary file lives in the system temp dir, so its final move is atomic only
  if that dir shares the checkpoint's filesystem (``lightning.fabric.utilities.cloud_io._atomic_save``
  and fsspec's ``LocalFileOpener``, Lightning 2.x). This one writes through
  :func:`s2svr_lightning.atomic.atomic_write_bytes`, next to the target: a kill at any moment leaves
  either the previous complete checkpoint or the new complete one, never half a file.
- :class:`CheckpointOnInterrupt`: saves ``last.ckpt`` when SIGTERM or Ctrl-C stops a fit, so that the
  re-run resumes at the step reached.
- :class:`PlainProgressBar`: one plain progress line every N steps when stdout is not a terminal
  (cluster logs), where a redrawn bar would fill the log with carriage returns.
- :class:`StageProgressBar`: Lightning's bar on a terminal, counting the stage's steps under the stage's
  name (Lightning's own counts the batches of an epoch, "Epoch 0/-2" in a run that is set in steps).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from s2svr_lightning.atomic import atomic_write_bytes

__all__ = ["AtomicCheckpointIO", "CheckpointOnInterrupt", "PlainProgressBar", "StageProgressBar"]


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic (temporary file in the same directory)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"expected storage_options=None for {type(self).__name__}, got {storage_options!r}"
            )
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_write_bytes(path, lambda f: torch.save(checkpoint, f))


class CheckpointOnInterrupt(Callback):
    """Save ``path`` (normally the stage's ``last.ckpt``) when training is interrupted by SIGTERM or Ctrl-C.

    Lightning turns SIGTERM into an exception raised between two training steps (all ranks together
    under DDP), so the state saved is consistent: the re-run resumes at the exact step reached, and no
    work is lost. Errors other than interruptions (a NaN loss, a crash) save nothing: their state may be
    the cause.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = str(path)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        if trainer.state.fn != "fit" or trainer.global_step == 0:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        rank_zero_info(f"Interrupted at step {trainer.global_step}: saved {self.path}; run again to resume.")


# ---------------------------------------------------------------------------------- plain progress (logs)
class PlainProgressBar(ProgressBar):
    """One plain line every ``every_n_steps`` training steps (and one per validation / test), for output
    that is not a terminal (cluster job logs), where a redrawn bar leaves a stream of carriage returns.

    ``[restorer] step 1500/300000 (0.5 %)  2.31 steps/s  ETA 35:55:10  train/loss 0.0213``
    """

    def __init__(self, every_n_steps: int = 50, *, name: str = "", stream: Any = None) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"expected every_n_steps >= 1, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.name = name
        self.stream = stream
        self._enabled = True
        self._start: tuple[float, int] | None = None
        self._test_batches = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _line(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            prefix = f"[{self.name}] " if self.name else ""
            print(prefix + text, file=self.stream or sys.stdout, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if step % self.every_n_steps and step != total:
            return
        text = f"step {step}/{total}" + (f" ({100 * step / total:.1f} %)" if total and total > 0 else "")
        if self._start is not None and step > self._start[1]:
            rate = (step - self._start[1]) / max(time.perf_counter() - self._start[0], 1e-9)
            text += f"  {rate:.2f} steps/s"
            if total and total > 0:
                left = int((total - step) / rate)
                text += f"  ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
        metrics = self.get_metrics(trainer, pl_module)
        shown = [
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k != "v_num"
        ]
        self._line("  ".join([text, *shown]))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        scores = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/") and v.numel() == 1
        }
        shown = "  ".join(f"{k} {v:.4g}" for k, v in sorted(scores.items()))
        self._line(f"validation at step {trainer.global_step}: {shown or 'done'}")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._test_batches = 0

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._test_batches += 1
        if self._test_batches % self.every_n_steps == 0:
            self._line(f"test: {self._test_batches} batches scored so far")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._line(f"test done: {self._test_batches} batches scored")


# ------------------------------------------------------------------------------------- terminal progress
class StageProgressBar(TQDMProgressBar):
    """Lightning's progress bar on a terminal, counting the stage's steps under its name:
    ``[teacher] 120/300 [00:40<01:00, 3.00step/s, train/loss_step=0.12]``.

    Lightning's own bar counts the batches of each epoch and starts again every epoch; a stage set in
    steps (``max_steps``) is one count from its first step to its last, resumed runs included. The
    logger's version number (``v_num``) is left out.
    """

    def __init__(self, name: str, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.name = name

    @property
    def train_description(self) -> str:
        return f"[{self.name}]"

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if bar.total != total or bar.unit != "step":  # the stage's first epoch
            bar.reset(total=total)
            bar.unit = "step"
            bar.initial = bar.n = trainer.global_step  # a resumed stage counts on from where it was
            bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and self._should_update(step, bar.total or 0):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def get_metrics(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
