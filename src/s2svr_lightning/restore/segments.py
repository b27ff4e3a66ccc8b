"""One video restored by several processes: time segments side by side, joined into one output.

``s2svr-restore --workers N`` (``RestoreOptions.workers``) cuts the video's LQ frames into N segments of
equal length (:func:`plan_segments`) and restores each in its own process
(:func:`~s2svr_lightning.restore.loop.restore_stream` with a :class:`~s2svr_lightning.restore.loop.Span`):

- Warm-up: a segment starts restoring ``warmup_frames`` (K) frames before its first frame and drops
  them, so that its recurrent states (S2SVR's encoder and decoder states and its window of 2r + 1
  latents) have seen K frames of the past when its own frames start; it reads r frames past its last one
  (the local attention's look-ahead), so each segment's frames see the future a single stream gives them.
  K frames of history are not the whole history: how far the output is from one stream's, against K, is
  measured by ``benchmarks/segments.py`` (docs/restoring.md), which chose the default. A segment that
  starts within K frames of the video's start restores from frame 0, and then equals one stream's.
- Join: each worker writes its frames losslessly (FFV1 RGB, 16 bits where the output keeps more than 8;
  PNGs for a frame-folder output) into a hidden folder beside the output, with the source timestamps of
  its frames. This process encodes the segments, in order, into the one output as soon as each is done,
  with the source's timestamps, colour description, metadata and audio (:class:`VideoSink`, as one
  stream writes them): every frame once, in order, and only one lossy encode. The output is written
  atomically (the caller's :class:`~s2svr_lightning.atomic.AtomicOutput`); the segments are removed.
- Processes: started with ``spawn`` (no forked threads or CUDA state); torch's CPU threads are shared
  among them (``torch.get_num_threads() // N`` each, at least 1). With device ``cuda`` and several GPUs,
  segment i runs on GPU ``i % count``; with one device they share it.
- Scores: per frame as one stream scores them; ``temporal`` scores consecutive frames within each
  segment (the N - 1 pairs across a join are not scored).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..atomic import AtomicOutput
from ..checkpoint import load_restorer
from ..data.media.frames import FrameSource, VideoSink, open_source
from ..task import Task
from .loop import RestoreSummary, Span, output_fps, progress_bar, restore_stream
from .options import RestoreOptions

__all__ = ["plan_segments", "restore_segmented", "segment_device"]


def plan_segments(total: int, workers: int, warmup: int) -> list[Span]:
    """``workers`` segments of ``total`` frames (as equal as whole frames allow; fewer when there are
    fewer frames than workers), each restored from ``warmup`` frames before its start (0 at the least)."""
    if total < 1 or workers < 1 or warmup < 0:
        raise ValueError(f"expected total >= 1, workers >= 1, warmup >= 0, got {total}, {workers}, {warmup}")
    n = min(workers, total)
    bounds = [round(i * total / n) for i in range(n + 1)]
    return [Span(max(0, a - warmup), a, b) for a, b in zip(bounds, bounds[1:])]


def segment_device(device: torch.device, index: int, cuda_devices: int) -> torch.device:
    """Segment ``index``'s device: ``cuda`` with no index spreads the segments over the CUDA devices."""
    if device.type == "cuda" and device.index is None and cuda_devices > 1:
        return torch.device("cuda", index % cuda_devices)
    return device


def _worker(conn, counter, threads: int, job: tuple) -> None:
    """A worker process: segment ``span`` of ``input`` restored into ``target``; sends
    ``("done", (summary, timestamps))`` or ``("failed", exception)`` through ``conn``."""
    ckpt, input, target, is_dir, opts, reference, span, index = job
    torch.set_num_threads(threads)

    def tick() -> None:
        with counter.get_lock():
            counter.value += 1

    try:
        device = torch.device(opts.device)
        cuda = torch.cuda.device_count() if device.type == "cuda" else 0
        opts = dataclasses.replace(opts, device=segment_device(device, index, cuda))
        if is_dir:
            target.mkdir()
        result = restore_stream(
            load_restorer(ckpt), input, target, opts, is_dir=is_dir, reference=reference, span=span, tick=tick
        )
        conn.send(("done", result))
    except BaseException as err:  # the parent re-raises it (KeyboardInterrupt included: Ctrl-C hits all)
        try:
            conn.send(("failed", err))
        except Exception:  # an exception that does not pickle
            conn.send(("failed", RuntimeError(f"{type(err).__name__}: {err}")))
    finally:
        conn.close()


