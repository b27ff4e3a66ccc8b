"""Peak resident memory of ``restore``: streaming against a whole-sequence pass, at 50, 200 and 800 frames.

One synthetic video (a real photograph panned smoothly, written with ``video_io``) of the longest length
is restored in fresh subprocesses, each on one thread (the memory does not depend on it, and two threads
on a shared machine are much slower):

- streaming: ``python -m s2svr_lightning.restore --ckpt CKPT VIDEO OUT.mp4 --max-frames N``, the command
  users run;
- whole sequence: this script's ``--whole`` child, which decodes the first N frames into one tensor,
  runs ``S2SVR.forward`` on it in one pass and encodes the output (what tools that load the whole video
  do), with the same checkpoint, reader and writer.

The peak resident set size of each child is read from the kernel's accounting of that process alone
(``os.wait4``: ``ru_maxrss`` of the waited child, forked from a small launcher process so that no parent's
memory is counted). Every figure comes from the same run, side by side.
The network is the VSR builder narrowed to a small width (``channels=16, num_blocks=1``) and untrained:
memory growth is a property of the inference scheme, and a small network keeps 800 frames quick.

Run: ``python benchmarks/memory.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import markdown_table, photo_clip  # noqa: E402

LENGTHS = (50, 200, 800)
MODEL = "s2svr_vsr"
OVERRIDES = {"channels": 16, "num_blocks": 1}
LQ_SIZE = (64, 96)


def save_untrained_checkpoint(
    path: str | os.PathLike, *, model: str = MODEL, overrides: dict | None = None
) -> Path:
    """A restorer checkpoint of an untrained network with a builder's configuration (as the pipeline
    would write it: ``s2svr_kind``, hyperparameters, weights), for benchmarks that do not need training."""
    import lightning as L

    from s2svr_lightning.lit.restorer import RestorerModule

    torch.manual_seed(0)
    module = RestorerModule(model=model, model_overrides=overrides or {}, total_steps=1)
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


def write_clip(path: str | os.PathLike, num_frames: int, size: tuple[int, int], *, fps: int = 25) -> Path:
    """Write a panned-photograph video of ``num_frames`` frames at ``size`` (lossless-ish x264, crf 0)."""
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
        video = write_clip(tmp / "input.mp4", max(lengths), size)
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


COLUMNS = [
    ("frames", "frames"),
    ("streaming_mib", "streaming peak RSS (MiB)"),
    ("whole_mib", "whole-sequence peak RSS (MiB)"),
    ("whole_over_streaming", "whole / streaming"),
    ("streaming_growth", "streaming vs shortest"),
    ("whole_growth", "whole vs shortest"),
]


def quick_settings() -> dict:
    return {"lengths": (8, 16, 32), "size": (32, 48), "overrides": {"channels": 8, "num_blocks": 1}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short videos, tiny network: a smoke run")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    p.add_argument("--whole", nargs=3, metavar=("CKPT", "VIDEO", "OUTPUT"), help=argparse.SUPPRESS)
    p.add_argument("--max-frames", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.whole:
        whole_sequence_child(*args.whole, max_frames=args.max_frames)
        return 0
    rows = bench_memory(log=lambda m: print(m, file=sys.stderr), **(quick_settings() if args.quick else {}))
    print(markdown_table(rows, COLUMNS))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
