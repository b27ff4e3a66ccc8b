"""The ``restore`` command: a video of any length in, the restored video out, in constant memory.

``python -m s2svr_lightning.restore --ckpt CKPT INPUT OUTPUT`` (installed as ``s2svr-restore``), or
``... --ckpt CKPT IN1 IN2 VIDEOS/ -o OUTDIR`` for many (:mod:`~s2svr_lightning.restore_batch`).

Frames are decoded one at a time, pushed through :class:`~s2svr_lightning.inference.StreamingRestorer`
(S2SVR's encoder is causal and its local attention looks ``r`` frames ahead, so output ``t`` is final
once input ``t + r`` has arrived) and encoded as soon as they come out: memory does not grow with the
length of the video, and the output equals a whole-sequence pass.

- INPUT: a video file (anything PyAV / decord reads) or a folder of frames (png, jpg, ...).
- OUTPUT: a video file (``.mp4``, ``.mkv``, ``.mov``, ``.avi``) or a folder of PNGs (a path without an
  extension). A video keeps the source's frame timestamps (variable frame rate included), colour
  description and audio streams (copied, or re-encoded where the container refuses the codec;
  ``--no-audio`` drops them); H.264 at crf 18 in 4:2:0 by default, ``--codec ffv1`` for lossless.
- The checkpoint of the restorer stage carries the task (``vsr`` / ``deblur`` / ``cve``), its scale,
  degradation and metric conventions and the network (builder name + overrides): nothing else is given.
- ``--reference HQ`` scores PSNR / SSIM against ground truth with the task's conventions
  (:mod:`s2svr_lightning.metrics`), next to a baseline: bicubic upsampling for SR, the input otherwise.
  ``--degrade`` makes the LQ input from an HQ video with the task's degradation; INPUT is then the
  reference too. ``--metrics-json`` writes the scores.
- The output is written under a hidden temporary name in the output's folder and renamed when
  complete, so an interrupted run never leaves a file that looks finished; an existing output is
  refused unless ``--overwrite``.
- ``--export onnx|torchscript`` writes one streaming step of the network for deployment instead.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from .atomic import AtomicOutput, atomic_write_text
from .checkpoint import load_restorer
from .commands import add_version_argument
from .data.frames import FolderSink, FrameSource, VideoSink, open_source
from .export import export_step
from .inference import StreamingRestorer
from .task import Task

__all__ = ["RestoreSummary", "build_parser", "main", "restore_video"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
DEFAULT_FOLDER_FPS = Fraction(25)


class RestoreInterrupted(KeyboardInterrupt):
    """SIGTERM turned into an interrupt, so that the partial output is cleaned up as for Ctrl-C."""


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
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
    warp_error: list[float] = field(default_factory=list)  # --temporal (s2svr_lightning.temporal)
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
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    tile: int | None = None,
    tile_overlap: int | None = None,
    tile_flow: str = "frame",
    max_frames: int | None = None,
    reference: str | os.PathLike | None = None,
    degrade: bool = False,
    degrade_chunk: int = 32,
    overwrite: bool = False,
    codec: str | None = None,
    crf: int | None = None,
    pix_fmt: str | None = None,
    preset: str | None = None,
    audio: bool = True,
    audio_codec: str | None = None,
    fps: float | Fraction | None = None,
    progress: bool = True,
    net_and_task: tuple[Any, Task] | None = None,
    compile: bool = False,
    temporal: str = "off",
    flow: str | os.PathLike = "tvl1",
) -> RestoreSummary:
    """Restore ``input`` into ``output`` frame by frame (the function behind the command line).

    Args mirror the command's options (``temporal``: ``"off"``, ``"warp"`` or ``"full"``, with the
    ``flow`` estimator: :mod:`s2svr_lightning.temporal`); ``net_and_task`` gives an already loaded
    ``(net, Task)`` instead of reading ``ckpt``. Returns a :class:`RestoreSummary`.

    A video output keeps the source video's timestamps (unless ``fps`` retimes it or ``degrade`` makes
    fewer frames), colour description and, with ``audio``, its audio streams (not when ``fps`` retimes).
    """
    from .metrics import psnr, ssim

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
    out = AtomicOutput(out_path, overwrite=overwrite, is_dir=_output_is_dir(out_path))
    out.check()  # refuse before any heavy work

    net, task = net_and_task if net_and_task is not None else load_restorer(ckpt)
    # frame i out is frame i in: a video keeps the source's timestamps unless retimed or degraded
    source = open_source(in_path, timed=fps is None and not degrade and not out.is_dir)
    frames: Iterable[torch.Tensor] = source.frames
    if degrade:
        pairs: Iterator[tuple[torch.Tensor, torch.Tensor | None]] = task.degrade_stream(
            frames, chunk=degrade_chunk
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

    restorer = StreamingRestorer(
        net,
        device=device,
        precision=precision,
        tile=tile,
        tile_flow=tile_flow,
        compile=compile,
        **_tile_kwargs(tile_overlap),
    )
    summary = RestoreSummary(frames=0, seconds=0.0, output=str(out_path), video_fps=float(video_fps))
    scored = degrade or reference is not None
    pending: deque[tuple[torch.Tensor | None, torch.Tensor | None]] = deque()
    temporal_scores = None
    if scored and temporal != "off":  # warping error / tOF of consecutive frames (s2svr_lightning.temporal)
        from .temporal import PairStream, flow_estimator

        temporal_scores = PairStream(
            mode=temporal, estimator=flow_estimator(flow), y_channel=task.y_channel, border=task.border
        )

    bar = _progress(total, progress, in_path.name)
    start = time.perf_counter()
    with out as tmp:
        sink = (
            FolderSink(tmp)
            if out.is_dir
            else VideoSink(
                tmp,
                video_fps,
                codec=codec,
                crf=crf,
                pix_fmt=pix_fmt,
                preset=preset,
                source=source,
                audio=audio and fps is None,
                audio_codec=audio_codec,
                trim_audio=max_frames is not None,
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
                    pair = temporal_scores.push(restored, ref) if temporal_scores is not None else None
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


def _tile_kwargs(tile_overlap: int | None) -> dict:
    return {} if tile_overlap is None else {"tile_overlap": tile_overlap}


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


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s2svr-restore",
        usage="%(prog)s --ckpt CKPT [options] INPUT OUTPUT\n"
        "       %(prog)s --ckpt CKPT [options] INPUT [INPUT ...] -o OUTDIR",
        description="Restore a video (or a folder of frames) with an S2SVR restorer checkpoint, streaming: "
        "memory does not grow with the video's length and the output equals a whole-sequence pass.",
    )
    add_version_argument(p)
    p.add_argument(
        "--ckpt", required=True, help="restorer checkpoint (<run>/restorer/checkpoints/final.ckpt)"
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="INPUT OUTPUT: a video file or folder of frames (the HQ video with --degrade) and the video "
        "file (.mp4, .mkv, ...) or PNG folder (no extension) to write; with --export, the step's file. "
        "With -o OUTDIR: any number of inputs (videos, frame folders, folders of videos). "
        "A folder of videos and a folder (VIDEOS OUTDIR) is a batch too",
    )
    p.add_argument(
        "-o",
        "--output-dir",
        default=None,
        help="restore every PATH into this folder (<name>.<ext>); done ones are skipped unless --overwrite",
    )
    p.add_argument(
        "--format",
        choices=("mp4", "mkv", "mov", "png"),
        default=None,
        help="batch: output container, or png for frame folders (default: the source's mp4/mkv/mov, "
        "else mkv; mkv for --codec ffv1; mp4 for frame-folder inputs)",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast precision")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network's recurrent layers (the first frames wait minutes for the compiler; "
        "falls back to eager, with one line saying why, where it cannot compile)",
    )
    p.add_argument("--tile", type=int, default=None, help="process in spatial tiles of this many LQ pixels")
    p.add_argument("--tile-overlap", type=int, default=None, help="overlap between tiles, LQ pixels")
    p.add_argument(
        "--tile-flow",
        choices=("frame", "tile"),
        default="frame",
        help="with --tile: flow on the whole frame (default: closest to untiled) or per tile (less memory)",
    )
    p.add_argument("--max-frames", type=int, default=None, help="restore only the first N frames")
    p.add_argument(
        "--reference",
        default=None,
        help="HQ video or frame folder to score PSNR / SSIM against (batch: a folder of them, named as "
        "the inputs)",
    )
    p.add_argument(
        "--degrade",
        action="store_true",
        help="INPUT is an HQ video: degrade it with the checkpoint's task, restore, and score against it",
    )
    p.add_argument(
        "--degrade-chunk", type=int, default=32, help="compressed video: frames per HEVC stream (default 32)"
    )
    p.add_argument(
        "--temporal",
        choices=("off", "warp", "full"),
        default="off",
        help="with --reference / --degrade: also the warping error (warp) and tOF (full) of consecutive "
        "frames, flow estimated on the reference by --flow (see s2svr-score; default off)",
    )
    p.add_argument(
        "--flow", default="tvl1", help="--temporal's flow estimator: tvl1 (default) or a flow checkpoint"
    )
    p.add_argument(
        "--metrics-json",
        default=None,
        help="write the scores and speed to this JSON file (batch: one entry per input)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT (batch: outputs) if it exists")
    p.add_argument(
        "--codec",
        default=None,
        help="video codec: libx264 (default, visually lossless at crf 18, yuv420p), ffv1 (lossless RGB, "
        "write .mkv), libx265, mpeg4, ...",
    )
    p.add_argument(
        "--crf", type=int, default=None, help="x264/x265 quality: 0 lossless, 18 default, 23 smaller"
    )
    p.add_argument("--preset", default=None, help="x264/x265 speed preset (default: medium)")
    p.add_argument(
        "--pix-fmt",
        default=None,
        help="pixel format (default: yuv420p, yuv444p for odd sizes; bgr0 (RGB) for ffv1), e.g. yuv444p",
    )
    p.add_argument("--no-audio", action="store_true", help="drop the source's audio (kept by default)")
    p.add_argument(
        "--audio-codec",
        default=None,
        help="re-encode the audio with this codec (default: copy it where the container takes it, else AAC)",
    )
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="output frame rate (default: the source's timestamps; 25 for frame folders); retiming a "
        "video drops its audio",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--export",
        choices=("onnx", "torchscript"),
        default=None,
        help="instead of restoring, write one streaming step of the network to OUTPUT for deployment "
        "(INPUT gives the frame size)",
    )
    return p


def _export(args: argparse.Namespace) -> Path:
    """``--export``: the frame size comes from INPUT's first frame (LQ frames; the network's input)."""
    out = AtomicOutput(args.output, overwrite=args.overwrite)
    out.check()
    net, _ = load_restorer(args.ckpt)
    source = open_source(args.input)
    first = next(iter(source.frames), None)
    if first is None:
        raise ValueError(f"expected at least one frame in {source.name}, got none")
    with out as tmp:
        export_step(net, tmp, size=tuple(first.shape[-2:]), fmt=args.export)
    return out.path


def _on_sigterm(signum, frame):  # noqa: ARG001 -- signal handler signature
    raise RestoreInterrupted()


def _restore_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`restore_video` the command line sets (the same for every input of a batch)."""
    return {
        "device": args.device,
        "precision": args.precision,
        "compile": args.compile,
        "tile": args.tile,
        "tile_overlap": args.tile_overlap,
        "tile_flow": args.tile_flow,
        "max_frames": args.max_frames,
        "degrade": args.degrade,
        "degrade_chunk": args.degrade_chunk,
        "overwrite": args.overwrite,
        "codec": args.codec,
        "crf": args.crf,
        "pix_fmt": args.pix_fmt,
        "preset": args.preset,
        "audio": not args.no_audio,
        "audio_codec": args.audio_codec,
        "fps": args.fps,
        "progress": not args.no_progress,
        "temporal": args.temporal,
        "flow": args.flow,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``s2svr-restore`` / ``python -m s2svr_lightning.restore``; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print(f"s2svr-restore: error: expected --threads >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _in_main_thread() else None
    try:
        from .restore_batch import batch_form, main_batch  # here: restore_batch imports this module

        batch = batch_form(args)
        if batch is not None:
            return main_batch(args, *batch, _restore_kwargs(args))
        if args.export is not None:
            path = _export(args)
            print(f"exported one streaming step ({args.export}) to {path}")
            return 0
        summary = restore_video(
            args.ckpt, args.input, args.output, reference=args.reference, **_restore_kwargs(args)
        )
    except KeyboardInterrupt as err:
        print("s2svr-restore: interrupted; the partial output was removed", file=sys.stderr)
        return 143 if isinstance(err, RestoreInterrupted) else 130
    except (ValueError, OSError) as err:
        print(f"s2svr-restore: error: {err}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    metrics = summary.metrics()
    line = f"restored {summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.2f} frames/s)"
    line += f" -> {args.output}"
    if metrics["psnr"] is not None:
        line += (
            f"\nPSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} "
            f"(baseline {metrics['baseline_psnr']:.2f} dB, {metrics['baseline_ssim']:.4f})"
        )
    if metrics.get("warp_error") is not None:
        line += f"\nwarping error {metrics['warp_error']:.3e} (MSE on [0, 1])"
        line += f", tOF {metrics['tof']:.3f} px" if math.isfinite(metrics["tof"]) else ""
    print(line)
    if args.metrics_json is not None:
        write_json(Path(args.metrics_json), metrics)
    return 0


def write_json(path: Path, data: dict) -> None:
    """``data`` as JSON, atomically (NaN and infinity become ``null``)."""
    atomic_write_text(path, json.dumps(_clean(data), indent=2) + "\n")


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: ``None`` instead (a zero-second run's frames/s, say)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
