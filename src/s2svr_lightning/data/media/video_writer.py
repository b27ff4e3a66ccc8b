"""Writing video files with PyAV: codec, quality and pixel format, the source's timing, colour and sound.

:class:`VideoWriter` encodes uint8 RGB frames. Beyond a frame rate it can keep what a restored video
should keep of its source:

- timing: each frame's presentation timestamp in the source's time base (``time_base`` and
  ``write(frame, pts=...)``), so variable frame rate and start offsets survive;
- colour: the source's matrix, range, primaries and transfer (:class:`VideoColor`): the RGB frames are
  converted back to YUV with the matrix and range the decoder used to make them, and tagged as the
  source was, so the numbers and their meaning both match the source;
- sound: every audio stream of ``audio_from`` (copied, or re-encoded where the container refuses the
  codec; :class:`~s2svr_lightning.data.media.audio.AudioCarrier`), interleaved with the frames;
- how to show it and what it is (:class:`SourceMetadata`): the display matrix (a phone video's
  rotation: its frames are stored sideways and the player turns them), the sample aspect ratio, and the
  language and title tags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ...utils import expect_shape, to_uint8_frames

__all__ = ["CODEC_PIX_FMT", "SourceMetadata", "VideoColor", "VideoWriter", "bit_depth"]

# the tags a restored copy keeps: what the video is, not how the source was encoded (encoder, brands)
STREAM_TAGS = ("language", "title", "handler_name")
CONTAINER_TAGS = ("title", "comment", "language", "creation_time", "location")

# default pixel format per codec: 4:2:0 for delivery codecs; FFV1 stores RGB, bit-exact
CODEC_PIX_FMT = {"ffv1": "bgr0"}
_RGB_FORMATS = ("rgb24", "bgr24", "gbrp", "bgr0", "rgb0")


@dataclass(frozen=True)
class VideoColor:
    """A stream's colour description, as FFmpeg's ``AVColorSpace`` / range / primaries / transfer codes
    (range: 0 unspecified, 1 limited, 2 full; the others: 2 unspecified, 1 BT.709, ...).

    Read one with :meth:`from_stream`; :class:`VideoWriter` converts with it and tags with it.
    """

    colorspace: int = 2
    color_range: int = 0
    color_primaries: int = 2
    color_trc: int = 2

    @classmethod
    def from_stream(cls, stream) -> VideoColor:
        """The colour fields of a PyAV video stream's codec context (what the demuxer and parser found)."""
        ctx = stream.codec_context
        # a yuvj (full-range) source is decoded with full-range math, and re-encoded (not to yuvj) with
        # limited-range math: the output's numbers are then limited range, whatever the source's tag
        full = (ctx.pix_fmt or "").startswith("yuvj")
        return cls(
            colorspace=int(getattr(ctx, "colorspace", 2)),
            color_range=1 if full else int(getattr(ctx, "color_range", 0)),
            color_primaries=int(getattr(ctx, "color_primaries", 2)),
            color_trc=int(getattr(ctx, "color_trc", 2)),
        )

    def tag(self, target) -> None:
        """Set the fields on a codec context or a frame (fields the installed PyAV lacks are skipped)."""
        for name in ("colorspace", "color_range", "color_primaries", "color_trc"):
            if hasattr(target, name):
                setattr(target, name, getattr(self, name))


@dataclass(frozen=True)
class SourceMetadata:
    """What a source video carries besides its pixels, timing and colour, for the restored copy.

    display_matrix: FFmpeg's 3x3 display matrix (9 ints, ``AV_PKT_DATA_DISPLAYMATRIX``): rotation and
        flips a player applies; phones store portrait video as landscape frames with a 90 degree matrix.
        The frames are decoded as stored, so writing the same matrix shows the output as the source.
    sample_aspect_ratio: the pixels' shape (anamorphic video); unchanged by an integer upscale.
    stream_tags, container_tags: ``(key, value)`` pairs of :data:`STREAM_TAGS` / :data:`CONTAINER_TAGS`.
    """

    display_matrix: tuple[int, ...] | None = None
    sample_aspect_ratio: Fraction | None = None
    stream_tags: tuple[tuple[str, str], ...] = ()
    container_tags: tuple[tuple[str, str], ...] = ()

    def apply(self, container, stream) -> None:
        """Set it on an output container and its video stream, before the first frame is encoded."""
        if self.display_matrix is not None:
            stream.set_display_matrix(list(self.display_matrix))
        if self.sample_aspect_ratio is not None:
            stream.codec_context.sample_aspect_ratio = self.sample_aspect_ratio
        for key, value in self.stream_tags:
            stream.metadata[key] = value
        for key, value in self.container_tags:
            container.metadata[key] = value


