"""Shared pytest setup and fixtures: one thread per process, tiny restorer checkpoints and networks,
frame folders, videos, photos."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest


@pytest.fixture
def synthetic_datamodule():
    """Factory for a tiny synthetic ``VideoRestorationDataModule`` (64x64 frames, 6 per sequence).

    ``synthetic_datamodule(task="deblur", num_frames=3, dataset={"frames": 8})``: keyword arguments go to
    the DataModule; ``dataset`` entries update the synthetic dataset options. A deblurring task blurs
    3 sub-frames unless ``degradation`` says otherwise.
    """
    from s2svr_lightning.data import VideoRestorationDataModule

    def make(task: str = "vsr", *, dataset: dict | None = None, **kwargs):
        options = {"name": "synthetic", "size": 64, "frames": 6, "train_sequences": 4}
        options.update({"val_sequences": 2, "test_sequences": 2})
        options.update(dataset or {})
        kwargs.setdefault("num_frames", 4)
        kwargs.setdefault("crop_size", 32)
        kwargs.setdefault("batch_size", 2)
        if task == "deblur":
            kwargs.setdefault("degradation", {"blur_frames": 3})
        return VideoRestorationDataModule(dataset=options, task=task, **kwargs)

    return make


@pytest.fixture
def make_video():
    """Factory writing uint8 frames ``(N, H, W, 3)`` to a video file with PyAV; returns the path.

    ``make_video(path, frames, codec="libx264", fps=Fraction(30000, 1001), options={"bf": "2"})``.
    """
    from s2svr_lightning.data.media.video_io import VideoWriter

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


# ---------------------------------------------------------------------------------------------- torch
def pytest_configure(config):
    """One torch thread per test process (``S2SVR_TEST_THREADS`` to change it), subprocesses included.

    The suite's tensors are tiny: threads gain nothing on them, and on a 2-core machine shared with any
    other busy process OpenMP's two threads ran 10-30x slower than one (a 64-channel 3x3 conv at 16x16:
    32 ms against 1 ms). ``make test`` uses the cores by running test processes side by side instead
    (pytest-xdist), which only pays with one thread each.
    """
    threads = os.environ.get("S2SVR_TEST_THREADS", "1")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = threads
    import torch

    torch.set_num_threads(int(threads))


def pytest_collection_modifyitems(config, items):
    """The ``slow`` tests first: with test processes side by side (``make test``: pytest-xdist handing out
    two tests at a time), the longest start at once on every process instead of one of them ending the run
    alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# ---------------------------------------------------------------------------------------------- checkpoints
TINY_RESTORER = {"channels": 8, "num_blocks": 1}  # overrides of s2svr_* builders that run in milliseconds


def save_checkpoint(module, path):
    """Write ``module``'s checkpoint to ``path`` as a trainer would (``s2svr_kind``, hparams, weights)."""
    import lightning as L

    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(str(path))
    return path


@pytest.fixture(name="save_checkpoint")
def _save_checkpoint_fixture():
    """:func:`save_checkpoint` as a fixture: ``save_checkpoint(module, path) -> path``."""
    return save_checkpoint


@pytest.fixture(scope="session")
def restorer_ckpt(tmp_path_factory):
    """A tiny untrained VSR restorer checkpoint (8 channels, one residual block), written by the current
    RestorerModule: LQ 16x24 frames restore to 64x96 in milliseconds."""
    import torch

    from s2svr_lightning.lit.restorer import RestorerModule

    torch.manual_seed(0)
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY_RESTORER, total_steps=1)
    return save_checkpoint(module, tmp_path_factory.mktemp("restorer") / "restorer.ckpt")


@pytest.fixture
def write_frames():
    """Factory writing uint8 frames ``(N, H, W, 3)`` as ``0000.png, 0001.png, ...`` into a new folder."""
    from PIL import Image

    def make(folder, frames):
        folder.mkdir(parents=True)
        for i, frame in enumerate(np.asarray(frames)):
            Image.fromarray(frame).save(folder / f"{i:04d}.png")
        return folder

    return make


@pytest.fixture(scope="session")
def restorer_net(restorer_ckpt):
    """The network of :func:`restorer_ckpt`, loaded by :func:`s2svr_lightning.checkpoint.load_restorer`."""
    from s2svr_lightning.checkpoint import load_restorer

    return load_restorer(restorer_ckpt)[0]
