"""Peak resident memory of ``s2svr-restore`` as users run it, at 50, 400 and 1600 frames, each run 3 times.

The headline (:func:`bench_cli`): the command line in a fresh subprocess per run, on H.264 clips with an
AAC sound track written here with PyAV (a real photograph panned on a smooth closed path,
:func:`panned_frames`, at most 1 LQ pixel per frame at this size), one clip per length, in two forms:

- ``degrade``: ``python -m s2svr_lightning.restore --ckpt CKPT hq.mp4 out.mp4 --degrade`` (HQ in:
  degraded, restored, scored against itself, encoded with the audio);
- ``reference``: ``... lq.mp4 out.mp4 --reference hq.mp4`` (LQ in, scored against the HQ clip).

Both ``--no-progress --threads 1``: one thread, because the figures are memory and the machine it was
measured on is a shared 2-core one (two threads there run much slower, and torch's thread pool holds
per-thread buffers of its own). LQ frames are 64x48 (HQ 256x192); the network is the VSR builder
narrowed to ``channels=16, num_blocks=1`` and untrained, with the full PWC-Lite flow net reading the LQ
frames (``flow_input="native"``; the default ``"hq"`` runs it on the HQ frames, 16x the pixels): memory growth
is a property of the inference scheme, and a small network keeps the runs to about ten minutes.
Each row gives every repeat's peak, so the run-to-run spread is visible.

The peak resident set size of each run is read from the kernel's accounting of that process alone
(``os.wait4``: ``ru_maxrss`` of the waited child, forked from a small launcher process so that no parent's
memory is counted). Every figure comes from the same run, side by side.

``--whole-sequence`` measures instead what the script measured first: streaming against a
whole-sequence pass (this script's ``--whole`` child decodes the first N frames into one tensor, runs
``S2SVR.forward`` once and encodes the output) at 50, 200 and 800 frames of 64x96 LQ, no audio.

Run: ``python benchmarks/memory.py [--quick] [--repeats N] [--modes degrade,reference] [--json PATH]``
(the CLI table; 527 s on 2 cores shared with other jobs at load average 1 to 3, 35 min at 7 to 12) or
``python benchmarks/memory.py --whole-sequence [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import markdown_table, photo_clip  # noqa: E402

from s2svr_lightning.atomic import write_json  # noqa: E402

LENGTHS = (50, 200, 800)  # --whole-sequence
MODEL = "s2svr_vsr"
OVERRIDES = {"channels": 16, "num_blocks": 1}
LQ_SIZE = (64, 96)  # --whole-sequence
CLI_LENGTHS = (50, 400, 1600)
CLI_LQ_SIZE = (48, 64)
CLI_MODES = ("degrade", "reference")
REPEATS = 3
AUDIO_RATE = 44100


def save_untrained_checkpoint(
    path: str | os.PathLike,
    *,
    model: str = MODEL,
    overrides: dict | None = None,
    flow_input: str | None = None,
) -> Path:
    """A restorer checkpoint of an untrained network with a builder's configuration (as the pipeline
    would write it: ``s2svr_kind``, hyperparameters, weights), for benchmarks that do not need training.
    ``flow_input``: where the flow net reads (None: the module's default, ``"hq"``)."""
    import lightning as L

    from s2svr_lightning.lit.restorer import RestorerModule

    torch.manual_seed(0)
    module = RestorerModule(
        model=model, model_overrides=overrides or {}, total_steps=1, flow_input=flow_input
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(Path(path).parent),
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(str(path))
    return Path(path)


def panned_frames(num_frames: int, size: tuple[int, int], *, amplitude: float = 0.3) -> Iterator[np.ndarray]:
    """uint8 ``(H, W, 3)`` frames of a real photograph (skimage's astronaut) seen by a camera moving on a
    smooth closed path (periods of 120 and 90 frames, ``amplitude`` times the frame's height), one at a
    time: a clip of any length in constant memory, moving at most ``2 pi amplitude H / 90`` px per frame
    (4 px at 192 rows, 8 px at 384: 1 and 2 LQ px at x4)."""
    import torch.nn.functional as F
    from skimage import data

    from s2svr_lightning.utils import to_float_frames, to_uint8_frames

    h, w = size
    reach = int(math.ceil(2 * amplitude * h)) + 2
    img = to_float_frames(data.astronaut(), channels_last=True).unsqueeze(0)
    grow = max((h + reach) / img.shape[-2], (w + reach) / img.shape[-1], 1.0)
    if grow > 1.0:
        grown = (int(img.shape[-2] * grow) + 1, int(img.shape[-1] * grow) + 1)
        img = F.interpolate(img, size=grown, mode="bicubic", align_corners=False).clamp(0.0, 1.0)
    for t in range(num_frames):
        dy = amplitude * h * (1 - math.cos(2 * math.pi * t / 120))
        dx = amplitude * h * (1 - math.cos(2 * math.pi * t / 90))
        y0, x0 = int(dy), int(dx)
        fy, fx = dy - y0, dx - x0
        crop = img[0, :, y0 : y0 + h + 1, x0 : x0 + w + 1]
        rows = crop[:, :-1] * (1 - fy) + crop[:, 1:] * fy  # a sub-pixel shift: bilinear
        frame = rows[..., :-1] * (1 - fx) + rows[..., 1:] * fx
        yield to_uint8_frames(frame, channels_last=True).numpy()


def write_clip(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    *,
    fps: int = 25,
    audio: bool = True,
    crf: int = 12,
) -> Path:
    """Encode uint8 ``(H, W, 3)`` frames as H.264 (yuv420p, ``crf``) with PyAV, with a stereo AAC track
    of a 440 Hz tone as long as the video (``audio``), interleaved as a camera's file is."""
    import av

    rate = Fraction(fps)
    with av.open(str(path), "w") as out:
        video = None
        sound = out.add_stream("aac", rate=AUDIO_RATE) if audio else None
        if sound is not None:
            sound.layout = "stereo"
        samples = 0  # audio samples written
        for i, frame in enumerate(frames):
            if video is None:
                video = out.add_stream("libx264", rate=rate)
                video.width, video.height, video.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
                video.options = {"crf": str(crf)}
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            out.mux(video.encode(vf))
            until = int((i + 1) / rate * AUDIO_RATE)  # sound up to this frame's end
            samples = _write_tone(out, sound, samples, until) if sound is not None else samples
        if video is None:
            raise ValueError(f"expected at least one frame for {path}, got none")
        out.mux(video.encode(None))
        if sound is not None:
            out.mux(sound.encode(None))
    return Path(path)


def _write_tone(out, sound, start: int, stop: int) -> int:
    """Encode the tone's samples ``start`` to ``stop`` (whole AAC frames); returns where it stopped."""
    import av

    step = sound.codec_context.frame_size or 1024
    while start + step <= stop:
        t = np.arange(start, start + step) / AUDIO_RATE
        chunk = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        af = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
        af.sample_rate, af.pts, af.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
        out.mux(sound.encode(af))
        start += step
    return start


def write_photo_clip(
    path: str | os.PathLike, num_frames: int, size: tuple[int, int], *, fps: int = 25
) -> Path:
    """The --whole-sequence input: a panned photograph (``speed.photo_clip``), lossless x264, no audio."""
    from s2svr_lightning.data.media.video_io import VideoWriter
    from s2svr_lightning.utils import to_uint8_frames

    chunk = 50  # render in chunks: the video may be longer than we want to hold in memory here
    with VideoWriter(path, fps, crf=0) as writer:
        for start in range(0, num_frames, chunk):
            n = min(chunk, num_frames - start)
            frames = photo_clip(start + n, *size, step=(0.35, 0.55))[start:]
            for frame in frames:
                writer.write(to_uint8_frames(frame, channels_last=True).numpy())
    return Path(path)


# A small launcher between this (large) process and the measured command. A child forked from a big
# process starts with the parent's pages counted in its peak RSS (the kernel records the old address
# space's high-water mark at exec), so the measured command is forked from this ~10 MB interpreter
# instead, which reports the command's own peak as ``os.wait4`` gives it. An optional cap on the
# command's address space (RLIMIT_AS) makes an allocation beyond it fail inside the command, instead of
# the kernel's OOM killer stepping in on a machine shared with other work.
_LAUNCHER = """
import json, os, resource, subprocess, sys
limit = int(sys.argv[1])
def cap():
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, preexec_fn=cap)
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}))
"""


def run_child(
    cmd: Sequence[str], *, timeout: float | None = None, memory_limit: int | None = None
) -> tuple[int, int, float, str]:
    """Run ``cmd`` through the launcher: ``(exit code, peak resident bytes, wall seconds, stderr tail)``.

    ``memory_limit``: cap of the command's address space in bytes (None: no cap).
    """
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(memory_limit or 0), *cmd],
            stdout=subprocess.PIPE,
            stderr=err,
            timeout=timeout,
        )
        seconds = time.perf_counter() - start
        err.seek(0)
        tail = err.read().decode(errors="replace")[-2000:]
    if done.returncode != 0:
        return done.returncode, 0, seconds, tail
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return report["code"], report["maxrss_kb"] * 1024, seconds, tail  # Linux reports kilobytes


