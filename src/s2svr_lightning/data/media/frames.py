"""Frames one at a time: sources (a video file or a folder of frames) and sinks (a video or PNG folder).

What ``restore`` streams through: a :class:`FrameSource` decodes float ``(3, H, W)`` frames in [0, 1]
lazily, a sink encodes them as they come, so memory does not grow with the video's length. Reading and
writing themselves are :mod:`~s2svr_lightning.data.media.video_io` (PyAV / decord) and
:mod:`~s2svr_lightning.data.media.image_io` (Pillow); this module only adapts them to one frame at a time.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ...utils import expect_shape, to_float_frames, to_uint8_frames

__all__ = ["FolderSink", "FrameSource", "VideoSink", "open_source"]


@dataclass
class FrameSource:
    """Decoded frames of a video or a frame folder, one at a time.

    Attributes:
        frames: iterator of float ``(3, H, W)`` frames in [0, 1].
        fps: the source frame rate (``None`` for a frame folder).
        length: number of frames, when known.
        name: the path, for messages.
        video: the video file's reader (``None`` for a frame folder): its time base, colour and audio are
            what a :class:`VideoSink` keeps.
        pts: with ``timed`` (see :func:`open_source`), the timestamps of the frames decoded and not yet
            written; a :class:`VideoSink` takes them one per frame it writes (a bounded queue: frames come
            out a few frames after they go in).
    """

    frames: Iterator[torch.Tensor]
    fps: Fraction | None
    length: int | None
    name: str
    video: object | None = None
    pts: deque | None = field(default=None, repr=False)
    bit_depth: int = 8  # above 8 (10-bit video, 16-bit PNGs): frames carry the extra precision


def _rgb(frame) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` (or uint16, a source above 8 bits) -> float ``(3, H, W)`` in [0, 1]."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint16:
        frame = expect_shape(
            torch.from_numpy(frame.astype(np.float32) / 65535.0), "(H, W, 3)", "an RGB frame"
        )
        return frame.permute(2, 0, 1)
    frame = expect_shape(torch.as_tensor(frame), "(H, W, 3)", "an RGB frame")
    return to_float_frames(frame, channels_last=True)


def open_source(path: str | os.PathLike, *, timed: bool = False) -> FrameSource:
    """Open a video file or a folder of frames for streaming decode (clear errors for bad input).

    ``timed``: record each decoded frame's timestamp in ``pts`` for a :class:`VideoSink` to write, which
    then keeps the source's timing (variable frame rate included). Only when every frame decoded is
    written in order (not when the frames are degraded into fewer).
    """
    from . import video_io
    from .image_io import list_frame_files, png_bit_depth, read_image, read_image16

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_dir():
        files = list_frame_files(path)
        deep = bool(files) and png_bit_depth(files[0]) == 16  # 16-bit PNGs stay 16-bit
        read = read_image16 if deep else read_image
        return FrameSource(
            frames=(_rgb(read(f)) for f in files),
            fps=None,
            length=len(files),
            name=str(path),
            bit_depth=16 if deep else 8,
        )
    reader = video_io.VideoReader(path)
    pts: deque | None = deque() if timed else None

    def frames() -> Iterator[torch.Tensor]:
        for frame, stamp in reader.iter_timed_frames(deep=True):  # 10-bit sources keep their precision
            if pts is not None:
                pts.append(stamp)
            yield _rgb(frame)

    return FrameSource(
        frames=frames(),
        fps=reader.fps,
        length=len(reader),
        name=str(path),
        video=reader,
        pts=pts,
        bit_depth=reader.bit_depth,
    )


class FolderSink:
    """Write frames as ``00000000.png``, ``00000001.png``, ... into a folder (16-bit PNGs with
    ``bit_depth`` above 8: a 16-bit or 10-bit source's restored frames keep their precision)."""

    def __init__(self, folder: str | os.PathLike, *, bit_depth: int = 8) -> None:
        self.folder = Path(folder)
        self.deep = bit_depth > 8
        self.count = 0

    def write(self, frame: torch.Tensor) -> None:
        """Write a float ``(3, H, W)`` frame in [0, 1] (rounded to 8 bits as the metrics round, or to 16)."""
        from PIL import Image

        if self.deep:
            from .image_io import write_png16

            deep = frame.detach().float().clamp(0, 1).mul(65535).round().to(torch.int32).permute(1, 2, 0)
            write_png16(self.folder / f"{self.count:08d}.png", deep.cpu().numpy().astype(np.uint16))
            self.count += 1
            return
        Image.fromarray(to_uint8_frames(frame, channels_last=True).cpu().numpy()).save(
            self.folder / f"{self.count:08d}.png"
        )
        self.count += 1

    def close(self) -> None:
        """Nothing to finish: every frame is a complete file."""


class VideoSink:
    """Encode frames into a video file with PyAV (the writer opens at the first frame, sized by it).

    Args:
        path: the output file (its extension picks the container).
        fps: the frame rate.
        codec, crf, pix_fmt, preset: as :class:`~s2svr_lightning.data.media.video_writer.VideoWriter`;
            odd frame sizes switch the default 4:2:0 to ``yuv444p`` (4:2:0 chroma needs even sizes).
        source: the :class:`FrameSource` the frames come from: a video source's timestamps (when opened
            ``timed``), colour description, display matrix (rotation), sample aspect ratio, language and
            title tags and, with ``audio``, its audio streams are kept.
        audio: carry the source's audio (copied where the container allows, else re-encoded).
        audio_codec: re-encode the audio with this codec.
        trim_audio: cut the audio at the last frame's end (the frames were cut short).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: Fraction,
        *,
        codec: str | None = None,
        crf: int | None = None,
        pix_fmt: str | None = None,
        preset: str | None = None,
        source: FrameSource | None = None,
        audio: bool = True,
        audio_codec: str | None = None,
        trim_audio: bool = False,
    ) -> None:
        self.path, self.fps = Path(path), fps
        self.kwargs = {"codec": codec, "crf": crf, "pix_fmt": pix_fmt, "preset": preset}
        self.source = source
        self.audio, self.audio_codec, self.trim_audio = audio, audio_codec, trim_audio
        self.writer = None
        self.count = 0

    def _open(self, height: int, width: int):
        from .video_writer import VideoWriter

        kwargs = {k: v for k, v in self.kwargs.items() if v is not None}
        video = self.source.video if self.source is not None else None
        if "pix_fmt" not in kwargs and kwargs.get("codec", "libx264") in ("libx264", "libx265"):
            kwargs["pix_fmt"] = "yuv444p" if height % 2 or width % 2 else "yuv420p"
            if video is not None and getattr(video, "bit_depth", 8) > 8:  # a 10-bit source stays 10-bit
                kwargs["pix_fmt"] += "10le"
        if video is not None:
            if self.source.pts is not None:
                kwargs["time_base"] = video.time_base
            kwargs["color"] = video.color
            from .metadata import read_metadata

            kwargs["metadata"] = read_metadata(video.path)  # rotation, aspect ratio, tags
            if self.audio and video.has_audio:
                kwargs.update(audio_from=video.path, audio_codec=self.audio_codec, trim_audio=self.trim_audio)
        writer = VideoWriter(self.path, self.fps, **kwargs)
        writer.__enter__()
        return writer

    def write(self, frame: torch.Tensor) -> None:
        """Encode a float ``(3, H, W)`` frame in [0, 1] (at the source's timestamp for a timed source)."""
        if self.writer is None:
            self.writer = self._open(*frame.shape[-2:])
        pts = self.source.pts if self.source is not None else None
        if not self.writer.deep:
            frame = to_uint8_frames(frame, channels_last=True).cpu().numpy()
        self.writer.write(frame, pts=pts.popleft() if pts else None)  # deep: float in, 16-bit RGB on
        self.count += 1

    def close(self) -> None:
        """Finish the stream (flush the encoder, the rest of the audio, write the trailer)."""
        if self.writer is not None:
            self.writer.__exit__(None, None, None)
            self.writer = None
