"""REDS (video super-resolution x4, Nah et al. 2019), in BasicSR's regrouping.

``train_sharp/<clip>/<8 digits>.png`` (HQ, 720x1280) and ``train_sharp_bicubic/X4/<clip>/<8 digits>.png``
(LQ, 180x320; MATLAB bicubic), 270 clips of 100 frames (the official validation clips 000-029 copied in
as 240-269; ``python -m s2svr_lightning.prepare reds ROOT`` regroups a download). Partitions:

- ``"reds4"`` (the paper's): clips 000, 011, 015 and 020 are the test (and validation) set and are left out
  of training;
- ``"official"``: clips 240-269 are the test set, 000-239 train.
"""

from __future__ import annotations

import warnings

from ..errors import DatasetError
from ..media.image_io import ImageFolderStore, list_frame_files, natural_key
from .base import DatasetEntry, PairedSource, layout_error, require_dir

__all__ = ["REDSDataset", "REDS4_CLIPS"]

REDS4_CLIPS = ("000", "011", "015", "020")
_REGROUP_HINT = (
    "run `python -m s2svr_lightning.prepare reds {root}` to merge the official validation clips "
    "(val_sharp, val_sharp_bicubic/X4) in as clips 240-269"
)
LAYOUT = "<root>/train_sharp/<clip>/<8 digits>.png and <root>/train_sharp_bicubic/X4/<clip>/<8 digits>.png"


class REDSDataset(DatasetEntry):
    """The ``reds`` dataset entry.

    Args:
        root: the folder holding ``train_sharp`` and ``train_sharp_bicubic``.
        partition: ``"reds4"`` or ``"official"`` (see the module docstring).
        hq_folder, lq_folder: sub-folders of ``root`` (``lq_folder`` defaults to
            ``train_sharp_bicubic/X<scale>``).
    """

    name = "reds"
    layout = LAYOUT

    def __init__(
        self,
        *,
        partition: str = "reds4",
        hq_folder: str = "train_sharp",
        lq_folder: str | None = None,
        **common,
    ) -> None:
        if partition not in ("reds4", "official"):
            raise ValueError(f"expected partition 'reds4' or 'official', got {partition!r}")
        super().__init__(**common)
        self.partition = partition
        self.hq_folder = hq_folder
        self.lq_folder = lq_folder if lq_folder is not None else f"train_sharp_bicubic/X{self.scale}"

    def check(self) -> None:
        self.require_root()
        require_dir(self.name, self.root / self.hq_folder, LAYOUT, "HQ folder")
        require_dir(self.name, self.root / self.lq_folder, LAYOUT, "LQ folder")

    def _is_test(self, clip: str) -> bool:
        if self.partition == "reds4":
            return clip in REDS4_CLIPS
        return clip.isdigit() and 240 <= int(clip) <= 269

    def source(self, split: str) -> PairedSource:
        self.check()
        hq_root, lq_root = self.root / self.hq_folder, self.root / self.lq_folder
        clips = sorted((p.name for p in hq_root.iterdir() if p.is_dir()), key=natural_key)
        wanted = [c for c in clips if self._is_test(c) == (split != "train")]
        if split != "train" and self.partition == "reds4":
            missing = [c for c in REDS4_CLIPS if c not in clips]
            if missing:
                raise layout_error(self.name, hq_root, f"REDS4 test clips {missing} missing", LAYOUT)
        regrouped = any(c.isdigit() and int(c) >= 240 for c in clips)
        if not wanted:
            hint = "" if regrouped else f"; {_REGROUP_HINT.format(root=self.root)}"
            raise layout_error(
                self.name, hq_root, f"empty {split} split ({self.partition} partition){hint}", LAYOUT
            )
        if split == "train" and not regrouped:
            # REDS as downloaded: 240 training clips, the 30 validation clips still in val_sharp
            warnings.warn(
                f"reds: {hq_root} has no clips 240-269, so training uses {len(wanted)} clips instead of the "
                f"usual recipe's {270 - len(REDS4_CLIPS) if self.partition == 'reds4' else 240}; "
                + _REGROUP_HINT.format(root=self.root),
                stacklevel=2,
            )
        sequences = []
        for clip in wanted:
            lq_dir = lq_root / clip
            if not lq_dir.is_dir():
                raise DatasetError(
                    f"{lq_dir}: LQ frames of clip {clip} not found (HQ frames are in {hq_root / clip})"
                )
            hq_files, lq_files = list_frame_files(hq_root / clip), list_frame_files(lq_dir)
            if len(lq_files) != len(hq_files):
                raise DatasetError(
                    f"clip {clip}: {len(lq_files)} LQ frames in {lq_dir} but {len(hq_files)} HQ frames in "
                    f"{hq_root / clip}"
                )
            for a, b in zip(lq_files, hq_files):
                if a.stem != b.stem:
                    raise DatasetError(f"clip {clip}: LQ frame {a} is paired with HQ frame {b}")
            sequences.append(
                (
                    f"reds/{clip}",
                    ImageFolderStore(lq_files, path=lq_dir),
                    ImageFolderStore(hq_files, path=hq_root / clip),
                )
            )
        return PairedSource(sequences, scale=self.scale)