def run_measured(cmd: Sequence[str], *, timeout: float | None = None) -> tuple[int, float]:
    """Run ``cmd``; return ``(its peak resident bytes, wall seconds)``; raise if it fails."""
    code, peak, seconds, tail = run_child(cmd, timeout=timeout)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {code}:\n{tail}")
    return peak, seconds


def available_memory() -> int:
    """Bytes of memory the kernel says are available now (MemAvailable), 0 if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def whole_sequence_child(ckpt: str, video: str, output: str, max_frames: int) -> None:
    """Decode N frames into one tensor, restore them in one ``forward``, encode: the non-streaming way."""
    import itertools

    from s2svr_lightning.checkpoint import load_restorer
    from s2svr_lightning.data.media.frames import VideoSink, open_source

    torch.set_num_threads(1)  # as the streaming run (--threads 1): two threads thrash on a busy machine
    net, _ = load_restorer(ckpt)
    source = open_source(video)
    frames = torch.stack(list(itertools.islice(source.frames, max_frames)))
    with torch.inference_mode():
        out = net(frames.unsqueeze(0))[0]
    sink = VideoSink(Path(output), source.fps)
    for frame in out:
        sink.write(frame)
    sink.close()


def bench_memory(
    *,
    lengths: Sequence[int] = LENGTHS,
    size: tuple[int, int] = LQ_SIZE,
    overrides: dict | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One row per length: streaming and whole-sequence peak RSS (MiB), their ratio, and the growth."""
    python = sys.executable
    rows = []
    with tempfile.TemporaryDirectory(prefix="s2svr_mem_") as tmp:
        tmp = Path(tmp)
        ckpt = save_untrained_checkpoint(
            tmp / "restorer.ckpt", overrides=OVERRIDES if overrides is None else overrides
        )
        log(f"writing a {max(lengths)}-frame {size[0]}x{size[1]} video ...")
        video = write_photo_clip(tmp / "input.mp4", max(lengths), size)
        for n in lengths:
            out_s, out_w = tmp / f"stream_{n}.mp4", tmp / f"whole_{n}.mp4"
            log(f"{n} frames: streaming ...")
            stream_rss, stream_s = run_measured(
                [python, "-m", "s2svr_lightning.restore", "--ckpt", str(ckpt), str(video), str(out_s),
                 "--max-frames", str(n), "--no-progress", "--threads", "1"]
            )  # fmt: skip
            log(f"{n} frames: whole sequence ...")
            whole_rss, whole_s = run_measured(
                [python, __file__, "--whole", str(ckpt), str(video), str(out_w), "--max-frames", str(n)]
            )
            rows.append(
                {
                    "frames": n,
                    "streaming_mib": stream_rss / 2**20,
                    "whole_mib": whole_rss / 2**20,
                    "whole_over_streaming": whole_rss / stream_rss,
                    "streaming_s": stream_s,
                    "whole_s": whole_s,
                }
            )
            out_s.unlink(missing_ok=True)
            out_w.unlink(missing_ok=True)
    base = rows[0]
    for row in rows:
        row["streaming_growth"] = row["streaming_mib"] / base["streaming_mib"]
        row["whole_growth"] = row["whole_mib"] / base["whole_mib"]
    return rows


