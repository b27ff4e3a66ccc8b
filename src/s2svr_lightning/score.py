"""``s2svr-score PRED GT``: score anyone's restored video against ground truth, with the test stage's numbers.

``python -m s2svr_lightning.score PRED GT [--task vsr_reds4 | --channel y --border 4 --reduction frame]``.

- PRED and GT: a video file or a folder of frames each (one clip), or folders of clips (videos and/or
  frame folders, at any depth), matched by name (``GT/000/`` with ``PRED/000/`` or ``PRED/000.mkv``).
  Within a clip, frames are matched by file name when both sides are frame folders (``--match order``:
  by position), and must agree in count and size; anything that does not is a one-line error naming the
  file.
- Conventions: ``--task NAME`` reads ``metrics:`` (``y_channel``, ``border``, ``reduction``) from the
  library's task config (``conf/task/NAME.yaml``, or a YAML path); ``--channel``, ``--border`` and
  ``--reduction`` set or override them. PSNR and SSIM are :class:`~s2svr_lightning.metrics.VideoMetrics`,
  the test stage's accumulator, on the frames rounded to 8 bits: scoring the PNGs the test stage saves
  gives its numbers exactly.
- Temporal consistency (:mod:`s2svr_lightning.temporal`): the warping error with the flow estimated on GT
  (occlusion-masked by the forward-backward check) and tOF; ``--flow tvl1`` (default; scikit-image, CPU)
  or a teacher / student / restorer checkpoint (``--device cuda`` for large frames); ``--temporal warp``
  leaves out tOF, ``--temporal off`` both.
- Out: a summary table on stdout; with ``--out DIR``: ``per_frame.csv``, ``per_sequence.csv``,
  ``summary.json`` and ``plots/<sequence>.png`` (PSNR and warping error over time).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .commands import command_parser

__all__ = ["Clip", "ScoreResult", "build_parser", "find_clips", "main", "metric_conventions", "score"]

_CHANNELS = {"y": True, "rgb": False}
_SEQUENCE_COLUMNS = ("sequence", "frames", "psnr", "ssim", "warp_error", "tof")
_FRAME_COLUMNS = ("sequence", "frame", "name", "psnr", "ssim", "warp_error", "tof")


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------
@dataclass
class Clip:
    """One video file or frame folder.

    Attributes:
        name: the clip's key (its path below the root, without a video's suffix).
        path: the file or folder.
        files: the frame files of a folder in natural order; ``None`` for a video.
    """

    name: str
    path: Path
    files: list[Path] | None = None

    def __len__(self) -> int:
        if self.files is not None:
            return len(self.files)
        from s2svr_lightning.data import VideoReader

        with VideoReader(self.path) as reader:
            return len(reader)

    def frame_names(self) -> list[str]:
        """Frame file stems (a folder) or 8-digit indices (a video)."""
        if self.files is not None:
            return [f.stem for f in self.files]
        return [f"{i:08d}" for i in range(len(self))]

    def where(self, index: int) -> str:
        """A frame's file (or the video and the frame number), for messages."""
        return str(self.files[index]) if self.files is not None else f"{self.path} (frame {index})"

    def frames(self) -> Iterator[torch.Tensor]:
        """Float ``(3, H, W)`` frames in [0, 1], one at a time (the library's readers)."""
        from s2svr_lightning.data import open_source

        return open_source(self.path).frames


def _is_video(path: Path) -> bool:
    from s2svr_lightning.data.media.video_io import VIDEO_EXTENSIONS

    return path.suffix.lower() in VIDEO_EXTENSIONS


def _images_in(folder: Path) -> list[Path]:
    from s2svr_lightning.data import list_frame_files
    from s2svr_lightning.data.media.image_io import IMAGE_EXTENSIONS

    if any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir()):
        return list_frame_files(folder)
    return []


