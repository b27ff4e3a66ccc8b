"""Lightning plugins of the pipeline's checkpointing: atomic checkpoint files, a checkpoint on interruption.

- :class:`AtomicCheckpointIO`: the trainer's checkpoint writer. Lightning's default one goes through an
  fsspec transaction whose temporary file lives in the system temp dir, so its final move is atomic only
  if that dir shares the checkpoint's filesystem (``lightning.fabric.utilities.cloud_io._atomic_save``
  and fsspec's ``LocalFileOpener``, Lightning 2.x). This one writes through
  :func:`s2svr_lightning.atomic.atomic_write_bytes`, next to the target: a kill at any moment leaves
  either the previous complete checkpoint or the new complete one, never half a file.
- :class:`CheckpointOnInterrupt`: saves ``last.ckpt`` when SIGTERM or Ctrl-C stops a fit, so that the
  re-run resumes at the step reached.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from s2svr_lightning.atomic import atomic_write_bytes

__all__ = ["AtomicCheckpointIO", "CheckpointOnInterrupt"]


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