def lq_frames(hq: Iterable[np.ndarray], scale: int = 4) -> Iterator[np.ndarray]:
    """The LQ clip's frames: each HQ frame downsampled as the VSR task degrades it (MATLAB bicubic)."""
    from s2svr_lightning.data.degradations import bicubic_downsample
    from s2svr_lightning.utils import to_float_frames, to_uint8_frames

    for frame in hq:
        lq = bicubic_downsample(to_float_frames(torch.from_numpy(frame), channels_last=True), scale)
        yield to_uint8_frames(lq, channels_last=True).numpy()


def cli_command(ckpt: Path, mode: str, clips: dict[str, Path], output: Path) -> list[str]:
    """The measured command: ``s2svr-restore`` as ``python -m s2svr_lightning.restore`` (same entry point)."""
    cmd = [sys.executable, "-m", "s2svr_lightning.restore", "--ckpt", str(ckpt)]
    if mode == "degrade":
        cmd += [str(clips["hq"]), str(output), "--degrade"]
    elif mode == "reference":
        cmd += [str(clips["lq"]), str(output), "--reference", str(clips["hq"])]
    else:
        raise ValueError(f"expected a mode in {CLI_MODES}, got {mode!r}")
    return [*cmd, "--no-progress", "--threads", "1", "--overwrite"]


