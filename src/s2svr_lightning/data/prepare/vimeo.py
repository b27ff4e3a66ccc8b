"""Vimeo-90K septuplets: validate the lists and, if asked, make the MATLAB-bicubic x4 LQ frames.

The official download (``vimeo_septuplet``) has ``sequences/<5 digits>/<4 digits>/im1..im7.png`` and the
split lists ``sep_trainlist.txt`` (64,612 entries) and ``sep_testlist.txt`` (7,824, Vimeo-90K-T). The split
cannot be rebuilt from the folders, so missing lists are an error, not something to generate. With
``--make-lq`` every listed septuplet gets its BIx4 version (MATLAB ``imresize(x, 1/4, 'bicubic')``, 8-bit
PNG) in ``<lq root>/<5 digits>/<4 digits>/im*.png``, the layout the ``vimeo`` loader reads through
``dataset.lq_root`` (default ``<root>/BIx4``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ...task import default_scale
from ...utils import say
from ..degradations import bicubic_downsample
from ..errors import DatasetError
from ..media.image_io import frames_to_tensor, read_image, write_png
from .common import CheckReport, SequenceCheck, check_frame_pair, progress, run_checks

__all__ = ["prepare_vimeo", "check_vimeo", "read_lists"]

LISTS = {"train": "sep_trainlist.txt", "test": "sep_testlist.txt"}
FRAMES = tuple(f"im{i}" for i in range(1, 8))
SCALE = default_scale("vsr")  # BIx4: the super-resolution task's factor


def read_lists(root: Path) -> dict[str, list[str]]:
    """The entries of each split list; raises ``DatasetError`` for a missing list or a bad entry."""
    if not (root / "sequences").is_dir():
        raise DatasetError(
            f"{root / 'sequences'}: not found; expected the vimeo_septuplet folder with "
            "sequences/<5 digits>/<4 digits>/im1..im7.png"
        )
    lists = {}
    for split, name in LISTS.items():
        path = root / name
        if not path.is_file():
            raise DatasetError(
                f"{path}: {split} list not found; it ships with vimeo_septuplet.zip (the official split "
                "cannot be rebuilt from the folders)"
            )
        entries = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        for line_no, entry in enumerate(entries, 1):
            parts = entry.split("/")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise DatasetError(f"{path}: entry {line_no} {entry!r} is not of the form 00001/0001")
        if len(set(entries)) != len(entries):
            raise DatasetError(f"{path}: {len(entries) - len(set(entries))} duplicate entries")
        lists[split] = entries
    both = set(lists["train"]) & set(lists["test"])
    if both:
        raise DatasetError(f"{root}: {len(both)} septuplets are in both lists, e.g. {sorted(both)[0]}")
    return lists


def _lq_root(root: Path, lq_root: str | Path | None) -> Path:
    return Path(lq_root) if lq_root is not None else root / "BIx4"


def _complete(folder: Path) -> bool:
    # every PNG is written atomically, so a present file is a whole one (`prepare --check` looks closer)
    return all((folder / f"{name}.png").is_file() for name in FRAMES)


def _make_lq(hq: Path, lq: Path) -> None:
    frames = frames_to_tensor([read_image(hq / f"{name}.png") for name in FRAMES])
    h, w = frames.shape[-2:]
    frames = frames[..., : h - h % SCALE, : w - w % SCALE]  # mod-crop, as the benchmark does
    small = bicubic_downsample(frames, SCALE).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    for name, frame in zip(FRAMES, small.permute(0, 2, 3, 1).numpy()):
        write_png(lq / f"{name}.png", frame)


def prepare_vimeo(
    root: Path,
    *,
    make_lq: bool = False,
    lq_root: str | Path | None = None,
    workers: int = 4,
    **_: object,
) -> None:
    lists = read_lists(root)
    entries = [e for split in ("train", "test") for e in lists[split]]
    missing = [e for e in entries if not (root / "sequences" / e).is_dir()]
    if missing:
        raise DatasetError(
            f"{root / 'sequences'}: {len(missing)} listed septuplets have no folder, e.g. {missing[0]}"
        )
    say(f"vimeo at {root}: lists valid ({len(lists['train'])} train, {len(lists['test'])} test septuplets)")
    if not make_lq:
        say("  (add --make-lq to write the BIx4 frames; the loader otherwise makes them on the fly)")
        return
    target = _lq_root(root, lq_root)
    todo = [e for e in progress(entries, desc="vimeo: scan", unit="seq") if not _complete(target / e)]
    if not todo:
        say(f"vimeo: nothing to do, the BIx4 frames of all {len(entries)} septuplets are in {target}")
    else:
        say(f"vimeo: making BIx4 frames of {len(todo)} septuplets ({len(entries) - len(todo)} done)")
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            jobs = [pool.submit(_make_lq, root / "sequences" / e, target / e) for e in todo]
            for job in progress(jobs, desc="vimeo: BIx4", unit="seq"):
                job.result()
    say(f"  train on them with dataset.lq_root={target}")


def check_vimeo(
    root: Path,
    report: CheckReport,
    *,
    lq_root: str | Path | None = None,
    full: bool = False,
    workers: int = 8,
    **_: object,
) -> None:
    """Every listed septuplet's 7 frames (and its BIx4 frames, if ``lq_root`` or ``<root>/BIx4`` exists)."""
    try:
        lists = read_lists(root)
    except DatasetError as err:
        report.add("lists", problems=[str(err)])
        return
    lq = _lq_root(root, lq_root)
    if lq_root is not None and not lq.is_dir():
        report.add("lists", problems=[f"{lq}: LQ root folder not found"])
        return
    lq_base = lq / "sequences" if (lq / "sequences").is_dir() else lq
    with_lq = lq.is_dir()
    checks = [
        SequenceCheck(
            split,
            lambda e=entry: check_frame_pair(
                root / "sequences" / e, lq_base / e if with_lq else None, scale=SCALE, names=FRAMES, full=full
            ),
        )
        for split, entries in lists.items()
        for entry in entries
    ]
    run_checks(report, checks, desc="vimeo: check", workers=workers)
