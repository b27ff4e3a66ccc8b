"""REDS: regroup the download into the layout the ``reds`` loader reads, and check it.

REDS ships 240 training clips (``train_sharp/000..239``) and 30 validation clips (``val_sharp/000..029``),
each with its MATLAB-bicubic x4 version (``*_sharp_bicubic/X4``). The usual recipe (BasicSR's
``regroup_reds_dataset``, used by EDVR, BasicVSR and S2SVR) moves the validation clips into the training
folders as clips 240-269, so that one tree serves both partitions: REDS4 (clips 000, 011, 015, 020 held
out as the test set, 266 training clips) and the official one (240-269 held out). Clips are moved by
renaming whole folders (atomic, no copy), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

from ...task import default_scale
from ...utils import say
from ..datasets.reds import REDS4_CLIPS
from ..errors import DatasetError
from ..media.image_io import natural_key
from .common import CheckReport, SequenceCheck, atomic_rename, check_frame_pair, progress, run_checks

__all__ = ["prepare_reds", "check_reds", "VAL_OFFSET"]

VAL_OFFSET = 240  # validation clip k becomes training clip 240 + k
_FOLDERS = {"hq": "{split}_sharp", "lq": "{split}_sharp_bicubic/X4"}


def _find(root: Path, split: str, kind: str) -> Path | None:
    """A download folder, either at the root (``val_sharp``) or as unzipped (``val/val_sharp``)."""
    name = _FOLDERS[kind].format(split=split)
    for candidate in (root / name, root / split / name):
        if candidate.is_dir():
            return candidate
    return None


def _clips(folder: Path) -> list[str]:
    return sorted((p.name for p in folder.iterdir() if p.is_dir()), key=natural_key)


def _remove_empty_folders(root: Path) -> None:
    """The download folders the regrouping emptied (the deepest first)."""
    for name in (
        "val_sharp_bicubic/X4",
        "val_sharp_bicubic",
        "val_sharp",
        "val/val_sharp_bicubic/X4",
        "val/val_sharp_bicubic",
        "val/val_sharp",
        "val",
        "train/train_sharp_bicubic",
        "train",
    ):
        folder = root / name
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def prepare_reds(root: Path, **_: object) -> None:
    """Regroup ``root`` in place: the training folders at the root, the validation clips as 240-269."""
    moves: list[tuple[Path, Path]] = []
    for kind in ("hq", "lq"):
        target = root / _FOLDERS[kind].format(split="train")
        found = _find(root, "train", kind)
        if found is None:
            raise DatasetError(
                f"{target}: REDS training folder not found (nor under {root / 'train'}); expected the "
                "downloaded train_sharp and train_sharp_bicubic/X4 folders"
            )
        if found != target:  # unzipped as train/train_sharp: move the whole folder up
            moves.append((found, target))
        val = _find(root, "val", kind)
        if val is None:
            continue
        for clip in _clips(val):
            if not clip.isdigit() or not 0 <= int(clip) < 30:
                raise DatasetError(f"{val / clip}: unexpected REDS validation clip (expected 000-029)")
            destination = target / f"{int(clip) + VAL_OFFSET:03d}"
            if destination.exists():
                raise DatasetError(
                    f"{val / clip} and {destination} both exist: the validation clip was already moved once; "
                    "remove one of them"
                )
            moves.append((val / clip, destination))
    if not moves:
        _remove_empty_folders(root)  # left by a run interrupted after its last move
        hq = root / _FOLDERS["hq"].format(split="train")
        clips = _clips(hq)
        merged = sum(1 for c in clips if c.isdigit() and int(c) >= VAL_OFFSET)
        if merged == 0:
            raise DatasetError(
                f"{root}: no REDS validation clips to merge (val_sharp and val_sharp_bicubic/X4 not found "
                f"at the root or under val/), and {hq} holds no clips 240-269; download val_sharp.zip and "
                "val_sharp_bicubic.zip into the root"
            )
        say(
            f"REDS at {root} is already regrouped: nothing to do ({len(clips)} clips in {hq.name}; "
            f"REDS4 = {', '.join(REDS4_CLIPS)} held out with dataset.partition=reds4)"
        )
        return
    for source, target in progress(moves, desc="reds: regroup", unit="clip"):
        atomic_rename(source, target)
    _remove_empty_folders(root)
    clips = _clips(root / _FOLDERS["hq"].format(split="train"))
    say(
        f"REDS at {root}: regrouped, {len(clips)} clips in train_sharp (validation clips as "
        f"{VAL_OFFSET}-{VAL_OFFSET + 29}); the reds loader holds out REDS4 ({', '.join(REDS4_CLIPS)}) "
        f"with dataset.partition=reds4, or 240-269 with partition=official"
    )


def check_reds(root: Path, report: CheckReport, *, full: bool = False, workers: int = 8, **_: object) -> None:
    """Every clip of ``train_sharp`` against ``train_sharp_bicubic/X4``, split as REDS4 / training."""
    hq_root = root / _FOLDERS["hq"].format(split="train")
    lq_root = root / _FOLDERS["lq"].format(split="train")
    for folder in (hq_root, lq_root):
        if not folder.is_dir():
            report.add("train", problems=[f"{folder}: folder missing (run `prepare reds {root}` first)"])
            return
    hq_clips, lq_clips = set(_clips(hq_root)), set(_clips(lq_root))
    scale = default_scale("vsr")  # the X4 folder: the super-resolution task's factor
    checks = []
    for clip in sorted(hq_clips | lq_clips, key=natural_key):
        split = "REDS4 (test)" if clip in REDS4_CLIPS else "train"
        checks.append(
            SequenceCheck(
                split,
                lambda clip=clip: check_frame_pair(hq_root / clip, lq_root / clip, scale=scale, full=full),
            )
        )
    missing = [c for c in REDS4_CLIPS if c not in hq_clips]
    if missing:
        report.add("REDS4 (test)", problems=[f"{hq_root / c}: REDS4 clip missing" for c in missing])
    run_checks(report, checks, desc="reds: check", workers=workers)
    val = _find(root, "val", "hq")
    if val is not None and _clips(val):
        report.add(
            "train",
            problems=[f"{root}: val_sharp is not merged into train_sharp; run `prepare reds {root}`"],
        )
    elif not any(c.isdigit() and int(c) >= VAL_OFFSET for c in hq_clips):
        report.add(
            "train",
            problems=[f"{hq_root}: no clips 240-269 (the official validation clips, BasicSR's regrouping)"],
        )
