"""``s2svr-restore`` on many inputs: each video, frame folder or folder of videos into one output folder.

``s2svr-restore --ckpt CKPT in1.mp4 in2.mkv vids/ -o OUTDIR`` (or ``s2svr-restore --ckpt CKPT vids/
OUTDIR`` for one folder of videos). The checkpoint is loaded once; each input is restored with
:func:`~s2svr_lightning.restore.run.restore_video` into ``OUTDIR/<name>.<ext>`` (a frame folder
``OUTDIR/<name>/`` with ``--format png``). An output that exists is complete (outputs are written
atomically), so it is skipped unless ``--overwrite``: a rerun resumes an interrupted batch. A bad input
is reported and the others go on; the run ends with a table (file, frames, fps, seconds, status and
PSNR with ``--reference``) and exits 1 naming the inputs that failed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..checkpoint import load_restorer
from ..data.errors import DatasetError
from ..data.media.image_io import IMAGE_EXTENSIONS
from ..data.media.video_io import is_video_file
from .options import RestoreOptions
from .run import restore_video

__all__ = [
    "BatchItem",
    "collect_inputs",
    "is_video_folder",
    "output_for",
    "restore_batch",
    "run_batch",
]

# containers a restored video keeps from its source; others (.avi, .ts, ...) become .mkv, which takes
# any codec and most audio codecs as they are
_KEPT_CONTAINERS = (".mp4", ".mkv", ".mov")


@dataclass
class BatchItem:
    """One input of a batch and what became of it."""

    input: Path
    output: Path | None = None
    status: str = "pending"  # done | skipped | failed
    frames: int | None = None
    fps: float | None = None
    seconds: float | None = None
    psnr: float | None = None
    error: str | None = None
    metrics: dict[str, Any] | None = None


def _video_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and is_video_file(p) and not p.name.startswith(".")
    )


def _is_frame_folder(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir() if p.is_file())


def is_video_folder(path: str | Path) -> bool:
    """A folder holding video files and no frame images (a folder with images is one frame-folder input)."""
    path = Path(path)
    return path.is_dir() and not _is_frame_folder(path) and bool(_video_files(path))


def collect_inputs(paths: list[str | Path]) -> list[BatchItem]:
    """The batch's inputs in order: a video file or frame folder as given, a folder of videos as its videos
    (sorted by name). A path that is none of these is an item that failed, so the others still run."""
    items: list[BatchItem] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            items.append(BatchItem(path, status="failed", error=f"input {path} does not exist"))
        elif path.is_dir() and not _is_frame_folder(path):
            videos = _video_files(path)
            if not videos:
                error = f"{path}: expected a folder of videos or of frame images, got neither"
                items.append(BatchItem(path, status="failed", error=error))
            items.extend(BatchItem(v) for v in videos)
        else:
            items.append(BatchItem(path))
    return items


def output_for(input: Path, outdir: Path, fmt: str | None, codec: str | None) -> Path:
    """``OUTDIR/<name>.<ext>``: ``fmt`` if given (``png``: the frame folder ``OUTDIR/<name>``), else
    ``.mkv`` for FFV1, else the source's container if mp4/mkv/mov, else ``.mkv`` (``.mp4`` for frames)."""
    name = input.stem if input.is_file() else input.name
    if fmt == "png":
        return outdir / name
    if fmt is not None:
        return outdir / f"{name}.{fmt}"
    if codec == "ffv1":
        return outdir / f"{name}.mkv"
    if input.is_dir():
        return outdir / f"{name}.mp4"
    suffix = input.suffix.lower()
    return outdir / f"{name}{suffix if suffix in _KEPT_CONTAINERS else '.mkv'}"


def _reference_for(item: BatchItem, reference: Path) -> Path:
    """The reference of an input in a reference folder: same name, any video extension or a frame folder."""
    name = item.input.stem if item.input.is_file() else item.input.name
    candidates = [reference / name] if (reference / name).is_dir() else []
    candidates += [p for p in _video_files(reference) if p.stem == name]
    if len(candidates) != 1:
        got = "none" if not candidates else ", ".join(str(c) for c in candidates)
        raise DatasetError(f"expected one reference named {name} in {reference}, got {got}")
    return candidates[0]


