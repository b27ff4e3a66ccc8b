"""Image strips logged to CSV (PNG files), TensorBoard and wandb."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from PIL import Image

from s2svr_lightning.lit.image_logging import images_to_strip, log_images


def test_images_to_strip_lays_tiles_side_by_side():
    red = torch.zeros(3, 4, 5)
    red[0] = 1.0
    grey_u8 = torch.full((1, 6, 3), 128, dtype=torch.uint8)
    strip = images_to_strip([red, grey_u8, torch.rand(2, 3, 4, 2)], gap=1)
    assert strip.shape == (6, 5 + 3 + 2 + 2 + 3, 3) and strip.dtype == np.uint8
    assert tuple(strip[0, 0]) == (255, 0, 0) and tuple(strip[5, 6]) == (128, 128, 128)
    assert tuple(strip[5, 0]) == (0, 0, 0)  # the shorter tile is padded below
    with pytest.raises(ValueError, match="expected images"):
        images_to_strip(torch.zeros(4, 4, 4))


def test_log_images_csv_writes_png_and_no_logger_is_a_noop(tmp_path):
    images = [torch.rand(3, 8, 8), torch.rand(3, 8, 6)]
    assert log_images(None, "val/flow", images, step=5) == []
    logger = CSVLogger(tmp_path, name="run")
    (path,) = log_images(logger, "val/flow 0", images, step=5)
    assert path.name == "val_flow_0_step0000005.png" and path.parent.parent == tmp_path / "run" / "version_0"
    png = np.asarray(Image.open(path))
    assert png.shape == (8, 8 + 2 + 6, 3)
    assert np.array_equal(png[:, :8], (images[0].permute(1, 2, 0) * 255).round().byte().numpy())


def test_log_images_reaches_tensorboard_and_wandb_loggers():
    calls = []

    class RecordingTB(TensorBoardLogger):  # tensorboard is not installed here: record the call instead
        def __init__(self):
            pass

        @property
        def experiment(self):
            class Writer:
                def add_image(self, tag, image, global_step, dataformats):
                    calls.append(("tb", tag, image.shape, global_step, dataformats))

            return Writer()

    class RecordingWandb(WandbLogger):  # no wandb run is started
        def __init__(self):
            pass

        def log_image(self, key, images, step=None, **kwargs):
            calls.append(("wandb", key, images[0].shape, step, type(images[0]).__name__))

    trainer = L.Trainer(logger=[RecordingTB(), RecordingWandb()], enable_checkpointing=False)
    log_images(trainer, "val/x", torch.rand(2, 3, 4, 4), step=9)
    assert calls == [("tb", "val/x", (4, 10, 3), 9, "HWC"), ("wandb", "val/x", (4, 10, 3), 9, "ndarray")]
