"""Vimeo-90K septuplets (video super-resolution x4, Xue et al. 2019).

``<root>/sequences/<5 digits>/<4 digits>/im1.png .. im7.png`` (448x256) with the lists
``<root>/sep_trainlist.txt`` (64,612 entries) and ``<root>/sep_testlist.txt`` (7,824 entries, Vimeo-90K-T),
one ``00001/0001`` per line. The LQ frames come from a BIx4 folder of the same shape (``lq_root``, holding
``<5 digits>/<4 digits>/im*.png`` directly or under ``sequences/``), or, without one, are made on the fly by
MATLAB bicubic. Vimeo-90K-T is scored on the centre frame im4 only (the ``score`` mask of its samples).

Test protocol. S2SVR is causal with r frames of look-ahead, so one pass over im1..im7 restores im4 from
im1..im5 only. The authors' test runs the mirrored clip im1..im7, im7..im1 in one pass and scores im4 as
the mean of its two outputs (the mirrored half's im4 has seen every frame). Both are offered, as the
restorer's ``eval_protocol`` (``"single"`` or ``"mirror"``, see
:func:`s2svr_lightning.lit.restorer.mirrored_forward`): ``+task=vsr_vimeo`` uses ``"mirror"``, the
protocol of the paper's Table 1 number (37.63 dB); pass ``restorer.module.eval_protocol=single`` for the
causal, streaming-equivalent score.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DatasetError
from ..media.image_io import ImageFolderStore
from .base import DatasetEntry, DegradedSource, PairedSource, SequenceSource, layout_error, require_dir

__all__ = ["VimeoDataset"]

LAYOUT = (
    "<root>/sequences/<5 digits>/<4 digits>/im1.png..im7.png "
    "with <root>/sep_trainlist.txt and sep_testlist.txt"
)


class VimeoDataset(DatasetEntry):
    """The ``vimeo`` dataset entry.

    Args:
        root: the ``vimeo_septuplet`` folder.
        lq_root: a BIx4 folder of the same shape (None: make the LQ by bicubic downsampling).
        train_list, test_list: list files inside ``root``; validation uses ``val_list`` (default: the test
            list).
        frames_per_sequence: 7 for septuplets.
        score_centre: score only the centre frame (im4) in validation and test, as Vimeo-90K-T does.
    """

    name = "vimeo"
    layout = LAYOUT

    def __init__(
        self,
        *,
        lq_root: str | os.PathLike | None = None,
        train_list: str = "sep_trainlist.txt",
        test_list: str = "sep_testlist.txt",
        val_list: str | None = None,
        frames_per_sequence: int = 7,
        score_centre: bool = True,
        **common,
    ) -> None:
        super().__init__(**common)
        self.lq_root = None if lq_root is None else Path(os.path.expanduser(str(lq_root)))
        self.lists = {"train": train_list, "val": val_list or test_list, "test": test_list}
        self.frames = int(frames_per_sequence)
        self.score_centre = score_centre

    def check(self) -> None:
        self.require_root()
        require_dir(self.name, self.root / "sequences", LAYOUT, "sequences folder")
        if self.lq_root is not None:
            require_dir(self.name, self.lq_root, LAYOUT + " (lq_root: the same shape)", "LQ root folder")

    def _lq_base(self) -> Path:
        assert self.lq_root is not None
        nested = self.lq_root / "sequences"
        return nested if nested.is_dir() else self.lq_root

    def source(self, split: str) -> SequenceSource:
        self.check()
        list_path = self.root / self.lists[split]
        if not list_path.is_file():
            raise layout_error(self.name, list_path, f"{split} list file not found", LAYOUT)
        entries = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
        if not entries:
            raise layout_error(self.name, list_path, f"empty {split} split: the list has no entries", LAYOUT)
        names = [f"im{i}.png" for i in range(1, self.frames + 1)]
        score = [self.frames // 2] if self.score_centre and split != "train" else None
        hq_stores = []
        for entry in entries:
            folder = self.root / "sequences" / entry
            if not folder.is_dir():
                raise DatasetError(f"{list_path}: entry {entry!r} has no folder {folder}")
            hq_stores.append((f"vimeo/{entry}", ImageFolderStore([folder / n for n in names], path=folder)))
        if self.lq_root is None:
            return DegradedSource(hq_stores, task=self.spec, score=score)
        lq_base = self._lq_base()
        sequences = []
        for (key, hq), entry in zip(hq_stores, entries):
            folder = lq_base / entry
            if not folder.is_dir():
                raise DatasetError(f"{folder}: LQ frames of {entry} not found (HQ frames are in {hq.path})")
            sequences.append((key, ImageFolderStore([folder / n for n in names], path=folder), hq))
        return PairedSource(sequences, scale=self.scale, score=score)
