"""One input restored: a video of any length in, the restored video out, in constant memory.

Frames are decoded one at a time, pushed through :class:`~s2svr_lightning.restore.stream.StreamingRestorer`
(S2SVR's encoder is causal and its local attention looks ``r`` frames ahead, so output ``t`` is final
once input ``t + r`` has arrived) and encoded as soon as they come out (:mod:`~s2svr_lightning.restore.loop`):
memory does not grow with the length of the video, and the output equals a whole-sequence pass. With
``workers`` above 1, several processes restore time segments of the video side by side and the segments
are joined into the one output (:mod:`~s2svr_lightning.restore.segments`). The command line is
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
import os
from pathlib import Path
from typing import Any

from ..atomic import AtomicOutput
from ..checkpoint import load_restorer
from ..data.media.frames import open_source
from ..task import Task
from .export import export_step
from .loop import RestoreSummary, restore_stream
from .options import RestoreOptions
from .segments import restore_segmented

__all__ = ["RestoreSummary", "export_to", "restore_video"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")


def _output_is_dir(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return False
    if suffix == "" or path.is_dir():
        return True
    raise ValueError(
        f"expected OUTPUT a video file ({', '.join(VIDEO_SUFFIXES)}) or a folder (no extension), got {path}"
    )


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
    With ``workers`` above 1 the video is restored in that many processes, a time segment each
    (:func:`~s2svr_lightning.restore.segments.restore_segmented`).
    """
    opts = dataclasses.replace(options or RestoreOptions(), **changes)
    max_frames, degrade = opts.max_frames, opts.degrade

    in_path, out_path = Path(input), Path(output)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"expected --max-frames >= 1, got {max_frames}")
    if opts.workers < 1:
        raise ValueError(f"expected --workers >= 1, got {opts.workers}")
    if opts.warmup_frames < 0:
        raise ValueError(f"expected --warmup-frames >= 0, got {opts.warmup_frames}")
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

    ref_path = Path(reference) if reference is not None else None
    if opts.workers > 1:
        return restore_segmented(ckpt, in_path, out, opts, reference=ref_path, net_and_task=net_and_task)
    net_and_task = net_and_task if net_and_task is not None else load_restorer(ckpt)
    with out as tmp:
        summary, _ = restore_stream(net_and_task, in_path, tmp, opts, is_dir=out.is_dir, reference=ref_path)
    summary.output = str(out_path)
    return summary


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