def find_clips(root: str | os.PathLike, what: str = "input") -> tuple[dict[str, Clip], bool]:
    """The clips of ``root``: ``({name: Clip}, single)``.

    A video file or a folder holding frames is one clip (``single``); otherwise every frame folder and
    video below ``root`` is one, named by its path below ``root`` (a video without its suffix).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{what} {root} does not exist")
    if root.is_file():
        if not _is_video(root):
            raise ValueError(f"{what} {root}: expected a video file or a folder of frames or clips")
        return {root.stem: Clip(root.stem, root)}, True
    files = _images_in(root)
    if files:
        return {root.name: Clip(root.name, root, files)}, True
    clips: dict[str, Clip] = {}
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        here = Path(folder)
        if here != root:
            files = _images_in(here)
            if files:
                dirs.clear()  # a frame folder is a leaf clip
                key = here.relative_to(root).as_posix()
                clips[key] = Clip(key, here, files)
                continue
        for name in sorted(names):
            path = here / name
            if _is_video(path):
                key = path.relative_to(root).with_suffix("").as_posix()
                if key in clips:
                    raise ValueError(f"{what} {root}: two clips named {key!r} ({clips[key].path} and {path})")
                clips[key] = Clip(key, path)
    if not clips:
        raise ValueError(f"{what} {root}: no video files and no folders of frames in it")
    return clips, False


def pair_clips(pred: str | os.PathLike, gt: str | os.PathLike) -> list[tuple[Clip, Clip]]:
    """``(pred clip, gt clip)`` pairs: the one clip of each, or clips matched by name (sorted)."""
    pred_clips, pred_single = find_clips(pred, "PRED")
    gt_clips, gt_single = find_clips(gt, "GT")
    if pred_single and gt_single:
        return [(next(iter(pred_clips.values())), next(iter(gt_clips.values())))]
    if pred_single != gt_single:
        one, many = (pred, gt) if pred_single else (gt, pred)
        raise ValueError(
            f"{one} is one clip but {many} is a folder of clips: pass two clips or two folders of clips"
        )
    missing = sorted(set(gt_clips) - set(pred_clips))
    if missing:
        raise ValueError(
            f"{pred}: no clip named {missing[0]!r} (GT has {gt_clips[missing[0]].path}; "
            f"{len(missing)} of {len(gt_clips)} GT clips missing)"
        )
    extra = sorted(set(pred_clips) - set(gt_clips))
    if extra:
        raise ValueError(f"{pred_clips[extra[0]].path}: no clip of that name in GT {gt}")
    return [(pred_clips[k], gt_clips[k]) for k in sorted(gt_clips)]


def check_pair(pred: Clip, gt: Clip, *, match: str = "name") -> list[str]:
    """Frame names of a matched pair, after checking counts and (``match="name"``) names."""
    n_pred, n_gt = len(pred), len(gt)
    if n_pred != n_gt:
        raise ValueError(f"{pred.path}: {n_pred} frames, but GT {gt.path} has {n_gt}")
    names = pred.frame_names()
    if match == "name" and pred.files is not None and gt.files is not None:
        for i, (a, b) in enumerate(zip(names, gt.frame_names())):
            if a != b:
                raise ValueError(
                    f"{pred.files[i]}: frame {i} is named {a!r} but GT's is {gt.files[i].name!r} "
                    "(frames are matched by name; --match order pairs them by position)"
                )
    return names


# --------------------------------------------------------------------------------------------------
# Conventions
# --------------------------------------------------------------------------------------------------
def metric_conventions(
    task: str | None = None,
    *,
    channel: str | None = None,
    border: int | None = None,
    reduction: str | None = None,
) -> dict[str, Any]:
    """``{"y_channel", "border", "reduction"}``: a task config's ``metrics:`` (``conf/task/<task>.yaml``
    or a YAML path), overridden by the options given; defaults RGB, 0, ``sequence``."""
    conv: dict[str, Any] = {"y_channel": False, "border": 0, "reduction": "sequence"}
    if task is not None:
        from omegaconf import OmegaConf

        path = Path(task)
        if not path.is_file():
            from importlib.resources import files

            path = Path(str(files("s2svr_lightning.conf") / "task" / f"{task}.yaml"))
            if not path.is_file():
                names = sorted(p.stem for p in path.parent.glob("*.yaml"))
                raise ValueError(f"--task {task}: no such task config (known: {', '.join(names)})")
        metrics = OmegaConf.to_container(OmegaConf.load(path)).get("metrics")
        if not isinstance(metrics, Mapping):
            raise ValueError(f"--task {task}: {path} has no metrics: section (y_channel, border, reduction)")
        unknown = sorted(set(metrics) - set(conv))
        if unknown:
            raise ValueError(f"--task {task}: unknown metric options {unknown} in {path}")
        conv.update(metrics)
    if channel is not None:
        if channel not in _CHANNELS:
            raise ValueError(f"expected --channel y or rgb, got {channel!r}")
        conv["y_channel"] = _CHANNELS[channel]
    if border is not None:
        conv["border"] = border
    if reduction is not None:
        conv["reduction"] = reduction
    conv["y_channel"], conv["border"] = bool(conv["y_channel"]), int(conv["border"])
    if conv["border"] < 0:
        raise ValueError(f"expected --border >= 0, got {conv['border']}")
    if conv["reduction"] not in ("sequence", "frame"):
        raise ValueError(f"expected --reduction sequence or frame, got {conv['reduction']!r}")
    return conv


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------
@dataclass
class ScoreResult:
    """What :func:`score` found: overall means, one row per sequence and one per frame."""

    summary: dict[str, Any]
    per_sequence: list[dict[str, Any]]
    per_frame: list[dict[str, Any]]


def _read_pairs(pred: Clip, gt: Clip) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Matched frames of a clip pair; a frame of another size is an error naming it."""
    for i, (p, g) in enumerate(zip(pred.frames(), gt.frames())):
        if p.shape != g.shape:
            raise ValueError(
                f"{pred.where(i)}: frame is {p.shape[-2]}x{p.shape[-1]}, but GT {gt.where(i)} is "
                f"{g.shape[-2]}x{g.shape[-1]}"
            )
        yield p, g


