"""Frames one at a time: sources (a video file or a folder of frames) and sinks (a video or PNG folder).

What ``restore`` streams through: a :class:`FrameSource` decodes float ``(3, H, W)`` frames in [0, 1]
lazily, a sink encodes them as they come, so memory does not grow with the video's length. Reading and
writing themselves are :mod:`~s2svr_lightning.data.video_io` (PyAV / decord) and
:mod:`~s2svr_lightning.data.image_io` (Pillow); this module only adapts them to one frame at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

from ..utils import expect_shape, to_float_frames, to_uint8_frames

__all__ = ["FolderSink", "FrameSource", "VideoSink", "open_source"]


@dataclass
class FrameSource:
    """Decoded frames of a video or a frame folder, one at a time.

    Attributes:
        frames: iterator of float ``(3, H, W)`` frames in [0, 1].
        fps: the source frame rate (``None`` for a frame folder).
        length: number of frames, when known.
        name: the path, for messages.
    """

    frames: Iterator[torch.Tensor]
    fps: Fraction | None
    length: int | None
    name: str


def _rgb(frame) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float ``(3, H, W)`` in [0, 1]."""
    frame = expect_shape(torch.as_tensor(frame), "(H, W, 3)", "an RGB frame")
    return to_float_frames(frame, channels_last=True)


def open_source(path: str | os.PathLike) -> FrameSource:
    """Open a video file or a folder of frames for streaming decode (clear errors for bad input)."""
    from . import video_io
    from .image_io import list_frame_files, read_image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_dir():
        files = list_frame_files(path)
        return FrameSource(
            frames=(_rgb(read_image(f)) for f in files), fps=None, length=len(files), name=str(path)
        )
    reader = video_io.VideoReader(path)
    return FrameSource(
        frames=(_rgb(f) for f in reader.iter_frames()), fps=reader.fps, length=len(reader), name=str(path)
    )


class FolderSink:
    """Write frames as ``00000000.png``, ``00000001.png``, ... into a folder."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.count = 0

    def write(self, frame: torch.Tensor) -> None:
        """Write a float ``(3, H, W)`` frame in [0, 1] (rounded to 8 bits as the metrics round)."""
        from PIL import Image

        Image.fromarray(to_uint8_frames(frame, channels_last=True).cpu().numpy()).save(
            self.folder / f"{self.count:08d}.png"
        )
        self.count += 1

    def close(self) -> None:
        """Nothing to finish: every frame is a complete file."""


class VideoSink:
    """Encode frames into a video file with PyAV at a given frame rate (opened at the first frame)."""

    def __init__(
        self, path: str | os.PathLike, fps: Fraction, *, codec: str | None = None, crf: int | None = None
    ) -> None:
        self.path, self.fps, self.codec, self.crf = Path(path), fps, codec, crf
        self.writer = None
        self.count = 0

    def write(self, frame: torch.Tensor) -> None:
        """Encode a float ``(3, H, W)`` frame in [0, 1]."""
        from .video_io import VideoWriter

        if self.writer is None:
            kwargs = {}
            if self.codec is not None:
                kwargs["codec"] = self.codec
            if self.crf is not None:
                kwargs["crf"] = self.crf
            if frame.shape[-2] % 2 or frame.shape[-1] % 2:
                kwargs["pix_fmt"] = "yuv444p"  # 4:2:0 chroma needs even sizes
            self.writer = VideoWriter(self.path, self.fps, **kwargs)
            self.writer.__enter__()
        self.writer.write(to_uint8_frames(frame, channels_last=True).cpu().numpy())
        self.count += 1

    def close(self) -> None:
        """Finish the stream (flush the encoder, write the trailer)."""
        if self.writer is not None:
            self.writer.__exit__(None, None, None)
            self.writer = None
