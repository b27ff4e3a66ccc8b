"""Image logging for the LightningModules: image strips (LQ | output | HQ, flow colour maps) written to
TensorBoard, wandb or the CSV logger's folder, whichever loggers the trainer has."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from s2svr_lightning.utils import to_uint8_frames

__all__ = ["images_to_strip", "log_images"]


def _to_uint8_chw(image: torch.Tensor) -> torch.Tensor:
    image = image.detach().cpu()
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected images (3, H, W) or (1, H, W), got {tuple(image.shape)}")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise ValueError(f"expected uint8 or float images in [0, 1], got {image.dtype}")
    return to_uint8_frames(image)


def images_to_strip(images: torch.Tensor | Sequence[torch.Tensor], *, gap: int = 2) -> np.ndarray:
    """Lay images side by side in one row: ``(N, 3, H, W)`` or a list of ``(3, H, W)`` / ``(N, 3, H, W)``.

    Images are float in [0, 1] or uint8, grey ``(1, H, W)`` is repeated to RGB; shorter images are
    padded at the bottom. Returns a ``(H, W, 3)`` uint8 array.
    """
    if isinstance(images, torch.Tensor):
        images = [images]
    tiles: list[torch.Tensor] = []
    for item in images:
        if not isinstance(item, torch.Tensor):
            raise ValueError(f"expected tensors, got {type(item).__name__}")
        tiles.extend([item] if item.dim() == 3 else list(item) if item.dim() == 4 else [item])
    if not tiles:
        raise ValueError("expected at least one image, got none")
    tiles = [_to_uint8_chw(t) for t in tiles]
    height = max(t.shape[1] for t in tiles)
    width = sum(t.shape[2] for t in tiles) + gap * (len(tiles) - 1)
    strip = torch.zeros(3, height, width, dtype=torch.uint8)
    x = 0
    for t in tiles:
        strip[:, : t.shape[1], x : x + t.shape[2]] = t
        x += t.shape[2] + gap
    return strip.permute(1, 2, 0).contiguous().numpy()


def _loggers(target: Any) -> list[Logger]:
    if target is None:
        return []
    if isinstance(target, Logger):
        return [target]
    if isinstance(target, (list, tuple)):
        return [lg for t in target for lg in _loggers(t)]
    loggers = getattr(target, "loggers", None)  # Trainer or LightningModule
    if loggers is not None:
        return list(loggers)
    raise TypeError(f"expected a Logger, a Trainer, a LightningModule or None, got {type(target).__name__}")


_warned: set[str] = set()


@rank_zero_only
def log_images(
    logger_or_trainer: Any,
    tag: str,
    images: torch.Tensor | Sequence[torch.Tensor],
    step: int,
) -> list[Path]:
    """Log one image strip (the images side by side, see :func:`images_to_strip`) to every logger.

    TensorBoardLogger: ``add_image``; WandbLogger: ``wandb.Image`` (needs Pillow); CSVLogger: a PNG at
    ``<log_dir>/images/<tag>_step<step>.png``; no logger: nothing. Other loggers are skipped with a
    warning. Runs on rank zero only.

    Args:
        logger_or_trainer: a Logger, a list of them, a Trainer, a LightningModule, or None.
        tag: name of the image, e.g. ``"val/flow_0"``.
        images: ``(N, 3, H, W)`` or a list of ``(3, H, W)`` / ``(N, 3, H, W)``, float in [0, 1] or uint8.
        step: the global step.

    Returns:
        The PNG files written (CSVLogger), for the caller's information.
    """
    loggers = _loggers(logger_or_trainer)
    if not loggers:
        return []
    strip = images_to_strip(images)
    written: list[Path] = []
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[strip], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, strip, global_step=step, dataformats="HWC")
        elif isinstance(logger, CSVLogger):
            from PIL import Image

            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", tag).strip("_") or "image"
            path = Path(logger.log_dir) / "images" / f"{safe}_step{int(step):07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(strip).save(path)
            written.append(path)
        else:
            name = type(logger).__name__
            if name not in _warned:
                _warned.add(name)
                rank_zero_warn(
                    f"log_images: {name} is not supported (TensorBoard, wandb, CSV are); images skipped"
                )
    return written
