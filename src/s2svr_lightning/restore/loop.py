"""One stream restored: frames decoded, restored, scored and encoded one at a time, in constant memory.

:func:`restore_stream` is the loop behind :func:`~s2svr_lightning.restore.run.restore_video`: frames are
decoded one at a time, pushed through :class:`~s2svr_lightning.restore.stream.StreamingRestorer` (output
``t`` is final once input ``t + r`` has arrived), scored against the reference when there is one and
encoded as soon as they come out, so memory does not grow with the length of the video.

Given a :class:`Span`, it restores one time segment of the video for
:mod:`~s2svr_lightning.restore.segments`: the LQ frames from ``span.first`` on are fed (up to
``span.stop`` plus the restorer's latency, the look-ahead the frames before ``stop`` need), the frames
``span.start`` to ``span.stop - 1`` are written and scored, the others are restored and dropped. The
segment is written losslessly (FFV1 RGB, 16 bits for sources above 8; or PNGs) with no audio; the
source timestamps of its frames are returned for the pass that joins the segments.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..data.media.frames import FolderSink, FrameSource, VideoSink, open_source
from ..data.media.video_writer import bit_depth
from ..task import Task
from .options import RestoreOptions
from .stream import StreamingRestorer

__all__ = [
    "RestoreSummary",
    "Span",
    "deep_output",
    "degraded_offset",
    "fit_reference",
    "output_fps",
    "progress_bar",
    "restore_stream",
]

DEFAULT_FOLDER_FPS = Fraction(25)
T = TypeVar("T")


@dataclass
class RestoreSummary:
    """What a run did: frames written, wall time, and the scores when a reference was given."""

    frames: int
    seconds: float
    output: str
    video_fps: float | None = None
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    baseline_psnr: list[float] = field(default_factory=list)
    baseline_ssim: list[float] = field(default_factory=list)
    warp_error: list[float] = field(default_factory=list)  # RestoreOptions.temporal
    tof: list[float] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Restored frames per second of wall time."""
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    def metrics(self) -> dict[str, Any]:
        """``{"psnr", "ssim", "baseline_psnr", "baseline_ssim", "frames", "fps", ...}``; means over frames."""

        def mean(v: list[float]) -> float | None:
            return float(sum(v) / len(v)) if v else None

        return {
            "psnr": mean(self.psnr),
            "ssim": mean(self.ssim),
            "baseline_psnr": mean(self.baseline_psnr),
            "baseline_ssim": mean(self.baseline_ssim),
            "frames": self.frames,
            "fps": self.fps,
            "seconds": self.seconds,
            "video_fps": self.video_fps,
            "per_frame_psnr": list(self.psnr),
            **({"warp_error": mean(self.warp_error), "tof": mean(self.tof)} if self.warp_error else {}),
            **({"per_frame_warp_error": list(self.warp_error)} if self.warp_error else {}),
        }


@dataclass(frozen=True)
class Span:
    """A time segment of a video, in LQ frames: restored from ``first``, written from ``start`` to
    ``stop - 1`` (``first <= start < stop``; the frames before ``start`` are the segment's warm-up)."""

    first: int
    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.first <= self.start < self.stop:
            raise ValueError(f"expected 0 <= first <= start < stop, got {self}")


def degraded_offset(task: Task, first: int, chunk: int) -> tuple[int, int]:
    """``(hq_skip, lq_skip)``: to make LQ frames from ``first`` on as a degraded whole video makes them,
    skip ``hq_skip`` HQ frames, degrade the rest, and drop the first ``lq_skip`` LQ frames.

    Deblurring: LQ frame i blurs the HQ frames from ``i * stride`` on. Compressed video: HEVC streams of
    ``chunk`` frames from frame 0, so the stream holding ``first`` is compressed whole. Otherwise frame i
    is made from frame i alone.
    """
    if task.kind == "cve":
        start = first - first % chunk
        return start, first - start
    return first * task.frame_span[1], 0


