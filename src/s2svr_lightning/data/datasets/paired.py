"""``paired``: the user's own paired footage (LQ and HQ captured or made outside the library) for any task.

Two folders, ``lq`` and ``hq``, each holding one entry per clip: a video file (mp4, mkv, avi, mov, ...) or a
folder of frame images. Clips are matched by name (a video's name without its extension, a frame
folder's name), so ``lq/street.mp4`` pairs with ``hq/street.mkv`` or ``hq/street/0001.png ...``; frames
pair in order. Like BasicSR's ``PairedImageDataset`` (``dataroot_lq`` / ``dataroot_gt``), every LQ clip
needs its HQ partner and the other way round; the pairs must have equal frame counts and HQ frames
``scale`` times the LQ size (the task's: 4 for ``vsr``, 1 for ``deblur`` and ``cve``).

Splits:

- ``val`` / ``test``: lists of clip names held out of ``lq``/``hq`` (like REDS4); one falls back to the
  other;
- ``val_lq``/``val_hq`` and ``test_lq``/``test_hq``: separate held-out folder pairs of the same shape (a
  pair falls back to the other);
- neither: validation and test run on the training clips (with a warning).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..media.image_io import ImageFolderStore, list_frame_files, natural_key
from ..media.video_io import VideoStore, is_video_file
from .base import DatasetEntry, FrameStore, PairedSource
from .video_folder import is_frame_folder

__all__ = ["PairedDataset", "list_clips"]

LAYOUT = (
    "<lq>/<clip>.{mp4,mkv,avi,mov,...} or <lq>/<clip>/<frames>.png, and the same clip names in <hq> "
    "(dataset.lq=PATH dataset.hq=PATH)"
)


def _layout_error(path: Path | str, problem: str) -> DatasetError:
    return DatasetError(f"paired dataset: {path}: {problem}.\nExpected layout: {LAYOUT}")


def list_clips(folder: Path, *, backend: str = "auto") -> dict[str, tuple[Path, FrameStore | None]]:
    """Clip name -> (path, store) for every video file and frame folder directly inside ``folder``.

    The store is None for a frame folder until :func:`_store` lists its frames (listing is deferred so
    that :meth:`PairedDataset.check` stays cheap). Two entries with one name (``a.mp4`` and ``a/``) are
    refused.
    """
    clips: dict[str, tuple[Path, FrameStore | None]] = {}
    for entry in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.is_file() and is_video_file(entry):
            name, store = entry.stem, VideoStore(entry, backend=backend)
        elif is_frame_folder(entry):
            name, store = entry.name, None
        else:
            continue
        if name in clips:
            raise DatasetError(
                f"{folder}: two clips named {name!r} ({clips[name][0].name} and {entry.name}); rename one"
            )
        clips[name] = (entry, store)
    return clips


def _store(path: Path, store: FrameStore | None) -> FrameStore:
    return store if store is not None else ImageFolderStore(list_frame_files(path), path=path)


def _names(value: str | Sequence[str] | None, key: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    names = [str(v) for v in value]
    if not names:
        raise ValueError(f"expected dataset.{key} to list clip names, got an empty list")
    return names


class PairedDataset(DatasetEntry):
    """The ``paired`` dataset entry (see the module docstring).

    Args:
        lq, hq: the training folders of LQ and HQ clips.
        val, test: clip names held out of ``lq``/``hq`` for validation / test (a list, or one string of
            names separated by commas or spaces).
        val_lq, val_hq, test_lq, test_hq: separate held-out folder pairs instead.
        backend: video reader backend (see :class:`~s2svr_lightning.data.media.video_io.VideoReader`).
    """

    name = "paired"

    def __init__(
        self,
        *,
        lq: str | os.PathLike | None = None,
        hq: str | os.PathLike | None = None,
        val: str | Sequence[str] | None = None,
        test: str | Sequence[str] | None = None,
        val_lq: str | os.PathLike | None = None,
        val_hq: str | os.PathLike | None = None,
        test_lq: str | os.PathLike | None = None,
        test_hq: str | os.PathLike | None = None,
        backend: str = "auto",
        **common: Any,
    ) -> None:
        def path(value):
            return None if value in (None, "") else Path(os.path.expanduser(str(value)))

        super().__init__(**common)
        self.backend = backend
        self.folders = {
            "train": (path(lq), path(hq)),
            "val": (path(val_lq), path(val_hq)),
            "test": (path(test_lq), path(test_hq)),
        }
        self.held_out = {"val": _names(val, "val"), "test": _names(test, "test")}
        for split in ("val", "test"):
            pair = self.folders[split]
            if (pair[0] is None) != (pair[1] is None):
                given, missing = (f"{split}_lq", f"{split}_hq") if pair[0] else (f"{split}_hq", f"{split}_lq")
                raise ValueError(f"expected dataset.{missing} with dataset.{given}, got only {given}")
            if pair[0] is not None and self.held_out[split] is not None:
                raise ValueError(
                    f"expected either dataset.{split} (clip names) or dataset.{split}_lq/{split}_hq "
                    "(folders), got both"
                )

    # -- cheap checks ----------------------------------------------------------------------------------
    def _pair(self, split: str) -> tuple[Path, Path, list[str] | None]:
        """The LQ and HQ folders of a split and the clip names it keeps (None: all of them)."""
        other = {"val": "test", "test": "val"}.get(split)
        for candidate in (split, other) if other else (split,):
            if self.folders[candidate][0] is not None:
                return (*self.folders[candidate], None)
            if self.held_out[candidate] is not None:
                return (*self.folders["train"], self.held_out[candidate])
        if split != "train":
            warnings.warn(
                f"paired: no held-out clips for {split} (set dataset.val/test to clip names, or "
                f"dataset.val_lq/val_hq); evaluating on the training clips in {self.folders['train'][1]}",
                stacklevel=2,
            )
        return (*self.folders["train"], None)

    def _held_out_names(self) -> set[str]:
        names: set[str] = set()
        for split in ("val", "test"):
            names.update(self.held_out[split] or [])
        return names

    def _matched(self, lq_dir: Path, hq_dir: Path) -> list[tuple[str, tuple, tuple]]:
        for folder, what in ((lq_dir, "LQ folder"), (hq_dir, "HQ folder")):
            if not folder.is_dir():
                raise _layout_error(
                    folder, f"{what} not found" if not folder.exists() else f"{what} is not a folder"
                )
        lq, hq = list_clips(lq_dir, backend=self.backend), list_clips(hq_dir, backend=self.backend)
        if not lq:
            raise _layout_error(lq_dir, "no video files or frame folders")
        for name, (path, _) in lq.items():
            if name not in hq:
                raise DatasetError(
                    f"paired dataset: LQ clip {path} has no HQ partner named {name!r} in {hq_dir} "
                    f"(HQ clips there: {', '.join(list(hq)[:8]) or 'none'})"
                )
        for name, (path, _) in hq.items():
            if name not in lq:
                raise DatasetError(
                    f"paired dataset: HQ clip {path} has no LQ partner named {name!r} in {lq_dir}; "
                    "remove it or add its LQ version"
                )
        return [(name, lq[name], hq[name]) for name in lq]

    def check(self) -> None:
        """The folders exist and their clips pair up by name (top-level listings only)."""
        lq_dir, hq_dir = self.folders["train"]
        if lq_dir is None or hq_dir is None:
            raise _layout_error("dataset.lq / dataset.hq", "not set")
        names = {name for name, _, _ in self._matched(lq_dir, hq_dir)}
        unknown = sorted(self._held_out_names() - names)
        if unknown:
            raise DatasetError(
                f"paired dataset: held-out clip(s) {unknown} not found in {lq_dir} "
                f"(clips there: {', '.join(sorted(names, key=natural_key)[:8])})"
            )
        for split in ("val", "test"):
            held_lq, held_hq = self.folders[split]
            if held_lq is not None:
                self._matched(held_lq, held_hq)

    # -- splits ----------------------------------------------------------------------------------------
    def source(self, split: str) -> PairedSource:
        self.check()
        lq_dir, hq_dir, keep = self._pair(split)
        clips = self._matched(lq_dir, hq_dir)
        if keep is not None:
            clips = [c for c in clips if c[0] in keep]
        elif split == "train":
            clips = [c for c in clips if c[0] not in self._held_out_names()]
        if not clips:
            raise _layout_error(lq_dir, f"empty {split} split: every clip is held out")
        sequences = [(f"paired/{name}", _store(*lq), _store(*hq)) for name, lq, hq in clips]
        return PairedSource(sequences, scale=self.scale)