def score(
    pred: str | os.PathLike,
    gt: str | os.PathLike,
    *,
    y_channel: bool = False,
    border: int = 0,
    reduction: str = "sequence",
    temporal: str = "full",
    flow: str | os.PathLike | None = "tvl1",
    match: str = "name",
    device: str | torch.device = "cpu",
    chunk: int = 16,
) -> ScoreResult:
    """Score PRED against GT (see the module notes); the function behind ``s2svr-score``.

    Args:
        pred, gt: a clip each (video or frame folder) or folders of clips matched by name.
        y_channel, border, reduction: the metric conventions (:func:`metric_conventions`).
        temporal: ``"full"`` (warping error and tOF), ``"warp"`` or ``"off"``.
        flow: the flow estimator (:func:`~s2svr_lightning.flow_estimators.flow_estimator`): ``"tvl1"`` or a
            checkpoint path.
        match: ``"name"`` or ``"order"``: how frames of two frame folders are paired.
        device: where flow networks run.
        chunk: frames held in memory at a time.
    """
    from s2svr_lightning.flow_estimators import flow_estimator
    from s2svr_lightning.metrics import VideoMetrics
    from s2svr_lightning.temporal import TemporalMetrics, merge_rows

    if temporal not in ("full", "warp", "off"):
        raise ValueError(f"expected --temporal full, warp or off, got {temporal!r}")
    if match not in ("name", "order"):
        raise ValueError(f"expected --match name or order, got {match!r}")
    if chunk < 1:
        raise ValueError(f"expected --chunk >= 1, got {chunk}")
    pairs = pair_clips(pred, gt)
    names = {p.name: check_pair(p, g, match=match) for p, g in pairs}  # every clip checked before scoring
    estimator = flow_estimator(flow) if temporal != "off" else None
    if temporal != "off" and estimator is None:
        raise ValueError(f"expected a flow estimator for --temporal {temporal}, got --flow {flow}")
    conv = {"y_channel": y_channel, "border": border, "reduction": reduction}
    video = VideoMetrics(**conv)
    temp = TemporalMetrics(**conv, mode=temporal, estimator=estimator)
    for p, g in pairs:
        previous: tuple[torch.Tensor, torch.Tensor] | None = None
        start = 0
        frames = _read_pairs(p, g)
        while True:
            block = [pair for _, pair in zip(range(chunk), frames)]
            if not block:
                break
            out = torch.stack([b[0] for b in block])
            ref = torch.stack([b[1] for b in block])
            index = torch.arange(start, start + len(block))
            video.update(out[None], ref[None], p.name, frame_index=index[None])
            if temporal != "off":
                # the previous block's last frame leads, unscored, so that the pair across blocks counts
                if previous is not None:
                    out_t, ref_t = torch.cat((previous[0], out)), torch.cat((previous[1], ref))
                    index_t = torch.cat((index[:1] - 1, index))
                    mask = index_t >= start
                else:
                    out_t, ref_t, index_t, mask = out, ref, index, None
                temp.update(
                    out_t[None].to(device),
                    ref_t[None].to(device),
                    p.name,
                    frame_index=index_t[None],
                    mask=None if mask is None else mask[None],
                )
            previous = (out[-1:], ref[-1:])
            start += len(block)
    overall = {k: float(v) for k, v in video.compute().items()}
    seq_rows = [{"sequence": k, **v} for k, v in sorted(video.per_sequence().items())]
    frame_rows = [{**r, "name": names[r["sequence"]][r["frame"]]} for r in video.per_frame()]
    if temporal != "off":
        overall.update(temp.summary())
        per_seq_t = temp.per_sequence()
        seq_rows = [{**r, **per_seq_t.get(r["sequence"], {})} for r in seq_rows]
        frame_rows = merge_rows(frame_rows, temp.per_frame())
    summary = {
        "pred": str(pred),
        "gt": str(gt),
        "conventions": {**conv, "temporal": temporal, "flow": None if estimator is None else str(flow)},
        **overall,
    }
    return ScoreResult(summary=summary, per_sequence=seq_rows, per_frame=frame_rows)


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
def _fmt(value: Any, spec: str, width: int) -> str:
    """``value`` as ``spec``, right-aligned in ``width``; ``-`` if missing, ``inf`` for identical frames."""
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).rjust(width)
    return format(value, spec).rjust(width)