def bit_depth(pix_fmt: str | None) -> int:
    """Bits per sample of a pixel format (``yuv420p10le``: 10; unknown: 8)."""
    import av

    try:
        return max(int(c.bits) for c in av.VideoFormat(pix_fmt).components)
    except (TypeError, ValueError, AttributeError):
        return 8


class VideoWriter:
    """Encode uint8 RGB frames into a video file with PyAV (a context manager).

    Args:
        path: output file; the container follows the extension (.mp4, .mkv, .avi, .mov, ...).
        fps: frame rate, stored exactly: an int or ``Fraction`` (a float is rounded to the nearest
            fraction with denominator <= 1001, which maps 29.97002997 to 30000/1001).
        codec: encoder (``libx264``, ``libx265``, ``mpeg4``, ``mjpeg``, ``ffv1``, ...).
        crf: constant rate factor for x264/x265/SVT-AV1/VPx (default 18 for x264/x265, visually
            lossless; lower is better, 0 is lossless).
        pix_fmt: pixel format of the encoded stream (``yuv420p`` needs even sizes); default
            :data:`CODEC_PIX_FMT` for the codec, else ``yuv420p``.
        preset: x264/x265 speed preset (``medium`` when not given, the encoders' own default).
        options: extra encoder options.
        time_base: time base of the ``pts`` given to :meth:`write` (a source's); default ``1 / fps``.
        color: colour description to convert with and tag (a source's); default untagged (BT.601 matrix).
        metadata: display matrix, sample aspect ratio and tags to write (a source's).
        audio_from: a file whose audio streams are carried into the output.
        audio_codec: re-encode the audio with this codec instead of copying it.
        trim_audio: cut the audio at the end of the last frame (for a video cut short).
    """

    _CRF_CODECS = ("libx264", "libx265", "libsvtav1", "libvpx", "libvpx-vp9", "libaom-av1")
    _PRESET_CODECS = ("libx264", "libx265")

    def __init__(
        self,
        path: str | os.PathLike,
        fps: int | float | Fraction,
        *,
        codec: str = "libx264",
        crf: int | None = None,
        pix_fmt: str | None = None,
        preset: str | None = None,
        options: dict[str, str] | None = None,
        time_base: Fraction | None = None,
        color: VideoColor | None = None,
        metadata: SourceMetadata | None = None,
        audio_from: str | os.PathLike | None = None,
        audio_codec: str | None = None,
        trim_audio: bool = False,
    ) -> None:
        if isinstance(fps, float):
            fps = Fraction(fps).limit_denominator(1001)
        fps = Fraction(fps)
        if fps <= 0:
            raise ValueError(f"expected a positive frame rate, got {fps}")
        if crf is not None and codec not in self._CRF_CODECS:
            raise ValueError(f"expected crf only for codecs {self._CRF_CODECS}, got crf={crf} for {codec}")
        if preset is not None and codec not in self._PRESET_CODECS:
            raise ValueError(
                f"expected preset only for codecs {self._PRESET_CODECS}, got {preset} for {codec}"
            )
        if crf is None and codec in ("libx264", "libx265"):
            crf = 18
        self.path, self.fps, self.codec, self.crf = Path(path), fps, codec, crf
        self.pix_fmt = pix_fmt or CODEC_PIX_FMT.get(codec, "yuv420p")
        self.preset = preset
        self.options = dict(options or {})
        self.time_base = Fraction(time_base) if time_base is not None else 1 / fps
        self.color = color or VideoColor()
        self.metadata = metadata
        # an RGB stream is tagged RGB (matrix 0, no range); primaries and transfer still describe it
        rgb = self.pix_fmt in _RGB_FORMATS
        # above 8 bits (yuv420p10le, ...): frames go in as 16-bit RGB, so a float frame keeps its precision
        self.deep = not rgb and bit_depth(self.pix_fmt) > 8
        self._tags = replace(self.color, colorspace=0, color_range=0) if rgb else self.color
        self.audio_from = Path(audio_from) if audio_from is not None else None
        self.audio_codec = audio_codec
        self.trim_audio = bool(trim_audio)
        self._step = max(1, round(1 / (fps * self.time_base)))  # one frame, in time-base units
        self._container = None
        self._stream = None
        self._audio = None
        self._last_pts: int | None = None
        self.count = 0

    def _start(self, height: int, width: int) -> None:
        import av

        if self.pix_fmt in ("yuv420p", "yuvj420p", "nv12") and (height % 2 or width % 2):
            raise ValueError(
                f"expected even frame sizes for pix_fmt {self.pix_fmt}, got {height}x{width} "
                "(crop the frames or use pix_fmt='yuv444p')"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._container = av.open(str(self.path), mode="w")
            stream = self._container.add_stream(self.codec, rate=self.fps)
            stream.width, stream.height, stream.pix_fmt = width, height, self.pix_fmt
            stream.time_base = stream.codec_context.time_base = self.time_base
            self._tags.tag(stream.codec_context)
            if self.metadata is not None:
                self.metadata.apply(self._container, stream)
        except Exception as err:
            self._abort()
            raise ValueError(
                f"cannot write {self.path} with codec {self.codec} and pix_fmt {self.pix_fmt}: {err}"
            ) from None
        if self.audio_from is not None:
            from .audio import AudioCarrier

            try:
                self._audio = AudioCarrier(self.audio_from, self._container, codec=self.audio_codec)
            except BaseException:
                self._abort()
                raise
        options = dict(self.options)
        if self.crf is not None:
            options.setdefault("crf", str(self.crf))
        if self.codec in self._PRESET_CODECS:
            options.setdefault("preset", self.preset or "medium")
        stream.options = options
        self._stream = stream

    def write(self, frame: np.ndarray | torch.Tensor, *, pts: int | None = None) -> None:
        """Append one frame: uint8 ``(H, W, 3)`` (numpy or torch) or float ``(3, H, W)`` in [0, 1]; for a
        pix_fmt above 8 bits, also uint16 ``(H, W, 3)`` (a float frame is then rounded to 16 bits, not 8).

        ``pts``: its presentation time in ``time_base`` units (default: one frame after the previous; a
        missing or non-increasing one is replaced so too, as the muxer needs increasing timestamps).
        """
        import av

        if isinstance(frame, torch.Tensor):
            if frame.is_floating_point():
                expect_shape(frame, "(3, H, W)", "a float frame")
                if self.deep:
                    frame = frame.detach().float().clamp(0, 1).mul(65535).round().to(torch.int32)
                    frame = frame.permute(1, 2, 0).cpu().numpy().astype(np.uint16)
                else:
                    frame = to_uint8_frames(frame, channels_last=True)
            if isinstance(frame, torch.Tensor):
                frame = frame.detach().cpu().numpy()
        frame = np.asarray(frame)
        dtypes = (np.uint8, np.uint16) if self.deep else (np.uint8,)
        if frame.dtype not in dtypes or frame.ndim != 3 or frame.shape[2] != 3:
            kinds = "a uint8 or uint16" if self.deep else "a uint8"
            raise ValueError(f"expected {kinds} frame (H, W, 3), got {frame.dtype} {frame.shape}")
        if self.deep and frame.dtype == np.uint8:
            frame = frame.astype(np.uint16) * 257  # 255 -> 65535
        if self._stream is None:
            self._start(*frame.shape[:2])
        if frame.shape[:2] != (self._stream.height, self._stream.width):
            raise ValueError(
                f"expected frames of {self._stream.height}x{self._stream.width} like the first, got "
                f"{frame.shape[0]}x{frame.shape[1]}"
            )
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            pts = 0 if self._last_pts is None else self._last_pts + self._step
        fmt = "rgb48le" if frame.dtype == np.uint16 else "rgb24"
        video_frame = self._convert(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=fmt))
        video_frame.pts = pts
        video_frame.time_base = self.time_base
        self._container.mux(self._stream.encode(video_frame))
        self._last_pts = pts
        self.count += 1
        if self._audio is not None:
            self._audio.advance(float(pts * self.time_base))

    def _convert(self, frame):
        """RGB -> the stream's pixel format with the colour matrix the source's decoder used (BT.601 when
        untagged), then tagged with the source's description. The range is the one the decoder assumed
        too: PyAV converts with limited-range math (full for the ``yuvj`` formats) whatever the tag, so the
        output's numbers are the source's and the source's range tag still holds."""
        if self.pix_fmt not in _RGB_FORMATS:
            space = self.color.colorspace if self.color.colorspace not in (0, 2) else None
            frame = frame.reformat(format=self.pix_fmt, dst_colorspace=space)
        self._tags.tag(frame)
        return frame

    def close(self) -> None:
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))
            if self._audio is not None:
                end = float((self._last_pts + self._step) * self.time_base) if self.trim_audio else None
                self._audio.advance(end, drop_after=self.trim_audio)
        finally:
            self._abort()

    def _abort(self) -> None:
        if self._audio is not None:
            self._audio.close()
            self._audio = None
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
