"""Several processes on one video (``s2svr-restore --workers N``): how far the output is from one stream's,
against the warm-up K (``--warmup-frames``), and what the warm-up costs.

A clip with motion (a real photograph panned on a smooth closed path, ``memory.panned_frames``: up to
2 LQ px per frame, about the demo's training motion) is written as H.264 with an AAC track, and restored
with ``--degrade`` (the checkpoint's task makes the LQ input; the clip is the reference) once as one
stream and once per K with N workers, every output lossless (FFV1) so that only the restoration differs.
Per K:

- ``vs_stream_db``: PSNR of the segmented output against the one-stream output, of the mean squared error
  over every frame (8-bit RGB; 60 dB is identical, the cap of ``s2svr_lightning.metrics.psnr``);
- ``join_min_db``: the lowest per-frame PSNR against the one stream (at a join: a segment's first
  frames carry the least history);
- ``identical``: frames equal to the one stream's, bit for bit;
- ``ref_db``, ``ref_delta_db``: mean PSNR against the reference, and its difference to the one stream's
  (negative: the joins cost quality);
- ``extra``: frames restored and dropped as warm-up, over the clip's frames ((N - 1) K / T).

A second table gives each run's PSNR against the reference on the ten frames from the first join on (the
second segment's first frames), so that a warm-up's effect on the frames after a join can be read frame
by frame.

The default K is the smallest K whose mean PSNR against the reference is within 0.01 dB of the one
stream's and whose worst join frame is within 40 dB of it (``--warmup-frames`` docs say which it is).

Run: ``python benchmarks/segments.py --ckpt CKPT [--frames 120] [--workers 4] [--warmups 0,2,5,10,20]
[--json PATH]``; without ``--ckpt`` an untrained small network (its recurrence is not a trained one's:
a smoke run, not a measurement). ``make demo`` writes a trained checkpoint
(``outputs/demo/runs/<run>/restorer/checkpoints/final.ckpt``).
"""

from __future__ import annotations

import argparse
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

from memory import panned_frames, save_untrained_checkpoint, write_clip  # noqa: E402
from speed import markdown_table, num_threads  # noqa: E402

from s2svr_lightning.atomic import write_json  # noqa: E402
from s2svr_lightning.restore.segments import plan_segments  # noqa: E402

WARMUPS = (0, 2, 5, 10, 20)
FRAMES = 120
WORKERS = 4
LQ_SIZE = (96, 128)


def _frames(path: Path) -> torch.Tensor:
    """Every frame of a restored video, float ``(T, 3, H, W)``."""
    from s2svr_lightning.data.media.frames import open_source

    return torch.stack(list(open_source(path).frames))


def pooled_psnr(per_frame: torch.Tensor) -> float:
    """PSNR of the frames' mean squared error (not the mean of their PSNRs), at most 60 dB: per-frame
    PSNRs of 60 (identical frames, the cap) count as an MSE of 1e-6."""
    mse = torch.pow(10.0, -per_frame.double() / 10).mean()
    return float(min(60.0, -10 * torch.log10(mse)))


