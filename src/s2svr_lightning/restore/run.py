"""One input restored: a video of any length in, the restored video out, in constant memory.

Frames are decoded one at a time, pushed through :class:`~s2svr_lightning.restore.stream.StreamingRestorer`
(S2SVR's encoder is causal and its local attention looks ``r`` frames ahead, so output ``t`` is final
once input ``t + r`` has arrived) and encoded as soon as they come out: memory does not grow with the
length of the video, and the output equals a whole-sequence pass. The command line is
:mod:`~s2svr_lightning.restore.cli`; many inputs are :mod:`~s2svr_lightning.restore.batch`.

- INPUT: a video file (anything PyAV / decord reads) or a folder of frames (png, jpg, ...).
- OUTPUT: a video file (``.mp4``, ``.mkv``, ``.mov``, ``.avi``) or a folder of PNGs (a path without an
  extension). A video keeps the source's frame timestamps (variable frame rate included), colour
  description and audio streams (copied, or re-encoded where the container refuses the codec;
  ``audio=False`` drops them); H.264 at crf 18 in 4:2:0 by default, ``codec="ffv1"`` for lossless.
- The checkpoint of the restorer stage carries the task (``vsr`` / ``deblur`` / ``cve``), its scale,
  degradation and metric conventions and the network (builder name + overrides): nothing else is given.
- ``reference`` scores PSNR / SSIM against ground truth with the task's conventions
  (:mod:`s2svr_lightning.metrics`), next to a baseline: bicubic upsampling for SR, the input otherwise.
  ``degrade`` makes the LQ input from an HQ video with the task's degradation; INPUT is then the
  reference too.
- The output is written under a hidden temporary name in the output's folder and renamed when
  complete, so an interrupted run never leaves a file that looks finished; an existing output is
  refused unless ``overwrite``.
- :func:`export_to` writes one streaming step of the network for deployment instead.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from ..atomic import AtomicOutput
from ..checkpoint import load_restorer
from ..data.media.frames import FolderSink, FrameSource, VideoSink, open_source
from ..task import Task
from .export import export_step
from .options import RestoreOptions
from .stream import StreamingRestorer

__all__ = ["RestoreSummary", "export_to", "restore_video"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
DEFAULT_FOLDER_FPS = Fraction(25)


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


def _output_is_dir(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return False
    if suffix == "" or path.is_dir():
        return True
    raise ValueError(
        f"expected OUTPUT a video file ({', '.join(VIDEO_SUFFIXES)}) or a folder (no extension), got {path}"
    )


def _fit_reference(ref: torch.Tensor, size: tuple[int, int], scale: int, name: str) -> torch.Tensor:
    """Mod-crop a reference frame to the output size (the benchmarks crop HQ to a multiple of the scale)."""
    h, w = ref.shape[-2:]
    if (h, w) == size:
        return ref
    if size[0] <= h < size[0] + scale and size[1] <= w < size[1] + scale:
        return ref[..., : size[0], : size[1]]
    raise ValueError(f"expected reference frames of size {size[0]}x{size[1]} in {name}, got {h}x{w}")


def restore_video(
    ckpt: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    options: RestoreOptions | None = None,
    *,
    reference: str | os.PathLike | None = None,
    net_and_task: tuple[Any, Task] | None = None,
    **changes: Any,
) -> RestoreSummary:
    """Restore ``input`` into ``output`` frame by frame (the function behind the command line).

    ``options`` are the run's :class:`RestoreOptions` (default: the command line's defaults);
    ``changes`` replace some of its fields for this call (``restore_video(ckpt, a, b, progress=False)``).
    ``reference`` is a video or frame folder to score against; ``net_and_task`` gives an already loaded
    ``(net, Task)`` instead of reading ``ckpt``. Returns a :class:`RestoreSummary`.

    A video output keeps the source video's timestamps (unless ``fps`` retimes it or ``degrade`` makes
    fewer frames), colour description and, with ``audio``, its audio streams (not when ``fps`` retimes).
    """
    from ..metrics import psnr, ssim

    opts = dataclasses.replace(options or RestoreOptions(), **changes)
    max_frames, degrade, fps = opts.max_frames, opts.degrade, opts.fps

    in_path, out_path = Path(input), Path(output)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"expected --max-frames >= 1, got {max_frames}")
    if degrade and reference is not None:
        raise ValueError("expected either --degrade (INPUT is the reference) or --reference, got both")
    if not in_path.exists():
        raise FileNotFoundError(f"input {in_path} does not exist")
    if out_path.exists() and in_path.resolve() == out_path.resolve():
        raise ValueError(f"expected OUTPUT different from INPUT, got {out_path} for both")
    if reference is not None and not Path(reference).exists():
        raise FileNotFoundError(f"reference {reference} does not exist")
    out = AtomicOutput(out_path, overwrite=opts.overwrite, is_dir=_output_is_dir(out_path))
    out.check()  # refuse before any heavy work

    net, task = net_and_task if net_and_task is not None else load_restorer(ckpt)
    # frame i out is frame i in: a video keeps the source's timestamps unless retimed or degraded
    source = open_source(in_path, timed=fps is None and not degrade and not out.is_dir)
    frames: Iterable[torch.Tensor] = source.frames
    if degrade:
        pairs: Iterator[tuple[torch.Tensor, torch.Tensor | None]] = task.degrade_stream(
            frames, chunk=opts.degrade_chunk
        )
    elif reference is not None:
        ref_source = open_source(reference)
        pairs = _zip_reference(frames, ref_source)
    else:
        pairs = ((f, None) for f in frames)
    if max_frames is not None:
        pairs = itertools.islice(pairs, max_frames)
    total = source.length
    if degrade and total is not None:
        total = task.degraded_length(total)
    if max_frames is not None:
        total = max_frames if total is None else min(total, max_frames)

    video_fps = Fraction(fps).limit_denominator(1001 * 1000) if fps is not None else source.fps
    if video_fps is None:
        video_fps = DEFAULT_FOLDER_FPS
    if degrade:
        video_fps = video_fps / task.frame_span[1]  # deblurring: one blurred frame per window of sub-frames

    restorer = StreamingRestorer(net, **opts.stream_kwargs())
    summary = RestoreSummary(frames=0, seconds=0.0, output=str(out_path), video_fps=float(video_fps))
    scored = degrade or reference is not None
    pending: deque[tuple[torch.Tensor | None, torch.Tensor | None]] = deque()
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

    bar = _progress(total, opts.progress, in_path.name)
    start = time.perf_counter()
    with out as tmp:
        sink = (
            FolderSink(tmp, bit_depth=source.bit_depth)
            if out.is_dir
            else VideoSink(
                tmp,
                video_fps,
                source=source,
                audio=opts.audio and fps is None,
                trim_audio=max_frames is not None,
                **opts.encoder_kwargs(),
            )
        )
        try:

            def emit(restored: torch.Tensor) -> None:
                restored = restored.detach().float().cpu()
                if restored.dim() == 4:
                    restored = restored[0]
                lq, ref = pending.popleft()
                sink.write(restored)
                if scored and ref is not None:
                    size = tuple(restored.shape[-2:])
                    ref = _fit_reference(ref, size, task.scale, "the reference")
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
    return summary


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


def _progress(total: int | None, enabled: bool, name: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="frame", desc=name, dynamic_ncols=True, file=sys.stderr)


def export_to(
    ckpt: str | os.PathLike, input: str | os.PathLike, output: str | os.PathLike, fmt: str, *, overwrite: bool
) -> Path:
    """One streaming step of the network written to ``output`` (``fmt``: ``onnx`` or ``torchscript``);
    the frame size comes from INPUT's first frame (LQ frames; the network's input)."""
    out = AtomicOutput(output, overwrite=overwrite)
    out.check()
    net, _ = load_restorer(ckpt)
    source = open_source(input)
    first = next(iter(source.frames), None)
    if first is None:
        raise ValueError(f"expected at least one frame in {source.name}, got none")
    with out as tmp:
        export_step(net, tmp, size=tuple(first.shape[-2:]), fmt=fmt)
    return out.path
