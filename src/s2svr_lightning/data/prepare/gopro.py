"""GoPro: nothing to convert (the download is what the ``gopro`` loader reads); check it.

``GOPRO_Large/{train,test}/<sequence>/{blur,blur_gamma,sharp}/<6 digits>.png``: each blurred folder must
hold exactly the frames of ``sharp`` (the same names), all of one size.
"""

from __future__ import annotations

from pathlib import Path

from ...utils import say
from ..errors import DatasetError
from ..media.image_io import natural_key
from .common import CheckReport, SequenceCheck, check_frame_pair, run_checks

__all__ = ["prepare_gopro", "check_gopro"]

SPLITS = ("train", "test")


def _base(root: Path) -> Path:
    nested = root / "GOPRO_Large"
    base = nested if nested.is_dir() else root
    if not any((base / s).is_dir() for s in SPLITS):
        raise DatasetError(
            f"{root}: no GOPRO_Large/train or GOPRO_Large/test folder; expected "
            "GOPRO_Large/{train,test}/<sequence>/{blur,blur_gamma,sharp}/<6 digits>.png"
        )
    return base


def prepare_gopro(root: Path, **_: object) -> None:
    _base(root)
    say(f"gopro at {root}: nothing to convert, the download is the loader's layout; checking it")


def _check_sequence(seq: Path, full: bool) -> tuple[int, list[str]]:
    """``blur`` (and ``blur_gamma`` where present: the loader's other choice) against ``sharp``."""
    files, problems = check_frame_pair(seq / "sharp", seq / "blur", scale=1, full=full)
    if (seq / "blur_gamma").is_dir():
        more, extra = check_frame_pair(seq / "sharp", seq / "blur_gamma", scale=1, full=full)
        sharp = sum(1 for p in (seq / "sharp").iterdir() if p.is_file()) if (seq / "sharp").is_dir() else 0
        files += more - sharp
        problems = list(dict.fromkeys(problems + extra))  # sharp's own problems once
    return files, problems


def check_gopro(
    root: Path, report: CheckReport, *, full: bool = False, workers: int = 8, **_: object
) -> None:
    base = _base(root)
    checks = []
    for split in SPLITS:
        folder = base / split
        if not folder.is_dir():
            report.add(split, problems=[f"{folder}: {split} split folder missing"])
            continue
        for seq in sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
            checks.append(SequenceCheck(split, lambda seq=seq: _check_sequence(seq, full)))
    run_checks(report, checks, desc="gopro: check", workers=workers)