def bench_cli(
    *,
    lengths: Sequence[int] = CLI_LENGTHS,
    lq_size: tuple[int, int] = CLI_LQ_SIZE,
    modes: Sequence[str] = CLI_MODES,
    repeats: int = REPEATS,
    overrides: dict | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One row per (frames, mode): each repeat's peak RSS (MiB), their median and spread, the median
    against the shortest clip's, and the wall time per run."""
    rows = []
    scale = 4
    hq_size = (lq_size[0] * scale, lq_size[1] * scale)
    with tempfile.TemporaryDirectory(prefix="s2svr_mem_cli_") as tmp:
        tmp = Path(tmp)
        ckpt = save_untrained_checkpoint(
            tmp / "restorer.ckpt",
            overrides=OVERRIDES if overrides is None else overrides,
            flow_input="native",
        )
        for n in lengths:
            log(f"writing {n}-frame clips ({hq_size[0]}x{hq_size[1]} HQ, {lq_size[0]}x{lq_size[1]} LQ) ...")
            clips = {
                "hq": write_clip(tmp / f"hq_{n}.mp4", panned_frames(n, hq_size)),
                "lq": write_clip(tmp / f"lq_{n}.mp4", lq_frames(panned_frames(n, hq_size), scale)),
            }
            for mode in modes:
                peaks, seconds = [], []
                for r in range(repeats):
                    log(f"{n} frames, {mode}, run {r + 1}/{repeats} ...")
                    peak, secs = run_measured(cli_command(ckpt, mode, clips, tmp / "out.mp4"))
                    peaks.append(peak / 2**20)
                    seconds.append(secs)
                rows.append(
                    {
                        "frames": n,
                        "mode": mode,
                        "peaks_mib": " / ".join(f"{p:.0f}" for p in peaks),
                        "median_mib": statistics.median(peaks),
                        "spread_mib": max(peaks) - min(peaks),
                        "seconds": statistics.median(seconds),
                        "peaks": peaks,
                    }
                )
    for row in rows:
        base = next(r for r in rows if r["mode"] == row["mode"])  # the shortest clip's row
        row["vs_shortest"] = row["median_mib"] / base["median_mib"]
    return rows


CLI_COLUMNS = [
    ("frames", "frames"),
    ("mode", "command"),
    ("peaks_mib", "peak RSS per run (MiB)"),
    ("median_mib", "median (MiB)"),
    ("spread_mib", "spread (MiB)"),
    ("vs_shortest", "median vs shortest"),
    ("seconds", "s per run"),
]


COLUMNS = [
    ("frames", "frames"),
    ("streaming_mib", "streaming peak RSS (MiB)"),
    ("whole_mib", "whole-sequence peak RSS (MiB)"),
    ("whole_over_streaming", "whole / streaming"),
    ("streaming_growth", "streaming vs shortest"),
    ("whole_growth", "whole vs shortest"),
]


def quick_settings() -> dict:
    """--whole-sequence --quick."""
    return {"lengths": (8, 16, 32), "size": (32, 48), "overrides": {"channels": 8, "num_blocks": 1}}


def quick_cli_settings() -> dict:
    """--quick: short clips, tiny frames, a tiny network, two runs each."""
    return {
        "lengths": (4, 8),
        "lq_size": (16, 24),
        "repeats": 2,
        "overrides": {"channels": 8, "num_blocks": 1},
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short videos, tiny network: a smoke run")
    p.add_argument("--repeats", type=int, default=None, help=f"runs per row (default {REPEATS})")
    p.add_argument(
        "--modes",
        default=",".join(CLI_MODES),
        help="the commands to measure: degrade, reference (default both)",
    )
    p.add_argument("--whole-sequence", action="store_true", help="streaming against a whole-sequence pass")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    p.add_argument("--whole", nargs=3, metavar=("CKPT", "VIDEO", "OUTPUT"), help=argparse.SUPPRESS)
    p.add_argument("--max-frames", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.whole:
        whole_sequence_child(*args.whole, max_frames=args.max_frames)
        return 0
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.whole_sequence:
        rows = bench_memory(log=log, **(quick_settings() if args.quick else {}))
        print(markdown_table(rows, COLUMNS))
    else:
        settings = quick_cli_settings() if args.quick else {}
        if args.repeats is not None:
            settings["repeats"] = args.repeats
        settings["modes"] = [m for m in args.modes.split(",") if m]
        rows = bench_cli(log=log, **settings)
        print(markdown_table(rows, CLI_COLUMNS))
    if args.json:
        write_json(Path(args.json), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
