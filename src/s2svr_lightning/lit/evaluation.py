"""What the test stage leaves to look at: the restored frames as PNG and the scores as CSV.

:class:`TestOutputWriter` is a Lightning callback for ``trainer.test(restorer, datamodule=...)``:

- ``<output_dir>/outputs/<sequence key>/<frame>.png``: every scored frame of every test sequence, 8-bit
  lossless PNG rounded exactly as the metrics round (:func:`~s2svr_lightning.utils.to_uint8_frames`, the
  levels of :func:`~s2svr_lightning.metrics.quantize_8bit`), so scoring the PNGs against the ground truth
  gives the reported PSNR / SSIM. Frames keep the dataset's names where it has them (REDS
  ``00000000.png``, GoPro ``000047.png``, Vimeo-90K ``im4.png``), otherwise the 8-digit frame index. Only
  the frames the benchmark scores are written (Vimeo-90K-T: the centre frame), each once although chunks
  of a sequence overlap.
- ``<output_dir>/per_sequence.csv`` and ``<output_dir>/per_frame.csv``: the scores of
  :class:`~s2svr_lightning.metrics.VideoMetrics` per sequence and per frame (with the baseline's), and
  the warping error / tOF of the module's ``test_temporal`` where it scored them
  (:mod:`s2svr_lightning.temporal`), with (``save_images``) ``<output_dir>/plots/<sequence key>.png``:
  PSNR and warping error over the frames.

Under DDP each rank writes the PNGs of its own sequences and rank 0 the CSVs, after the metrics are
gathered from every rank. Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from s2svr_lightning.atomic import atomic_write_bytes, write_csv
from s2svr_lightning.metrics import VideoMetrics
from s2svr_lightning.temporal import merge_rows, plot_sequence
from s2svr_lightning.utils import to_uint8_frames

__all__ = ["TestOutputWriter"]

_SEQUENCE_COLUMNS = ("sequence", "frames", "psnr", "ssim", "baseline_psnr", "baseline_ssim")
_FRAME_COLUMNS = ("sequence", "frame", "name", "psnr", "ssim", "baseline_psnr", "baseline_ssim")
# the warping error and tOF of s2svr_lightning.temporal, where the test stage scores them
_SEQUENCE_COLUMNS, _FRAME_COLUMNS = (c + ("warp_error", "tof") for c in (_SEQUENCE_COLUMNS, _FRAME_COLUMNS))


def _relative_key(key: str) -> PurePosixPath:
    """A sequence key as a folder below ``outputs/`` (keys like ``reds/000`` nest); refuses escapes."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"expected a relative sequence key without '.' or '..' parts, got {key!r}")
    return path


class TestOutputWriter(Callback):
    """Save the restored test frames (PNG) and the per-sequence / per-frame scores (CSV).

    Needs a LightningModule whose ``test_step`` returns ``{"output": (B, T, 3, H, W), "key": B keys}``
    plus the batch's ``frames`` (frame indices), ``score`` (frames the metric counts) and, where the
    dataset names its frames, ``frame_names``, and which scores into a ``test_metrics``
    :class:`~s2svr_lightning.metrics.VideoMetrics` (:class:`~s2svr_lightning.lit.RestorerModule`).

    Args:
        output_dir: folder of ``outputs/``, ``per_sequence.csv`` and ``per_frame.csv``.
        save_images: write the PNGs (the CSVs are always written).
    """

    __test__ = False  # a pytest collector would take the "Test" prefix for a test class

    def __init__(self, output_dir: str | os.PathLike, save_images: bool = True) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.save_images = bool(save_images)
        self._names: dict[tuple[str, int], str] = {}

    @property
    def images_dir(self) -> Path:
        return self.output_dir / "outputs"

    def image_path(self, key: str, name: str) -> Path:
        """Where the frame called ``name`` of sequence ``key`` is saved."""
        return self.images_dir / _relative_key(key) / f"{name}.png"

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(getattr(pl_module, "test_metrics", None), VideoMetrics):
            raise ValueError(
                f"TestOutputWriter: expected a module with a VideoMetrics test_metrics (RestorerModule), "
                f"got {type(pl_module).__name__}"
            )
        self._names = {}

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, Mapping) or "output" not in outputs or "key" not in outputs:
            got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError(
                f"TestOutputWriter: expected test_step to return a dict with 'output' and 'key', got {got}"
            )
        if "frames" not in outputs:
            raise ValueError(
                "TestOutputWriter: expected test batches with 'frames' (frame indices), as the "
                "VideoRestorationDataModule's test loader gives"
            )
        out = outputs["output"]
        b, t = out.shape[:2]
        keys = [outputs["key"]] if isinstance(outputs["key"], str) else list(outputs["key"])
        frames = torch.as_tensor(outputs["frames"]).expand(b, t).tolist()
        score = outputs.get("score")
        score = [[True] * t] * b if score is None else torch.as_tensor(score).bool().expand(b, t).tolist()
        # default collate: T tuples of B names
        names = outputs.get("frame_names")
        for i, key in enumerate(keys):
            for j in range(t):
                index = int(frames[i][j])
                if not score[i][j] or (key, index) in self._names:
                    continue  # not scored here, or written by an earlier overlapping chunk
                name = str(names[j][i]) if names is not None else f"{index:08d}"
                self._names[(key, index)] = name
                if self.save_images:
                    self._write_png(self.image_path(key, name), out[i, j])

    @staticmethod
    def _write_png(path: Path, frame: torch.Tensor) -> None:
        from PIL import Image

        image = Image.fromarray(to_uint8_frames(frame, channels_last=True).cpu().numpy())
        atomic_write_bytes(path, lambda f: image.save(f, format="PNG"))

    def _all_names(self) -> dict[tuple[str, int], str]:
        names = dict(self._names)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[dict | None] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self._names)
            for part in gathered:
                names.update(part or {})
        return names

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before the module's own hook, which resets the metrics; every rank takes part in the syncs.
        metrics: VideoMetrics = pl_module.test_metrics
        per_sequence = metrics.per_sequence()
        per_frame = metrics.per_frame()
        temporal = getattr(pl_module, "test_temporal", None)
        if temporal is not None:
            per_frame = merge_rows(per_frame, temporal.per_frame())
            for key, row in temporal.per_sequence().items():
                per_sequence.setdefault(key, {}).update(row)
        names = self._all_names()
        if not trainer.is_global_zero:
            return
        seq_rows = [{"sequence": key, **row} for key, row in sorted(per_sequence.items())]
        frame_rows = [
            {**row, "name": names.get((row["sequence"], row["frame"]), f"{row['frame']:08d}")}
            for row in per_frame
        ]
        write_csv(self.output_dir / "per_sequence.csv", seq_rows, _SEQUENCE_COLUMNS)
        write_csv(self.output_dir / "per_frame.csv", frame_rows, _FRAME_COLUMNS)
        if self.save_images and any("warp_error" in row for row in frame_rows):  # PSNR, warping error
            for key in per_sequence:
                rows = [row for row in frame_rows if row["sequence"] == key]
                plot_sequence(self.output_dir / "plots" / f"{_relative_key(key)}.png", rows, title=key)
