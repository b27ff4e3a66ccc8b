"""The ``restore`` command line: ``s2svr-restore`` / ``python -m s2svr_lightning.restore``.

``s2svr-restore --ckpt CKPT [options] INPUT OUTPUT`` restores one video or frame folder
(:mod:`~s2svr_lightning.restore.run`); ``... IN1 IN2 VIDEOS/ -o OUTDIR`` (or ``VIDEOS/ OUTDIR``) restores
many (:mod:`~s2svr_lightning.restore.batch`); ``--export pt2|onnx|torchscript`` writes one streaming step of
the network instead (:mod:`~s2svr_lightning.restore.export`). The options are parsed here, once, into a
:class:`~s2svr_lightning.restore.options.RestoreOptions`; nothing below this module sees ``argparse``.
``--metrics-json`` writes the scores (batch: one entry per input); ``--threads`` sets torch's CPU threads;
``--workers N`` restores each video in N processes (:mod:`~s2svr_lightning.restore.segments`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic import write_json
from ..commands import command_parser
from .batch import is_video_folder, restore_batch
from .options import WARMUP_FRAMES, RestoreOptions, parse_tile
from .run import export_to, restore_video
from .tiles import OutOfMemory

__all__ = ["build_parser", "main", "options_from_args"]


class RestoreInterrupted(KeyboardInterrupt):
    """SIGTERM turned into an interrupt, so that the partial output is cleaned up as for Ctrl-C."""


def _tile(value: str) -> int | str | None:
    try:
        return parse_tile(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# How the output is encoded: each defaults to None, the writer's own choice (RestoreOptions' encoder fields)
_ENCODER_OPTIONS: tuple[tuple[str, type, str], ...] = (
    (
        "--codec",
        str,
        "video codec: libx264 (default, visually lossless at crf 18, yuv420p), ffv1 (lossless RGB, write "
        ".mkv), libx265, mpeg4, ...",
    ),
    ("--crf", int, "x264/x265 quality: 0 lossless, 18 default, 23 smaller"),
    ("--preset", str, "x264/x265 speed preset (default: medium)"),
    (
        "--pix-fmt",
        str,
        "pixel format (default: yuv420p, yuv444p for odd sizes; bgr0 (RGB) for ffv1), e.g. yuv444p",
    ),
    (
        "--audio-codec",
        str,
        "re-encode the audio with this codec (default: copy it where the container takes it, else AAC)",
    ),
    (
        "--fps",
        float,
        "output frame rate (default: the source's timestamps; 25 for frame folders); retiming a video "
        "drops its audio",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        prog="s2svr-restore",
        usage="%(prog)s --ckpt CKPT [options] INPUT OUTPUT\n"
        "       %(prog)s --ckpt CKPT [options] INPUT [INPUT ...] -o OUTDIR",
        description="Restore a video (or a folder of frames) with an S2SVR restorer checkpoint, streaming: "
        "memory does not grow with the video's length and the output equals a whole-sequence pass.",
    )
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
    p.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (default: CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:1, mps",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="autocast precision; auto (default): bf16 where the hardware has bf16 units (CUDA since Ampere, "
        "CPUs with AMX or AVX-512 BF16), fp16 on older CUDA, fp32 elsewhere",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network's recurrent layers (the first frames wait minutes for the compiler; "
        "falls back to eager, with one line saying why, where it cannot compile)",
    )
    p.add_argument(
        "--tile",
        type=_tile,
        default="auto",
        help="spatial tiles of this many LQ pixels; auto (default): whole frames where they fit the free "
        "memory, else the largest tile that does, smaller tiles after an out-of-memory error; off: whole "
        "frames always",
    )
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
    for flag, kind, text in _ENCODER_OPTIONS:
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument("--no-audio", action="store_true", help="drop the source's audio (kept by default)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice), shared among --workers",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes restoring the video side by side, a time segment each, joined into one output "
        "(default 1: one stream)",
    )
    p.add_argument(
        "--warmup-frames",
        type=int,
        default=WARMUP_FRAMES,
        help=f"with --workers: frames each segment restores before its own and drops, so that the "
        f"recurrent states have settled (default {WARMUP_FRAMES}; docs/restoring.md measures the choice)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--export",
        choices=("pt2", "onnx", "torchscript"),
        default=None,
        help="instead of restoring, write one streaming step of the network to OUTPUT for deployment "
        "(INPUT gives the frame size): pt2 (torch.export), onnx (the onnx extra), torchscript",
    )
    return p


def options_from_args(args: argparse.Namespace) -> RestoreOptions:
    """The :class:`RestoreOptions` the command line sets (the same for every input of a batch): each field
    is the option of its name, but ``audio`` and ``progress``, which ``--no-audio`` / ``--no-progress``
    turn off."""
    flags = {"audio": not args.no_audio, "progress": not args.no_progress}
    named = {f.name: getattr(args, f.name) for f in dataclasses.fields(RestoreOptions) if f.name not in flags}
    return RestoreOptions(**named, **flags)


def _batch_form(args: argparse.Namespace) -> tuple[list[str], Path] | None:
    """``(inputs, OUTDIR)`` when the command is a batch, ``None`` for ``INPUT OUTPUT``; raises on neither."""
    if args.output_dir is not None:
        if args.export is not None:
            raise ValueError("expected --export with INPUT OUTPUT, got -o/--output-dir")
        return list(args.paths), Path(args.output_dir)
    if len(args.paths) != 2:
        raise ValueError(
            f"expected INPUT OUTPUT, or inputs with -o OUTDIR, got {len(args.paths)} paths "
            f"({' '.join(args.paths)}); add -o OUTDIR to restore them all into one folder"
        )
    source, target = args.paths
    if args.export is None and is_video_folder(source):
        return [source], Path(target)
    if args.format is not None:
        raise ValueError(
            "expected --format with a batch (-o OUTDIR), got INPUT OUTPUT: OUTPUT's extension is the format"
        )
    return None


def _on_sigterm(signum, frame):  # noqa: ARG001 -- signal handler signature
    raise RestoreInterrupted()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``s2svr-restore`` / ``python -m s2svr_lightning.restore``; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print(f"s2svr-restore: error: expected --threads >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        options = options_from_args(args)
        batch = _batch_form(args)
        if args.export is None:  # before any heavy work: a missing device fails here, with the fix
            options, chosen = options.resolved()
            print(chosen, file=sys.stderr)
        if batch is not None:
            inputs, outdir = batch
            return restore_batch(
                args.ckpt, inputs, outdir, options, reference=args.reference, metrics_json=args.metrics_json
            )
        source, target = args.paths
        if args.export is not None:
            path = export_to(args.ckpt, source, target, args.export, overwrite=args.overwrite)
            print(f"exported one streaming step ({args.export}) to {path}")
            return 0
        summary = restore_video(args.ckpt, source, target, options, reference=args.reference)
    except KeyboardInterrupt as err:
        print("s2svr-restore: interrupted; the partial output was removed", file=sys.stderr)
        return 143 if isinstance(err, RestoreInterrupted) else 130
    except (ValueError, OSError) as err:
        print(f"s2svr-restore: error: {err}", file=sys.stderr)
        return 2
    except OutOfMemory as err:
        print(f"s2svr-restore: error: {err}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    metrics = summary.metrics()
    line = f"restored {summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.2f} frames/s)"
    line += f" -> {target}"
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
