"""``video_folder``: the user's own footage as a training or test set for any task.

A folder of video files (mp4, mkv, avi, mov, webm, ...) and/or frame folders (sub-folders of images).
Each is one HQ sequence; its LQ is made on the fly by the task's degradation, the config's one
``degradation`` node (bicubic x4, temporal blur of ``blur_frames`` consecutive frames, HEVC at ``qp``;
see :class:`~s2svr_lightning.data.datasets.base.DegradedSource`).

Splits: if ``root`` holds ``train/``, ``val/`` or ``test/`` folders, those are the splits (validation
falls back to test and test to validation); otherwise ``root`` is the training set and ``val_root`` /
``test_root`` (falling back to each other, then to ``root`` itself) the held-out ones.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..media.image_io import IMAGE_EXTENSIONS, ImageFolderStore, list_frame_files, natural_key
from ..media.video_io import VideoStore, is_video_file
from .base import DatasetEntry, DegradedSource, FrameStore, layout_error, require_dir

__all__ = ["VideoFolderDataset", "list_videos", "is_frame_folder"]

LAYOUT = (
    "<root>/<video>.{mp4,mkv,avi,mov,...} and/or <root>/<name>/<frames>.png (optionally in train/ val/ test/)"
)
_SPLITS = ("train", "val", "test")


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir() if p.is_file())


def list_videos(
    folder: Path, *, backend: str = "auto", prefix: str = "video_folder"
) -> list[tuple[str, FrameStore]]:
    """Every video file and frame folder directly inside ``folder``, in natural order, as stores."""
    items = []
    for entry in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.is_file() and is_video_file(entry):
            items.append((f"{prefix}/{entry.name}", VideoStore(entry, backend=backend)))
        elif is_frame_folder(entry):
            items.append((f"{prefix}/{entry.name}", ImageFolderStore(list_frame_files(entry), path=entry)))
    return items


class VideoFolderDataset(DatasetEntry):
    """The ``video_folder`` dataset entry.

    Args:
        root: the folder of videos / frame folders (or of ``train``/``val``/``test`` folders of them).
        val_root, test_root: held-out folders when ``root`` has no split folders.
        backend: video reader backend (see :class:`~s2svr_lightning.data.media.video_io.VideoReader`).
    """

    name = "video_folder"
    layout = LAYOUT

    def __init__(
        self,
        *,
        val_root: str | os.PathLike | None = None,
        test_root: str | os.PathLike | None = None,
        backend: str = "auto",
        **common,
    ) -> None:
        super().__init__(**common)
        self.val_root = None if val_root is None else Path(os.path.expanduser(str(val_root)))
        self.test_root = None if test_root is None else Path(os.path.expanduser(str(test_root)))
        self.backend = backend

    def check(self) -> None:
        self.require_root()
        for extra in (self.val_root, self.test_root):
            if extra is not None:
                require_dir(self.name, extra, LAYOUT, "held-out folder")

    def _folder(self, split: str) -> Path:
        present = {s: self.root / s for s in _SPLITS if (self.root / s).is_dir()}
        if present:
            fallback = {"train": ("train",), "val": ("val", "test"), "test": ("test", "val")}[split]
            for name in fallback:
                if name in present:
                    return present[name]
            raise layout_error(self.name, self.root, f"no {split} folder among {sorted(present)}", LAYOUT)
        if split == "train":
            return self.root
        held_out = (self.val_root or self.test_root) if split == "val" else (self.test_root or self.val_root)
        if held_out is None:
            warnings.warn(
                f"video_folder: no held-out footage for {split}; evaluating on the training folder "
                f"{self.root}",
                stacklevel=2,
            )
            return self.root
        return held_out

    def source(self, split: str) -> DegradedSource:
        self.check()
        folder = self._folder(split)
        items = list_videos(folder, backend=self.backend)
        if not items:
            raise layout_error(
                self.name, folder, f"empty {split} split: no video files or frame folders", LAYOUT
            )
        return DegradedSource(items, task=self.spec)