def summary_table(result: ScoreResult) -> str:
    """The per-sequence rows and the overall line, as printed."""
    s = result.summary
    conv = s["conventions"]
    columns = [("PSNR", "psnr", ".3f", 8), ("SSIM", "ssim", ".4f", 7)]
    if conv["temporal"] != "off":
        columns.append(("warp err", "warp_error", ".3e", 10))
    if conv["temporal"] == "full":
        columns.append(("tOF", "tof", ".3f", 7))

    def line(name: str, frames: Any, row: Mapping[str, Any]) -> str:
        cells = [_fmt(row.get(key), spec, width) for _, key, spec, width in columns]
        return " ".join([f"{name:<20}", f"{frames:>6}", *cells])

    lines = [" ".join([f"{'sequence':<20}", f"{'frames':>6}", *(f"{h:>{w}}" for h, _, _, w in columns)])]
    lines += [line(str(row["sequence"])[:20], row["frames"], row) for row in result.per_sequence]
    mean = "mean" if conv["reduction"] == "sequence" else "pooled frames"
    lines.append(line(mean, int(s["num_frames"]), s))
    notes = [
        "Y (BT.601)" if conv["y_channel"] else "RGB",
        f"border {conv['border']}",
        f"reduction {conv['reduction']}",
    ]
    if conv["temporal"] != "off":
        notes.append(f"warping error: MSE on [0, 1] under GT's flow ({conv['flow']})")
    if conv["temporal"] == "full":
        notes.append("tOF: mean EPE in px")
    lines.append("; ".join(notes))
    return "\n".join(lines)