def output_fps(opts: RestoreOptions, source: FrameSource, task: Task) -> Fraction:
    """The output's frame rate: ``opts.fps``, else the source's (25 for frame folders), divided by the
    blur stride when ``degrade`` makes one deblurring input from several frames."""
    fps = Fraction(opts.fps).limit_denominator(1001 * 1000) if opts.fps is not None else source.fps
    if fps is None:
        fps = DEFAULT_FOLDER_FPS
    if opts.degrade:
        fps = fps / task.frame_span[1]
    return fps


def deep_output(opts: RestoreOptions, source: FrameSource) -> bool:
    """Whether the output video keeps more than 8 bits, as :class:`VideoSink` decides: a source above 8
    bits encoded with x264 / x265 at their default pixel format, or a pixel format above 8 bits."""
    if source.bit_depth <= 8:
        return False
    if opts.pix_fmt is not None:
        return bit_depth(opts.pix_fmt) > 8
    return (opts.codec or "libx264") in ("libx264", "libx265")


def fit_reference(ref: torch.Tensor, size: tuple[int, int], scale: int, name: str) -> torch.Tensor:
    """Mod-crop a reference frame to the output size (the benchmarks crop HQ to a multiple of the scale)."""
    h, w = ref.shape[-2:]
    if (h, w) == size:
        return ref
    if size[0] <= h < size[0] + scale and size[1] <= w < size[1] + scale:
        return ref[..., : size[0], : size[1]]
    raise ValueError(f"expected reference frames of size {size[0]}x{size[1]} in {name}, got {h}x{w}")