def bench_segments(
    ckpt: str | Path | None = None,
    *,
    frames: int = FRAMES,
    workers: int = WORKERS,
    warmups: Sequence[int] = WARMUPS,
    lq_size: tuple[int, int] = LQ_SIZE,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One row for the single stream, then one per K (the module docstring names the columns)."""
    from s2svr_lightning.checkpoint import load_restorer
    from s2svr_lightning.metrics import psnr
    from s2svr_lightning.restore import restore_video

    rows = []
    with tempfile.TemporaryDirectory(prefix="s2svr_segments_") as tmp:
        tmp = Path(tmp)
        if ckpt is None:
            ckpt = save_untrained_checkpoint(
                tmp / "restorer.ckpt", overrides={"channels": 16, "num_blocks": 1}
            )
        net, task = load_restorer(ckpt)
        hq_size = (lq_size[0] * task.scale, lq_size[1] * task.scale)
        log(f"writing a {frames}-frame {hq_size[0]}x{hq_size[1]} clip ...")
        clip = write_clip(tmp / "clip.mp4", panned_frames(frames, hq_size))
        common = {"degrade": True, "codec": "ffv1", "progress": False, "device": "cpu", "precision": "fp32"}

        def run(name: str, **changes) -> tuple[torch.Tensor, dict, float]:
            out = tmp / f"{name}.mkv"
            # one thread per stream: the one stream as each worker (torch's threads, shared among the
            # workers), so that no float rounding of another thread count tells them apart
            with num_threads(changes.get("workers", 1)):
                start = time.perf_counter()
                summary = restore_video(ckpt, clip, out, **common, **changes)
                seconds = time.perf_counter() - start
            restored = _frames(out)
            out.unlink()
            return restored, summary.metrics(), seconds

        log("one stream ...")
        stream, stream_metrics, stream_s = run("stream", net_and_task=(net, task))
        total = len(stream)
        rows.append(
            {
                "run": "one stream",
                "vs_stream_db": None,
                "join_min_db": None,
                "identical": f"{total}/{total}",
                "ref_db": stream_metrics["psnr"],
                "ref_delta_db": 0.0,
                "extra": 0.0,
                "seconds": stream_s,
                "per_frame_ref_db": stream_metrics["per_frame_psnr"],
            }
        )
        for k in warmups:
            log(f"{workers} workers, K = {k} ...")
            restored, metrics, seconds = run(f"k{k}", workers=workers, warmup_frames=k)
            if len(restored) != total:
                raise RuntimeError(f"expected {total} frames with K = {k}, got {len(restored)}")
            per_frame = psnr(restored, stream)
            same = sum(bool(torch.equal(a, b)) for a, b in zip(restored, stream))
            rows.append(
                {
                    "run": f"{workers} workers, K = {k}",
                    "warmup": k,
                    "vs_stream_db": pooled_psnr(per_frame),
                    "join_min_db": float(per_frame.min()),
                    "identical": f"{same}/{total}",
                    "ref_db": metrics["psnr"],
                    "ref_delta_db": metrics["psnr"] - stream_metrics["psnr"],
                    "extra": (min(workers, total) - 1) * k / total,
                    "seconds": seconds,
                    "per_frame_ref_db": metrics["per_frame_psnr"],
                }
            )
    return rows


def after_join(rows: Sequence[dict], workers: int, *, count: int = 10) -> tuple[int, list[dict]]:
    """``(j, rows)``: the first join's frame j (the second segment's first) and, per run, the PSNR against
    the reference of frames j to j + count - 1 (columns ``+0``, ``+1``, ...)."""
    total = len(rows[0]["per_frame_ref_db"])
    spans = plan_segments(total, workers, 0)
    join = spans[1].start if len(spans) > 1 else 0
    out = []
    for row in rows:
        values = row["per_frame_ref_db"][join : join + count]
        out.append({"run": row["run"], **{f"+{i}": f"{v:.2f}" for i, v in enumerate(values)}})
    return join, out


def display(rows: Sequence[dict]) -> list[dict]:
    """The rows as the table prints them: dB to 0.01 (the difference to one stream to 0.0001), extra in %."""

    def db(v, digits=2):
        return None if v is None else f"{v:.{digits}f}"

    return [
        {
            **row,
            **{k: db(row[k]) for k in ("vs_stream_db", "join_min_db", "ref_db")},
            "ref_delta_db": db(row["ref_delta_db"], 4),
            "extra": f"{100 * row['extra']:.1f}%",
        }
        for row in rows
    ]


def choose_warmup(
    rows: Sequence[dict], *, ref_tolerance: float = 0.01, join_floor: float = 40.0
) -> int | None:
    """The smallest K within ``ref_tolerance`` dB of the one stream against the reference and whose worst
    frame is at least ``join_floor`` dB from the one stream's (None: no K measured is)."""
    for row in rows:
        if "warmup" in row and abs(row["ref_delta_db"]) <= ref_tolerance and row["join_min_db"] >= join_floor:
            return int(row["warmup"])
    return None


COLUMNS = [
    ("run", "run"),
    ("vs_stream_db", "PSNR vs one stream (dB)"),
    ("join_min_db", "worst frame vs one stream (dB)"),
    ("identical", "frames identical"),
    ("ref_db", "PSNR vs reference (dB)"),
    ("ref_delta_db", "vs reference, minus one stream's (dB)"),
    ("extra", "frames restored extra"),
    ("seconds", "wall s"),
]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default=None, help="restorer checkpoint (default: an untrained small network)")
    p.add_argument("--frames", type=int, default=FRAMES, help=f"clip length (default {FRAMES})")
    p.add_argument("--workers", type=int, default=WORKERS, help=f"processes (default {WORKERS})")
    p.add_argument("--warmups", default=",".join(map(str, WARMUPS)), help="the K to measure, comma-separated")
    p.add_argument("--lq-size", default="96x128", help="LQ frame size HxW (default 96x128)")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.lq_size.split("x"))
    rows = bench_segments(
        args.ckpt,
        frames=args.frames,
        workers=args.workers,
        warmups=[int(k) for k in args.warmups.split(",")],
        lq_size=(h, w),
        log=lambda m: print(m, file=sys.stderr),
    )
    print(markdown_table(display(rows), COLUMNS))
    print(f"\nchosen K: {choose_warmup(rows)}")
    join, near = after_join(rows, args.workers)
    last = join + len(near[0]) - 2
    print(f"\nPSNR against the reference (dB) of frames {join} to {last}, from the first join on:\n")
    print(markdown_table(near, [("run", "run"), *((k, k) for k in near[0] if k != "run")]))
    if args.json:
        write_json(Path(args.json), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