def _result(proc, conn, index: int, wait) -> tuple[RestoreSummary, list[int | None]]:
    """Worker ``index``'s result, waiting for it (``wait()`` called every half second meanwhile)."""
    while not conn.poll(0.5):  # True on a result, or at end of file: the worker died without one
        wait()
    try:
        status, payload = conn.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(
            f"expected segment {index} restored, but its process ended with exit code {proc.exitcode} "
            "and no result (killed for memory? try fewer --workers)"
        ) from None
    if status == "failed":
        raise payload
    return payload


def restore_segmented(
    ckpt: str | os.PathLike,
    input: Path,
    out: AtomicOutput,
    opts: RestoreOptions,
    *,
    reference: Path | None = None,
    net_and_task: tuple[Any, Task] | None = None,
) -> RestoreSummary:
    """Restore ``input`` into ``out`` with ``opts.workers`` processes, a time segment each (the module
    docstring says how); returns the summary of the whole video, its scores in frame order."""
    _, task = net_and_task if net_and_task is not None else load_restorer(ckpt)  # refuse a bad one here
    if str(opts.device) == "auto" or opts.precision == "auto":
        opts, _ = opts.resolved()  # once, not once per worker
    timed = opts.fps is None and not opts.degrade and not out.is_dir
    source = open_source(input, timed=timed)  # its reader: the timing, colour and audio the output keeps
    total = source.length or 0
    if opts.degrade:
        total = task.degraded_length(total)
    if opts.max_frames is not None:
        total = min(total, opts.max_frames)
    if total < 1:
        raise ValueError(f"expected at least one frame in {source.name}, got none")
    spans = plan_segments(total, opts.workers, opts.warmup_frames)
    worker_opts = dataclasses.replace(opts, workers=1, progress=False)
    threads = max(1, torch.get_num_threads() // len(spans))
    context = multiprocessing.get_context("spawn")  # no forked threads, locks or CUDA state
    counter = context.Value("q", 0)
    bar = progress_bar(total, opts.progress, input.name)

    def wait() -> None:
        if bar is not None:
            bar.n = counter.value
            bar.refresh()

    summary = RestoreSummary(frames=0, seconds=0.0, output=str(out.path))
    start = time.perf_counter()
    workers: list[tuple[Path, Any, Any]] = []
    with (
        out as tmp,
        tempfile.TemporaryDirectory(prefix=f".{out.path.name}.segments-", dir=out.path.parent) as work,
    ):
        try:
            for i, span in enumerate(spans):
                path = Path(work) / (f"{i:04d}" if out.is_dir else f"{i:04d}.mkv")
                receive, send = context.Pipe(duplex=False)
                job = (str(ckpt), input, path, out.is_dir, worker_opts, reference, span, i)
                proc = context.Process(target=_worker, args=(send, counter, threads, job), daemon=True)
                proc.start()
                send.close()  # the worker's end: a dead worker then reads as end of file here
                workers.append((path, proc, receive))
            sink = None
            if not out.is_dir:
                sink = VideoSink(
                    tmp,
                    output_fps(opts, source, task),
                    source=source,
                    audio=opts.audio and opts.fps is None,
                    trim_audio=opts.max_frames is not None,
                    **opts.encoder_kwargs(),
                )
            try:
                for i, (path, proc, conn) in enumerate(workers):  # in order, each as soon as it is done
                    part, stamps = _result(proc, conn, i, wait)
                    _join(path, tmp, sink, source, stamps, offset=summary.frames)
                    _add(summary, part)
            finally:
                if sink is not None:
                    sink.close()
        finally:
            for _, proc, conn in workers:
                if proc.is_alive():
                    proc.terminate()
                proc.join()
                conn.close()
            wait()
            if bar is not None:
                bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _join(
    path: Path, tmp: Path, sink: VideoSink | None, source: FrameSource, stamps: list, *, offset: int
) -> None:
    """Append one segment to the output: its PNGs renamed into the output folder (numbered on from
    ``offset``), or its frames encoded into ``sink`` at the source timestamps ``stamps``."""
    if sink is None:
        for i, frame in enumerate(sorted(path.iterdir())):
            os.replace(frame, tmp / f"{offset + i:08d}.png")
        path.rmdir()
        return
    if source.pts is not None:
        source.pts.extend(stamps)
    for frame in open_source(path).frames:
        sink.write(frame)
    if source.pts:
        raise RuntimeError(f"expected a frame for every timestamp of {path.name}, {len(source.pts)} left")
    path.unlink()  # the disk it took is free before the next segment is read


def _add(summary: RestoreSummary, part: RestoreSummary) -> None:
    summary.frames += part.frames
    summary.video_fps = part.video_fps
    for name in ("psnr", "ssim", "baseline_psnr", "baseline_ssim", "warp_error", "tof"):
        getattr(summary, name).extend(getattr(part, name))
