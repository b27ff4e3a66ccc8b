"""The random-access frame store the readers implement and the datasets read clips from.

A :class:`FrameStore` is one sequence of RGB frames on disk (image files, a video file, a YUV file) read
by index and crop; it lives with the media readers so that they need nothing from the datasets.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch

__all__ = ["Crop", "FrameStore"]

Crop = tuple[int, int, int, int]  # (top, left, height, width) in HQ pixels


class FrameStore(abc.ABC):
    """One sequence of RGB frames on disk (image files, a video file, a YUV file)."""

    #: where the frames live, used in error messages
    path: str
    #: how DataLoader workers reading this store must be started (a ``multiprocessing`` start method), or
    #: None where any start method is safe
    worker_start: str | None = None

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of every frame."""

    @abc.abstractmethod
    def read(self, indices: Sequence[int], crop: Crop | None = None) -> torch.Tensor:
        """Frames ``(n, 3, H, W)`` float32 in [0, 1] (cropped to ``crop`` if given)."""

    @abc.abstractmethod
    def validate(self, verify: str = "header") -> None:
        """Raise :class:`~s2svr_lightning.data.errors.DatasetError` if a frame is missing, unreadable,
        truncated or of another size."""

    def names(self) -> list[str] | None:
        """The name of each frame (an image file's name without its extension), or None (a video file)."""
        return None
