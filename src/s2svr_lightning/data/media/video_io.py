"""Reading and writing video files, with random access that returns exactly the sequentially decoded frame.

Reading (:class:`VideoReader`) uses one of three backends per file (``"auto"``: ``"pyav"``, or
``"sequential"`` where seeking is unsafe):

- ``"pyav"``: PyAV seeking to the keyframe before the wanted frame and decoding up to it, matched by
  presentation timestamp from a packet index built at open; only the wanted frames are converted to RGB.
  A frame that does not turn up where the index says switches the file to sequential decoding.
- ``"decord"``: the field's random-access reader, on request, where it is known to be exact: H.264/H.265/
  MPEG-4/MJPEG in MP4, MOV or MKV, and intra-only codecs in AVI, when decord is installed and agrees with
  the container on the frame count. Not the default: for the same training windows (15 frames of
  1280x720 H.264 with a 1 s GOP) it took about 1.2x the CPU time of the PyAV path
  (``benchmarks/data_loading.py``, layouts ``paired`` and ``paired_decord``).
- ``"sequential"``: decode from the start (or from where the previous read stopped). Always exact, and
  the only safe choice for AVI files with inter-frame codecs, whose timestamps are garbled: decord returns
  wrong frames there (dmlc/decord#252) and PyAV's seeking fails too.

Writing (:class:`~s2svr_lightning.data.media.video_writer.VideoWriter`, re-exported here) goes through PyAV
and stores the frame rate exactly (pass the reader's ``fps``, a ``Fraction``), and, given them, the
reader's ``time_base`` and per-frame timestamps (:meth:`VideoReader.iter_timed_frames`), ``color`` and
the file's audio. Missing, unreadable, truncated or corrupt files raise
:class:`~s2svr_lightning.data.DatasetError` naming the file.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError, file_error
from .decoder_fork import DECODER_HANDLES, open_readers
from .image_io import frames_to_tensor, list_frame_files, read_image
from .store import Crop, FrameStore
from .video_writer import VideoColor, VideoWriter, bit_depth

__all__ = [
    "VIDEO_EXTENSIONS",
    "is_video_file",
    "VideoReader",
    "VideoWriter",
    "VideoStore",
    "list_frame_files",
    "read_image",
    "decord_available",
    "bit_depth",
]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")
BACKENDS = ("auto", "decord", "pyav", "sequential")

# where decord's random access is exact (checked frame by frame against sequential decoding)
_DECORD_CONTAINERS = {"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm"}
_DECORD_CODECS = {"h264", "hevc", "mpeg4", "mjpeg"}


def is_video_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except Exception:  # ImportError, or a broken native library
        return False
    return True


class _SeekFailed(Exception):
    pass


class VideoReader:
    """Frames of a video file as uint8 RGB ``(H, W, 3)``, by index or in a stream.

    Args:
        path: the video file.
        backend: ``"auto"`` (see the module docstring), ``"decord"``, ``"pyav"`` or ``"sequential"``.
            ``"decord"`` and ``"pyav"`` are honoured only where exact; elsewhere the reader uses
            sequential decoding.
        threads: decoder threads (0: the library's choice).

    Attributes:
        fps: frame rate as a ``Fraction`` (exact, e.g. 30000/1001; the average for variable rates).
        time_base: the video stream's time base (the unit of :meth:`iter_timed_frames`' timestamps).
        color: the stream's colour description (:class:`~s2svr_lightning.data.media.video_writer.VideoColor`).
        has_audio: the file has audio streams.
        size: ``(H, W)``.
        backend: the backend in use for random access.

    Readers open files lazily, can be pickled, and reopen their files in a forked process (a DataLoader
    worker started by fork or spawn decodes with decoders of its own).
    """

    def __init__(self, path: str | os.PathLike, *, backend: str = "auto", threads: int = 0) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"expected backend in {BACKENDS}, got {backend!r}")
        self.path = Path(path)
        self.requested_backend = backend
        self.threads = int(threads)
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: video file not found")
        self._container = None
        self._decord = None
        self._iter = None  # (decoder iterator, index of the next frame) for sequential reads
        self._seek_iter = None  # (decoder iterator, pts of the last frame) for pyav reads
        self._index: tuple[list[int] | None, list[int] | None, int] | None = None
        self._seq_container = None
        self._scaler = None
        open_readers.add(self)
        self._probe()

    def _rgb(self, frame, deep: bool = False) -> np.ndarray:
        """A decoded frame as uint8 RGB ``(H, W, 3)`` (``deep``: uint16, for sources above 8 bits), through
        this reader's own scaler: one per reader, on one thread, never PyAV's per-thread cache, so no
        scaler with slice threads crosses a fork."""
        if self._scaler is None:
            from av.video.reformatter import VideoReformatter

            self._scaler = VideoReformatter()
        fmt = "rgb48le" if deep else "rgb24"
        try:
            rgb = self._scaler.reformat(frame, format=fmt, threads=1)
        except TypeError:  # PyAV before `threads` (< 14): its scalers have no slice threads
            rgb = self._scaler.reformat(frame, format=fmt)
        return rgb.to_ndarray()

    # -- probing -------------------------------------------------------------------------------------
    def _open(self):
        import av

        try:
            container = av.open(str(self.path), mode="r")
        except Exception as err:  # av.error.*: unreadable, truncated header, not a video
            raise file_error(self.path, "cannot open video: corrupt, truncated or not a video", err) from None
        if not container.streams.video:
            container.close()
            raise DatasetError(f"{self.path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if self.threads:
            stream.codec_context.thread_count = self.threads
        return container

    def _probe(self) -> None:
        container = self._open()
        try:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise DatasetError(f"{self.path}: no frame rate in the video stream")
            self.fps = Fraction(rate)
            ctx = stream.codec_context
            self.size = (int(ctx.height), int(ctx.width))
            if self.size[0] <= 0 or self.size[1] <= 0:
                raise DatasetError(f"{self.path}: video stream has no frame size")
            self.codec = ctx.codec.name
            self.time_base = Fraction(stream.time_base) if stream.time_base else 1 / self.fps
            self.color = VideoColor.from_stream(stream)
            self.bit_depth = bit_depth(ctx.pix_fmt)
            self.has_audio = bool(container.streams.audio)
            self.intra_only = bool(getattr(ctx.codec, "intra_only", False))
            self.container_format = container.format.name
            self._header_frames = int(stream.frames or 0)
            self._duration = (
                float(container.duration) / 1_000_000
                if container.duration and len(container.streams) == 1
                else None
            )
        finally:
            container.close()
        is_avi = self.container_format == "avi"
        random_ok = not is_avi or self.intra_only
        backend = self.requested_backend
        if backend == "auto":
            backend = "pyav"
        if backend == "decord" and not self._decord_suits():
            backend = "pyav"
        if backend == "pyav" and not random_ok:
            backend = "sequential"
        self.backend = backend

    def _decord_suits(self) -> bool:
        if not decord_available():
            return False
        formats = set(self.container_format.split(","))
        if "avi" in formats:
            return self.intra_only
        return bool(formats & _DECORD_CONTAINERS) and self.codec in _DECORD_CODECS

    def _build_index(self) -> tuple[list[int] | None, list[int] | None, int]:
        """Demux every packet (no decoding): presentation timestamps in order, keyframe timestamps, count.

        Also the truncation check: the count must match the header's frame count or the duration.
        """
        if self._index is not None:
            return self._index
        container = self._open()
        pts, keys = [], []
        count = 0
        try:
            stream = container.streams.video[0]
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                count += 1
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        except Exception as err:
            raise file_error(self.path, f"corrupt or truncated video after {count} frames", err) from None
        finally:
            container.close()
        if count == 0:
            raise DatasetError(f"{self.path}: no video frames")
        if self._header_frames and count != self._header_frames:
            raise DatasetError(
                f"{self.path}: truncated or corrupt video: the header says {self._header_frames} frames, "
                f"the file holds {count}"
            )
        if self._duration is not None:
            expected = self._duration * float(self.fps)
            if count < expected - max(2.0, 0.02 * expected):
                raise DatasetError(
                    f"{self.path}: truncated video: {count} frames for a duration of {self._duration:.2f} s "
                    f"at {float(self.fps):.3f} fps (about {expected:.0f} frames)"
                )
        if any(p is None for p in pts) or None in keys or len(set(pts)) != len(pts):
            self._index = (None, None, count)
        else:
            self._index = (sorted(pts), sorted(keys), count)
        if self._index[0] is None and self.backend == "pyav":
            self.backend = "sequential"
        return self._index

    def __len__(self) -> int:
        return self._build_index()[2]

    def __repr__(self) -> str:
        return (
            f"VideoReader({str(self.path)!r}, {self.size[1]}x{self.size[0]}, fps={self.fps}, "
            f"codec={self.codec}, backend={self.backend})"
        )

    # -- reading -------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> np.ndarray:
        return self.get_frames([index])[0]

    def get_frames(self, indices: Sequence[int], crop: Crop | None = None) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``(N, H, W, 3)``, or their
        ``crop = (top, left, height, width)`` region ``(N, height, width, 3)``.

        Each frame is cropped as it is decoded, so only the crops are copied into the result.
        """
        indices = [int(i) for i in indices]
        n = len(self)
        for i in indices:
            if not 0 <= i < n:
                raise IndexError(f"frame {i} out of range for {self.path} with {n} frames")
        top, left, h, w = crop if crop is not None else (0, 0, *self.size)
        if top < 0 or left < 0 or h < 1 or w < 1 or top + h > self.size[0] or left + w > self.size[1]:
            raise ValueError(f"expected a crop inside the {self.size[0]}x{self.size[1]} frames, got {crop}")
        if not indices:
            return np.zeros((0, h, w, 3), dtype=np.uint8)
        wanted = sorted(set(indices))
        if self.backend == "decord":
            frames = self._decord_get(wanted)
        elif self.backend == "pyav":
            try:
                frames = self._pyav_get(wanted)
            except _SeekFailed:
                self.backend = "sequential"
                self._close_seek()
                frames = self._sequential_get(wanted)
        else:
            frames = self._sequential_get(wanted)
        if crop is not None:
            frames = [f[top : top + h, left : left + w] for f in frames]
        if wanted == indices and isinstance(frames, np.ndarray) and crop is None:
            return frames  # decord's batch, already in order
        by_index = dict(zip(wanted, frames))
        return np.stack([by_index[i] for i in indices])

    def iter_frames(self) -> Iterator[np.ndarray]:
        """Every frame in order, decoded sequentially (bounded memory: one frame at a time)."""
        for frame, _ in self.iter_timed_frames():
            yield frame

    def iter_timed_frames(self, *, deep: bool = False) -> Iterator[tuple[np.ndarray, int | None]]:
        """Every frame in order with its presentation timestamp in :attr:`time_base` units (``None`` where
        the file has none), decoded sequentially. ``deep``: a source above 8 bits (:attr:`bit_depth`)
        comes as uint16 RGB, so its extra precision survives (8-bit sources stay uint8)."""
        container = self._open()
        count = 0
        deep = deep and self.bit_depth > 8
        try:
            for frame in container.decode(video=0):
                count += 1
                yield self._rgb(frame, deep), frame.pts
        except Exception as err:
            raise file_error(self.path, f"cannot decode frame {count}", err) from None
        finally:
            container.close()

    def _decord_get(self, wanted: list[int]) -> np.ndarray:
        if self._decord is None:
            import decord

            try:
                self._decord = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.threads)
            except Exception as err:
                raise file_error(self.path, "decord cannot open video", err) from None
            if len(self._decord) != len(self):
                # decord disagrees with the container: do not trust its indexing
                self._decord = None
                self.backend = "pyav" if self._build_index()[0] is not None else "sequential"
                return self.get_frames(wanted)
        try:
            frames = self._decord.get_batch(wanted).asnumpy()
            self._decord.seek(0)  # releases decord's internal buffers (memory growth with get_batch)
        except Exception:
            # decord fails on some files PyAV reads (e.g. H.264 under 64 px wide: "The size must exactly
            # match"); PyAV's error, if it fails too, names the real problem
            self._decord = None
            self.backend = "pyav" if self._build_index()[0] is not None else "sequential"
            return self.get_frames(wanted)
        return frames

    def _pyav_get(self, wanted: list[int]) -> list[np.ndarray]:
        pts_list, key_pts, _ = self._build_index()
        if pts_list is None:
            raise _SeekFailed
        if self._container is None:
            self._container = self._open()
        stream = self._container.streams.video[0]
        out = []
        for index in wanted:
            target = pts_list[index]
            key = key_pts[max(0, bisect.bisect_right(key_pts, target) - 1)]
            it, last = self._seek_iter if self._seek_iter is not None else (None, None)
            # keep decoding forward if the target's keyframe has already been passed
            if it is None or last is None or target <= last or key > last:
                try:
                    self._container.seek(key, stream=stream, backward=True, any_frame=False)
                except Exception as err:
                    raise file_error(self.path, f"cannot seek to frame {index}", err) from None
                it, last = self._container.decode(stream), None
            found = None
            try:
                for frame in it:
                    if frame.pts is None:
                        raise _SeekFailed
                    last = frame.pts
                    if frame.pts == target:
                        found = self._rgb(frame)
                        break
                    if frame.pts > target:
                        raise _SeekFailed
            except _SeekFailed:
                raise
            except Exception as err:
                raise file_error(self.path, f"cannot decode frame {index}", err) from None
            if found is None:
                raise _SeekFailed
            self._seek_iter = (it, last)
            out.append(found)
        return out

    def _sequential_get(self, wanted: list[int]) -> list[np.ndarray]:
        out = []
        for index in wanted:
            it, pos = self._iter if self._iter is not None else (None, 0)
            if it is None or index < pos:
                self._close_seq()
                self._seq_container = self._open()
                it, pos = self._seq_container.decode(video=0), 0
            found = None
            try:
                for frame in it:
                    pos += 1
                    if pos - 1 == index:
                        found = self._rgb(frame)
                        break
            except Exception as err:
                raise file_error(self.path, f"cannot decode frame {pos}", err) from None
            if found is None:
                raise DatasetError(
                    f"{self.path}: truncated or corrupt video: decoded only {pos} of {len(self)} frames"
                )
            self._iter = (it, pos)
            out.append(found)
        return out

    # -- checks and cleanup ----------------------------------------------------------------------------
    def validate(self, full: bool = False) -> None:
        """Raise ``DatasetError`` if the file is truncated or undecodable: the packet index and the first and
        last frames (``full``: every frame, sequentially)."""
        n = len(self)
        if full:
            count = sum(1 for _ in self.iter_frames())
            if count != n:
                raise DatasetError(f"{self.path}: truncated or corrupt video: decoded {count} of {n} frames")
            return
        self.get_frames([0] if self.backend == "sequential" else [0, n - 1])

    def _close_seek(self) -> None:
        self._seek_iter = None
        if self._container is not None:
            self._container.close()
            self._container = None

    def _close_seq(self) -> None:
        self._iter = None
        container = getattr(self, "_seq_container", None)
        if container is not None:
            container.close()
            self._seq_container = None

    def close(self) -> None:
        self._close_seek()
        self._close_seq()
        self._decord = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in DECODER_HANDLES:
            state[name] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        open_readers.add(self)


class VideoStore(FrameStore):
    """A sequence backed by a video file (opened lazily, once per process).

    DataLoader workers reading it are started by ``forkserver``: a worker forked from a process that has
    decoded inherits decoder and scaler state whose threads stayed behind, and freeing it hangs (the fork
    hook above guards against what is known; a fresh process has nothing to guard)."""

    worker_start = "forkserver"

    def __init__(self, path: str | os.PathLike, *, backend: str = "auto") -> None:
        self.path = str(path)
        self.backend = backend
        self._reader: VideoReader | None = None

    def reader(self) -> VideoReader:
        if self._reader is None:
            self._reader = VideoReader(self.path, backend=self.backend)
        return self._reader

    def __len__(self) -> int:
        return len(self.reader())

    def size(self) -> tuple[int, int]:
        return self.reader().size

    def validate(self, verify: str = "header") -> None:
        if verify == "none":
            return
        self.reader().validate(full=verify == "full")

    def read(self, indices: Sequence[int], crop: Crop | None = None) -> torch.Tensor:
        return frames_to_tensor(self.reader().get_frames(list(indices), crop))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_reader"] = None
        return state
