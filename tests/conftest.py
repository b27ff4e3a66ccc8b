"""Shared pytest fixtures (keep small: each engineer adds only fixtures)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest


@pytest.fixture
def synthetic_datamodule():
    """Factory for a tiny synthetic ``VideoRestorationDataModule`` (64x64 frames, 6 per sequence).

    ``synthetic_datamodule(task="deblur", num_frames=3, dataset={"frames": 8})``: keyword arguments go to
    the DataModule; ``dataset`` entries update the synthetic dataset options.
    """
    from s2svr_lightning.data import VideoRestorationDataModule

    def make(task: str = "vsr", *, dataset: dict | None = None, **kwargs):
        options = {"name": "synthetic", "size": 64, "frames": 6, "train_sequences": 4}
        options.update({"val_sequences": 2, "test_sequences": 2, "blur_frames": 3})
        options.update(dataset or {})
        kwargs.setdefault("num_frames", 4)
        kwargs.setdefault("crop_size", 32)
        kwargs.setdefault("batch_size", 2)
        return VideoRestorationDataModule(dataset=options, task=task, **kwargs)

    return make


@pytest.fixture
def make_video():
    """Factory writing uint8 frames ``(N, H, W, 3)`` to a video file with PyAV; returns the path.

    ``make_video(path, frames, codec="libx264", fps=Fraction(30000, 1001), options={"bf": "2"})``.
    """
    from s2svr_lightning.data.video_io import VideoWriter

    def make(
        path, frames, *, codec: str = "libx264", fps=Fraction(25), pix_fmt: str = "yuv420p", options=None
    ):
        with VideoWriter(path, fps, codec=codec, pix_fmt=pix_fmt, options=options) as writer:
            for frame in np.asarray(frames):
                writer.write(frame)
        return path

    return make


@pytest.fixture
def moving_photo():
    """Factory: a real photograph (skimage astronaut) seen by a panning camera, uint8 ``(T, H, W, 3)``."""
    from skimage import data

    photo = data.astronaut()

    def make(frames: int = 8, height: int = 48, width: int = 64, step: tuple[int, int] = (2, 3)):
        y0, x0 = 120, 150
        return np.stack(
            [
                photo[
                    y0 + t * step[0] : y0 + t * step[0] + height, x0 + t * step[1] : x0 + t * step[1] + width
                ]
                for t in range(frames)
            ]
        )

    return make
