"""GoPro (video deblurring, Nah et al. 2017).

Layout: ``GOPRO_Large/{train,test}/<seq>/{blur,blur_gamma,sharp}/<6 digits>.png``.

22 training and 11 test sequences of 1280x720 frames. Frame numbers do not start at 0 (e.g. 004001.png):
frames are paired by file name and sorted, never assumed. LQ is ``blur`` (the public S2SVR code's choice;
``blur_gamma`` is the other option), HQ is ``sharp``. There is no validation split: it is the test split.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from ..media.image_io import ImageFolderStore, list_frame_files, natural_key
from .base import DatasetEntry, PairedSource, layout_error, require_dir

__all__ = ["GoProDataset"]

LAYOUT = (
    "<root>/GOPRO_Large/{train,test}/<sequence>/{blur,blur_gamma,sharp}/<6 digits>.png "
    "(or <root> = GOPRO_Large)"
)


class GoProDataset(DatasetEntry):
    """The ``gopro`` dataset entry.

    Args:
        root: the folder holding ``GOPRO_Large`` (or ``GOPRO_Large`` itself).
        lq: ``"blur"`` or ``"blur_gamma"``.
        hq: the sharp folder name.
        val_split: which folder validates (``"test"``; GoPro has no validation split).
    """

    name = "gopro"
    layout = LAYOUT

    def __init__(self, *, lq: str = "blur", hq: str = "sharp", val_split: str = "test", **common) -> None:
        super().__init__(**common)
        self.lq, self.hq, self.val_split = lq, hq, val_split

    def _base(self) -> Path:
        self.require_root()
        nested = self.root / "GOPRO_Large"
        if nested.is_dir():
            return nested
        if (self.root / "train").is_dir() or (self.root / "test").is_dir():
            return self.root
        raise layout_error(
            self.name, self.root, "no GOPRO_Large folder (nor train/ or test/ inside it)", LAYOUT
        )

    def check(self) -> None:
        self._base()

    def source(self, split: str) -> PairedSource:
        self.check()
        folder = {"train": "train", "val": self.val_split, "test": "test"}[split]
        split_dir = require_dir(self.name, self._base() / folder, LAYOUT, f"{folder} split folder")
        seq_dirs = sorted((p for p in split_dir.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))
        if not seq_dirs:
            raise layout_error(self.name, split_dir, "empty split: no sequence folders", LAYOUT)
        sequences = []
        for seq in seq_dirs:
            lq_dir = require_dir(
                self.name, seq / self.lq, LAYOUT, f"'{self.lq}' folder of sequence {seq.name}"
            )
            hq_dir = require_dir(
                self.name, seq / self.hq, LAYOUT, f"'{self.hq}' folder of sequence {seq.name}"
            )
            lq_files, hq_files = list_frame_files(lq_dir), list_frame_files(hq_dir)
            if len(lq_files) != len(hq_files):
                raise DatasetError(
                    f"{seq}: {len(lq_files)} frames in {self.lq}/ but {len(hq_files)} in {self.hq}/"
                )
            for a, b in zip(lq_files, hq_files):
                if a.name != b.name:
                    raise DatasetError(
                        f"{seq}: frame {a.name} in {self.lq}/ is paired with {b.name} in {self.hq}/"
                    )
            key = f"gopro/{seq.name}"
            sequences.append(
                (key, ImageFolderStore(lq_files, path=lq_dir), ImageFolderStore(hq_files, path=hq_dir))
            )
        return PairedSource(sequences, scale=1)
