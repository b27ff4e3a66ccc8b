"""Checkpointing pieces of the pipeline: atomic writes and a checkpoint on interruption.

Lightning's default checkpoint writer goes through an fsspec transaction whose temporary file lives in
the system temp dir; the final move is atomic only if that dir shares the checkpoint's filesystem (facts
section 10). :class:`AtomicCheckpointIO` writes the temporary file next to the target instead, so a kill
at any moment leaves either the previous complete checkpoint or the new complete one, never half a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["AtomicCheckpointIO", "CheckpointOnInterrupt", "atomic_write_bytes"]


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def atomic_write_bytes(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(fileobj)`` on a temporary file in ``path``'s directory, fsync it, then rename it onto
    ``path`` (``os.replace`` is atomic within one filesystem)."""
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # persist the rename itself (not supported everywhere)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


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