def restore_stream(
    net_and_task: tuple[Any, Task],
    input: Path,
    target: Path,
    opts: RestoreOptions,
    *,
    is_dir: bool,
    reference: Path | None = None,
    span: Span | None = None,
    tick: Callable[[], None] | None = None,
) -> tuple[RestoreSummary, list[int | None]]:
    """Restore ``input`` into ``target`` (a video file, or a PNG folder with ``is_dir``) in one stream.

    Returns the summary and, for a ``span``, the source timestamps of the frames written (None where the
    output is not timed by the source). ``tick`` is called once per frame written.
    """
    from ..metrics import psnr, ssim

    net, task = net_and_task
    max_frames, degrade = opts.max_frames, opts.degrade
    # frame i out is frame i in: a video keeps the source's timestamps unless retimed or degraded
    source = open_source(input, timed=opts.fps is None and not degrade and not is_dir)
    first = span.first if span is not None else 0
    pairs: Iterator[tuple[torch.Tensor, torch.Tensor | None]]
    if degrade:
        hq_skip, lq_skip = degraded_offset(task, first, opts.degrade_chunk)
        pairs = task.degrade_stream(_skip(source.frames, hq_skip), chunk=opts.degrade_chunk)
        pairs = itertools.islice(pairs, lq_skip, None)
    else:
        if reference is not None:
            pairs = _zip_reference(source.frames, open_source(reference))
        else:
            pairs = ((f, None) for f in source.frames)
        pairs = _skip(pairs, first, source.pts)
    restorer = StreamingRestorer(net, **opts.stream_kwargs())
    end = None if span is None else span.stop + restorer.latency  # the look-ahead of frame stop - 1
    if max_frames is not None:
        end = max_frames if end is None else min(end, max_frames)
    if end is not None:
        pairs = itertools.islice(pairs, max(end - first, 0))
    total = source.length
    if degrade and total is not None:
        total = task.degraded_length(total)
    if max_frames is not None:
        total = max_frames if total is None else min(total, max_frames)

    video_fps = output_fps(opts, source, task)
    summary = RestoreSummary(frames=0, seconds=0.0, output=str(target), video_fps=float(video_fps))
    scored = degrade or reference is not None
    pending: deque[tuple[torch.Tensor | None, torch.Tensor | None]] = deque()
    stamps: list[int | None] = []
    temporal = None
    if scored and opts.temporal != "off":  # warping error / tOF of consecutive frames
        from ..flow_estimators import flow_estimator
        from ..temporal import PairStream

        temporal = PairStream(
            mode=opts.temporal,
            estimator=flow_estimator(opts.flow),
            y_channel=task.y_channel,
            border=task.border,
        )

    if is_dir:
        sink: FolderSink | VideoSink = FolderSink(target, bit_depth=source.bit_depth)
    elif span is not None:  # a segment, joined later: lossless RGB, at the depth the output will have
        pix_fmt = "gbrp16le" if deep_output(opts, source) else None
        sink = VideoSink(target, video_fps, codec="ffv1", pix_fmt=pix_fmt)
    else:
        sink = VideoSink(
            target,
            video_fps,
            source=source,
            audio=opts.audio and opts.fps is None,
            trim_audio=max_frames is not None,
            **opts.encoder_kwargs(),
        )
    bar = progress_bar(total, opts.progress, input.name)
    index = first  # the LQ frame that comes out next
    start = time.perf_counter()
    try:

        def emit(restored: torch.Tensor) -> None:
            nonlocal index
            lq, ref = pending.popleft()
            index += 1
            if span is not None:
                stamp = source.pts.popleft() if source.pts else None
                if not span.start <= index - 1 < span.stop:  # warm-up, or look-ahead past the segment
                    return
                stamps.append(stamp)
            restored = restored.detach().float().cpu()
            if restored.dim() == 4:
                restored = restored[0]
            sink.write(restored)
            if scored and ref is not None:
                size = tuple(restored.shape[-2:])
                ref = fit_reference(ref, size, task.scale, "the reference")
                base = task.baseline(lq)
                kw = {"y_channel": task.y_channel, "border": task.border}
                summary.psnr.append(float(psnr(restored, ref, **kw)[0]))
                summary.ssim.append(float(ssim(restored, ref, **kw)[0]))
                summary.baseline_psnr.append(float(psnr(base, ref, **kw)[0]))
                summary.baseline_ssim.append(float(ssim(base, ref, **kw)[0]))
                pair = temporal.push(restored, ref) if temporal is not None else None
                if pair is not None:
                    summary.warp_error.append(pair["warp_error"])
                    summary.tof.append(pair["tof"])
            summary.frames += 1
            if tick is not None:
                tick()
            if bar is not None:
                bar.update(1)
                if summary.psnr:
                    bar.set_postfix(psnr=f"{summary.psnr[-1]:.2f}", refresh=False)

        for lq, ref in pairs:
            pending.append((lq if scored else None, ref))
            for restored in restorer.push(lq):
                emit(restored)
        for restored in restorer.flush():
            emit(restored)
        if summary.frames == 0:
            raise ValueError(f"expected at least one frame in {source.name}, got none")
    finally:
        sink.close()
        if bar is not None:
            bar.close()
    summary.seconds = time.perf_counter() - start
    return summary, stamps


def _skip(items: Iterable[T], n: int, pts: deque | None = None) -> Iterator[T]:
    """``items`` without the first ``n``, and their timestamps taken off ``pts`` (a timed source's)."""
    items = iter(items)
    for _ in range(n):
        if next(items, None) is None:
            return
        if pts:
            pts.popleft()
    yield from items


def _zip_reference(
    frames: Iterable[torch.Tensor], ref: FrameSource
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    ref_frames = iter(ref.frames)
    for i, lq in enumerate(frames):
        target = next(ref_frames, None)
        if target is None:
            raise ValueError(
                f"expected the reference {ref.name} to have as many frames as the input, got only {i}"
            )
        yield lq, target


def progress_bar(total: int | None, enabled: bool, name: str):
    """A tqdm bar of frames on stderr, or None when not ``enabled``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="frame", desc=name, dynamic_ncols=True, file=sys.stderr)