def run_batch(
    ckpt: str | os.PathLike,
    inputs: list[str],
    outdir: Path,
    options: RestoreOptions,
    *,
    reference: str | os.PathLike | None = None,
    net_and_task: tuple[Any, Any] | None = None,
) -> tuple[list[BatchItem], int]:
    """Restore every input into ``outdir``; returns the items and the exit code (0, or 1 if any failed).

    Every input is restored with the same ``options`` (:func:`~s2svr_lightning.restore.run.restore_video`);
    ``reference`` is a folder of references named as the inputs; ``net_and_task`` is the loaded checkpoint
    (read from ``ckpt`` once if not given). ``KeyboardInterrupt`` stops the batch (the current output's
    partial is removed; finished ones stay).
    """
    if not outdir.exists():
        outdir.mkdir(parents=True)
    elif not outdir.is_dir():
        raise ValueError(f"expected -o/--output-dir a folder, got the file {outdir}")
    reference = Path(reference) if reference is not None else None
    if reference is not None and not reference.is_dir():
        raise ValueError(
            f"expected --reference a folder of references (named as the inputs), got {reference}"
        )
    if net_and_task is None:
        net_and_task = load_restorer(ckpt)
    items = collect_inputs(inputs)
    seen: dict[Path, Path] = {}
    for item in items:
        if item.status == "failed":
            continue
        item.output = output_for(item.input, outdir, options.format, options.codec)
        if item.output in seen:
            item.status = "failed"
            item.error = f"its output {item.output} is also that of {seen[item.output]}; rename one"
            continue
        seen[item.output] = item.input
        if item.output.resolve() == item.input.resolve():
            item.status = "failed"
            item.error = f"its output would replace it in {outdir}; choose another -o/--output-dir"
            continue
        if item.output.exists() and not options.overwrite:
            item.status = "skipped"
            continue
        try:
            ref = _reference_for(item, reference) if reference is not None else None
            summary = restore_video(
                ckpt, item.input, item.output, options, reference=ref, net_and_task=net_and_task
            )
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:  # one bad input must not stop the batch: report it and go on
            item.status = "failed"
            item.error = (
                str(err) if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {err}"
            )
            continue
        item.status = "done"
        item.frames, item.fps, item.seconds = summary.frames, summary.video_fps, summary.seconds
        item.metrics = summary.metrics()
        item.psnr = item.metrics["psnr"]
    return items, 1 if any(i.status == "failed" for i in items) else 0


def batch_table(items: list[BatchItem], *, scored: bool) -> str:
    """The per-file summary: file, frames, fps (the video's), seconds (wall), PSNR (``scored``), status."""
    head = ["file", "frames", "fps", "seconds", *(["PSNR"] if scored else []), "status"]
    rows = [head]
    for i in items:
        rows.append(
            [
                str(i.input),
                "-" if i.frames is None else str(i.frames),
                "-" if i.fps is None else f"{i.fps:.3f}",
                "-" if i.seconds is None else f"{i.seconds:.1f}",
                *(["-" if i.psnr is None else f"{i.psnr:.2f}"] if scored else []),
                i.status if i.error is None else f"{i.status}: {i.error}",
            ]
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(head) - 1)]  # the status runs on unpadded
    return "\n".join("  ".join([*(v.ljust(w) for v, w in zip(r, widths)), r[-1]]) for r in rows)


def report(items: list[BatchItem], code: int, *, scored: bool) -> None:
    """Print the table to stdout and, if any failed, one line naming them to stderr."""
    print(batch_table(items, scored=scored))
    failed = [str(i.input) for i in items if i.status == "failed"]
    done = sum(i.status == "done" for i in items)
    skipped = sum(i.status == "skipped" for i in items)
    print(f"{done} restored, {skipped} skipped (already done; --overwrite redoes them), {len(failed)} failed")
    if code:
        print(
            f"s2svr-restore: error: {len(failed)} of {len(items)} inputs failed: {', '.join(failed)}",
            file=sys.stderr,
        )


def restore_batch(
    ckpt: str | os.PathLike,
    inputs: list[str],
    outdir: Path,
    options: RestoreOptions,
    *,
    reference: str | os.PathLike | None = None,
    metrics_json: str | os.PathLike | None = None,
) -> int:
    """The command line's batch form: the checkpoint is read once, a bad input does not stop the others;
    prints the table (and writes ``metrics_json`` as ``{input: metrics}``); returns the exit code."""
    net_and_task = load_restorer(ckpt)  # a bad checkpoint fails every input: refuse it at once
    items, code = run_batch(ckpt, inputs, outdir, options, reference=reference, net_and_task=net_and_task)
    report(items, code, scored=reference is not None or options.degrade)
    if metrics_json is not None:
        payload = {
            str(i.input): i.metrics if i.metrics is not None else {"status": i.status, "error": i.error}
            for i in items
        }
        write_json(Path(metrics_json), payload)
    return code
