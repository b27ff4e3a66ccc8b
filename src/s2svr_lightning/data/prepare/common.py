"""What every preparer and checker shares: the report and the per-sequence frame check.

A check collects every problem of a tree in one pass (it never stops at the first), as lines that start
with the file's path, and counts sequences, files and problems per split.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError
from ..media.image_io import IMAGE_EXTENSIONS, probe_image

__all__ = ["CheckReport", "SequenceCheck", "check_frame_pair", "run_checks", "progress"]


def progress(items: Iterable, *, total: int | None = None, desc: str, unit: str = "seq"):
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)


@dataclass
class _SplitCount:
    sequences: int = 0
    files: int = 0
    problems: int = 0


@dataclass
class CheckReport:
    """Problems (lines naming the file) and counts per split."""

    problems: list[str] = field(default_factory=list)
    splits: dict[str, _SplitCount] = field(default_factory=dict)

    def add(self, split: str, *, sequences: int = 0, files: int = 0, problems: Sequence[str] = ()) -> None:
        count = self.splits.setdefault(split, _SplitCount())
        count.sequences += sequences
        count.files += files
        count.problems += len(problems)
        self.problems.extend(problems)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, dataset: str, root: Path) -> str:
        lines = list(self.problems)
        lines.append(f"{dataset} at {root}:")
        for split, c in self.splits.items():
            lines.append(
                f"  {split:<12} {c.sequences:>7} sequences {c.files:>9} files {c.problems:>7} problems"
            )
        total = len(self.problems)
        lines.append("  OK: no problems found" if not total else f"  {total} problem(s) found (listed above)")
        return "\n".join(lines)


@dataclass
class SequenceCheck:
    """One unit of a check: a sequence of a split and the callable that checks it, returning
    ``(files checked, problem lines)``."""

    split: str
    run: Callable[[], tuple[int, list[str]]]


def run_checks(report: CheckReport, checks: Sequence[SequenceCheck], *, desc: str, workers: int = 8) -> None:
    """Run every check (file-system and decoder bound: a few threads) with a progress bar."""
    if not checks:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(checks)))) as pool:
        futures = [(c.split, pool.submit(c.run)) for c in checks]
        for split, future in progress(futures, total=len(futures), desc=desc):
            files, problems = future.result()
            report.add(split, sequences=1, files=files, problems=problems)


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}


def _numbered_gaps(stems: Iterable[str]) -> list[str]:
    """Stems missing from a run of zero-padded frame numbers (``00000000`` .. ``00000099``)."""
    stems = list(stems)
    if not stems or not all(re.fullmatch(r"\d+", s) for s in stems) or len({len(s) for s in stems}) != 1:
        return []
    width, numbers = len(stems[0]), sorted(int(s) for s in stems)
    present = set(numbers)
    return [f"{n:0{width}d}" for n in range(numbers[0], numbers[-1] + 1) if n not in present]


def check_frame_pair(
    hq_dir: Path,
    lq_dir: Path | None,
    *,
    scale: int = 1,
    names: Sequence[str] | None = None,
    full: bool = False,
    extension: str = ".png",
) -> tuple[int, list[str]]:
    """Check one sequence stored as a folder of HQ frames and (optionally) a folder of LQ frames.

    Reports every missing frame (one side lacks a frame the other has, a gap in zero-padded numbering,
    or a name in ``names``), every unreadable or truncated file (``full``: decoded), and every mis-sized
    frame (HQ frames unlike the sequence's usual size, LQ frames not ``HQ / scale``).

    Returns ``(files checked, problem lines)``.
    """
    sides = {"HQ": hq_dir} if lq_dir is None else {"HQ": hq_dir, "LQ": lq_dir}
    problems: list[str] = []
    listing: dict[str, dict[str, Path]] = {}
    for side, folder in sides.items():
        if not folder.is_dir():
            problems.append(f"{folder}: {side} frame folder missing")
        else:
            listing[side] = _images(folder)
    if not listing:
        return 0, problems
    expected = list(names) if names is not None else sorted(set().union(*listing.values()))
    if names is None:
        expected = sorted(set(expected) | set(_numbered_gaps(expected)))
    for side, files in listing.items():
        for stem in expected:
            if stem not in files:
                others = [s for s in listing if s != side and stem in listing[s]]
                why = f" (its {others[0]} partner {listing[others[0]][stem]} exists)" if others else ""
                problems.append(f"{sides[side] / (stem + extension)}: missing {side} frame{why}")
    sizes: dict[str, dict[Path, tuple[int, int]]] = {side: {} for side in listing}
    count = 0
    for side, files in listing.items():
        for path in files.values():
            count += 1
            try:
                sizes[side][path] = probe_image(path, full=full)
            except DatasetError as err:
                problems.append(str(err))
    if sizes.get("HQ"):
        (h, w), _ = Counter(sizes["HQ"].values()).most_common(1)[0]
        for path, size in sizes["HQ"].items():
            if size != (h, w):
                problems.append(f"{path}: HQ frame is {size[0]}x{size[1]}, the others are {h}x{w}")
        if h % scale or w % scale:
            problems.append(f"{hq_dir}: HQ frames are {h}x{w}, not a multiple of the scale {scale}")
        for path, size in sizes.get("LQ", {}).items():
            if size != (h // scale, w // scale):
                problems.append(
                    f"{path}: LQ frame is {size[0]}x{size[1]}, expected {h // scale}x{w // scale} "
                    f"(HQ {h}x{w} / {scale})"
                )
    return count, problems


def atomic_rename(source: Path, target: Path) -> None:
    """Move a file or folder within one file system (atomic: the target appears whole or not at all)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except OSError as err:
        raise DatasetError(
            f"{source}: cannot move to {target} ({err}); both must be on one file system"
        ) from None
