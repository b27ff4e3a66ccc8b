"""MFQEv2 and the HEVC test sequences (compressed video enhancement, Guan et al. 2019).

``<root>/{train_108,test_18}/raw/<Name>_<W>x<H>_<frames>.yuv`` (lossless) and the same names under
``<root>/{train_108,test_18}/HM16.5_LDP/QP37/`` (HM16.5 low-delay P at QP 37). The files are raw 8-bit
planar YUV 4:2:0: ``W*H`` luma bytes then two ``ceil(W/2)*ceil(H/2)`` chroma planes per frame, so they are
read through a memory map (never whole into RAM) and converted to RGB with the exact inverse of the
BT.601 limited-range matrix the metrics use, so the Y channel of a loaded frame is the file's Y.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ...color import yuv420_to_rgb
from ..errors import DatasetError
from .base import Crop, DatasetEntry, FrameStore, PairedSource, layout_error, require_dir

__all__ = ["MFQEDataset", "YuvStore", "parse_yuv_name", "yuv_name"]

LAYOUT = (
    "<root>/{train_108,test_18}/raw/<Name>_<W>x<H>_<frames>.yuv and the same names under "
    "<root>/{train_108,test_18}/HM16.5_LDP/QP37/"
)
_NAME = re.compile(r"^(?P<name>.+)_(?P<w>\d+)x(?P<h>\d+)_(?P<n>\d+)\.yuv$", re.IGNORECASE)


def parse_yuv_name(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(H, W, frames)`` from a file name ``<Name>_<W>x<H>_<frames>.yuv``."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise DatasetError(
            f"{path}: name does not follow <Name>_<W>x<H>_<frames>.yuv, so its size is unknown"
        )
    h, w, n = int(match["h"]), int(match["w"]), int(match["n"])
    if h < 2 or w < 2 or n < 1:
        raise DatasetError(f"{path}: impossible size {w}x{h} with {n} frames in the name")
    return h, w, n


def yuv_name(name: str, height: int, width: int, frames: int) -> str:
    """The file name :func:`parse_yuv_name` reads: ``<name>_<W>x<H>_<frames>.yuv``."""
    return f"{name}_{width}x{height}_{frames}.yuv"


class YuvStore(FrameStore):
    """Frames of a raw 8-bit YUV 4:2:0 file, read through a memory map."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self.height, self.width, self.frames = parse_yuv_name(path)
        self.chroma = ((self.height + 1) // 2, (self.width + 1) // 2)
        self.frame_bytes = self.height * self.width + 2 * self.chroma[0] * self.chroma[1]
        self._map: np.memmap | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.frames

    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def validate(self, verify: str = "header") -> None:
        try:
            actual = os.path.getsize(self.path)
        except OSError as err:
            raise DatasetError(f"{self.path}: cannot read ({err})") from None
        expected = self.frames * self.frame_bytes
        if actual != expected:
            raise DatasetError(
                f"{self.path}: size {actual} bytes does not fit its name: {self.width}x{self.height} "
                f"YUV 4:2:0 with {self.frames} frames is {expected} bytes ({self.frame_bytes} per frame"
                + (f"; the file holds {actual / self.frame_bytes:.2f} frames)" if actual else ")")
            )
        if verify == "full":
            self.read(range(self.frames))

    def _frames(self) -> np.memmap:
        if self._map is None or self._pid != os.getpid():
            try:
                self._map = np.memmap(
                    self.path, dtype=np.uint8, mode="r", shape=(self.frames, self.frame_bytes)
                )
            except (OSError, ValueError) as err:
                raise DatasetError(f"{self.path}: cannot map the file ({err})") from None
            self._pid = os.getpid()
        return self._map

    def planes(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The 8-bit planes of frame ``index``: Y ``(H, W)``, U and V ``(ceil(H/2), ceil(W/2))`` (views
        into the memory map)."""
        h, w = self.height, self.width
        ch, cw = self.chroma
        frame = self._frames()[index]
        y = frame[: h * w].reshape(h, w)
        return y, frame[h * w : h * w + ch * cw].reshape(ch, cw), frame[h * w + ch * cw :].reshape(ch, cw)

    def read(self, indices: Sequence[int], crop: Crop | None = None) -> torch.Tensor:
        h, w = self.height, self.width
        top, left, ht, wd = crop if crop is not None else (0, 0, h, w)
        # widen the crop to even coordinates so that chroma samples line up, convert, then trim
        t0, l0 = top - top % 2, left - left % 2
        h0, w0 = ht + top % 2, wd + left % 2
        ys, us, vs = [], [], []
        for i in indices:
            y, u, v = self.planes(i)
            ys.append(y[t0 : t0 + h0, l0 : l0 + w0])
            us.append(u[t0 // 2 : (t0 + h0 + 1) // 2, l0 // 2 : (l0 + w0 + 1) // 2])
            vs.append(v[t0 // 2 : (t0 + h0 + 1) // 2, l0 // 2 : (l0 + w0 + 1) // 2])
        rgb = yuv420_to_rgb(np.stack(ys), np.stack(us), np.stack(vs))
        return rgb[..., top % 2 : top % 2 + ht, left % 2 : left % 2 + wd]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_map"], state["_pid"] = None, None
        return state


class MFQEDataset(DatasetEntry):
    """The ``mfqe`` dataset entry.

    Args:
        root: the MFQEv2 folder.
        train_folder, test_folder: split folders (validation uses the test folder).
        lq_folder: the compressed folder inside a split; default ``HM16.5_LDP/QP<qp>`` with the task's
            ``degradation.qp`` (37 unless set), so the checkpoint records the QP the data was made at.
        hq_folder: the lossless folder inside a split (``raw``).
    """

    name = "mfqe"
    layout = LAYOUT

    def __init__(
        self,
        *,
        train_folder: str = "train_108",
        test_folder: str = "test_18",
        lq_folder: str | None = None,
        hq_folder: str = "raw",
        **common,
    ) -> None:
        super().__init__(**common)
        self.folders = {"train": train_folder, "val": test_folder, "test": test_folder}
        self.lq_folder = (
            lq_folder if lq_folder is not None else f"HM16.5_LDP/QP{self.spec.degradation_option('qp')}"
        )
        self.hq_folder = hq_folder

    def check(self) -> None:
        self.require_root()
        if not any((self.root / f).is_dir() for f in set(self.folders.values())):
            raise layout_error(
                self.name,
                self.root,
                f"none of the split folders {sorted(set(self.folders.values()))}",
                LAYOUT,
            )

    def source(self, split: str) -> PairedSource:
        self.check()
        base = require_dir(self.name, self.root / self.folders[split], LAYOUT, f"{split} split folder")
        hq_dir = require_dir(self.name, base / self.hq_folder, LAYOUT, "raw (lossless) folder")
        lq_dir = require_dir(self.name, base / self.lq_folder, LAYOUT, "compressed folder")
        hq_files = sorted(p for p in hq_dir.iterdir() if p.suffix.lower() == ".yuv")
        if not hq_files:
            raise layout_error(self.name, hq_dir, "empty split: no .yuv files", LAYOUT)
        lq_names = {p.name for p in lq_dir.iterdir() if p.suffix.lower() == ".yuv"}
        sequences = []
        for hq in hq_files:
            if hq.name not in lq_names:
                raise DatasetError(f"{lq_dir / hq.name}: compressed counterpart of {hq} not found")
            lq_store, hq_store = YuvStore(lq_dir / hq.name), YuvStore(hq)
            sequences.append((f"mfqe/{hq.stem}", lq_store, hq_store))
        extra = lq_names - {p.name for p in hq_files}
        if extra:
            raise DatasetError(
                f"{lq_dir}: compressed files without a raw counterpart in {hq_dir}: {sorted(extra)[:5]}"
            )
        return PairedSource(sequences, scale=1)