def write_outputs(result: ScoreResult, out_dir: str | os.PathLike, *, plots: bool = True) -> Path:
    """Write ``per_frame.csv``, ``per_sequence.csv``, ``summary.json`` and ``plots/<sequence>.png``."""
    from s2svr_lightning.atomic import write_csv, write_json

    out = Path(out_dir)
    write_csv(out / "per_frame.csv", result.per_frame, _FRAME_COLUMNS)
    write_csv(out / "per_sequence.csv", result.per_sequence, _SEQUENCE_COLUMNS)
    write_json(
        out / "summary.json",
        {**result.summary, "per_sequence": {r["sequence"]: r for r in result.per_sequence}},
    )
    if plots:
        from s2svr_lightning.temporal import plot_sequence

        groups: dict[str, list[dict[str, Any]]] = {}
        for row in result.per_frame:
            groups.setdefault(str(row["sequence"]), []).append(row)
        for key, rows in groups.items():
            plot_sequence(out / "plots" / f"{key}.png", rows, title=key)
    return out


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        prog="s2svr-score",
        description="Score restored video (PRED) against ground truth (GT): PSNR / SSIM with a benchmark's "
        "conventions, the test stage's numbers, and temporal consistency (warping error, tOF).",
    )
    p.add_argument("pred", metavar="PRED", help="restored video, frame folder, or folder of clips")
    p.add_argument("gt", metavar="GT", help="ground truth, as PRED (clips matched by name)")
    p.add_argument(
        "--task",
        default=None,
        help="take y_channel / border / reduction from this task config's metrics: (vsr_reds4, vsr_vimeo, "
        "deblur_gopro, cve_mfqe, demo, ...; or a YAML path)",
    )
    p.add_argument("--channel", choices=("y", "rgb"), default=None, help="score Y (BT.601) or RGB")
    p.add_argument("--border", type=int, default=None, help="pixels cropped from each side (default 0)")
    p.add_argument(
        "--reduction",
        choices=("sequence", "frame"),
        default=None,
        help="mean per sequence then over sequences (default), or all frames pooled",
    )
    p.add_argument(
        "--temporal",
        choices=("full", "warp", "off"),
        default="full",
        help="temporal metrics: warping error and tOF (default), the warping error only, or none",
    )
    p.add_argument(
        "--flow",
        default="tvl1",
        help="flow estimator of the temporal metrics: tvl1 (scikit-image, CPU; default) or a teacher / "
        "student / restorer checkpoint",
    )
    p.add_argument("--device", default="cpu", help="device of a checkpoint's flow net (cpu, cuda, ...)")
    p.add_argument(
        "--match",
        choices=("name", "order"),
        default="name",
        help="pair the frames of two frame folders by file name (default) or by position",
    )
    p.add_argument("--chunk", type=int, default=16, help="frames held in memory at a time (default 16)")
    p.add_argument(
        "--out",
        default=None,
        help="write per_frame.csv, per_sequence.csv, summary.json and plots/ into this folder",
    )
    p.add_argument("--no-plots", action="store_true", help="with --out: no plots/")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``s2svr-score`` / ``python -m s2svr_lightning.score``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        conv = metric_conventions(
            args.task, channel=args.channel, border=args.border, reduction=args.reduction
        )
        result = score(
            args.pred,
            args.gt,
            **conv,
            temporal=args.temporal,
            flow=args.flow,
            match=args.match,
            device=args.device,
            chunk=args.chunk,
        )
        if args.out is not None:
            write_outputs(result, args.out, plots=not args.no_plots)
    except (ValueError, OSError) as err:
        print(f"s2svr-score: error: {err}", file=sys.stderr)
        return 2
    print(summary_table(result))
    if args.out is not None:
        print(f"per-frame and per-sequence scores in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
