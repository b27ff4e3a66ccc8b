"""What every dataset of the library is made of.

- A :class:`SequenceSource` is one split of one dataset: an indexed list of sequences, each a run of
  aligned (LQ, HQ) frames that can be loaded by frame range and crop. Building one only lists files;
  :meth:`SequenceSource.validate` then checks everything a training run will rely on (counts, sizes,
  readability) and raises :class:`DatasetError` naming the file and the problem.
- :class:`PairedSource` pairs two :class:`FrameStore` s per sequence (REDS, GoPro, Vimeo with BIx4, MFQE);
  :class:`DegradedSource` makes the LQ from the HQ on the fly with the task's degradation (Vimeo without
  BIx4, ``video_folder``).
- :class:`DatasetEntry` is what every dataset entry of :data:`~s2svr_lightning.data.datasets.DATASETS`
  is built from: the task, the scale, the seed and the root folder.

The torch datasets that cut clips out of a source are in :mod:`~s2svr_lightning.data.datasets.clips`.

Loaded clips are dicts of float32 tensors in [0, 1]: ``lq (n, 3, h, w)``, ``hq (n, 3, H, W)`` and, where the
flow is known, ``flow``/``flow_valid`` (forward, ``flow[t]`` = F_{t -> t+1}) and ``flow_bwd``/
``flow_bwd_valid`` (backward, ``flow_bwd[t]`` = F_{t+1 -> t} on frame t+1's grid) with ``n - 1`` entries.
The backward flow lets temporal reversal keep an exact flow.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ...metrics import quantize_8bit
from ...task import Task
from ..errors import DatasetError
from ..media.store import Crop, FrameStore

__all__ = [
    "DatasetEntry",
    "SequenceSource",
    "ListedSource",
    "PairedSource",
    "DegradedSource",
    "VERIFY_LEVELS",
    "layout_error",
    "require_dir",
]

VERIFY_LEVELS = ("none", "header", "full")


def layout_error(dataset: str, path: os.PathLike | str, problem: str, layout: str) -> DatasetError:
    """The error for a dataset that is not where the config says: the path, the problem, the expected
    layout, and the way to the built-in data."""
    return DatasetError(
        f"{dataset} dataset: {path}: {problem}.\nExpected layout: {layout}\n"
        "Point dataset.root at the downloaded dataset, or train on the built-in synthetic video with "
        "`python -m s2svr_lightning +task=demo`."
    )


def require_dir(dataset: str, path: os.PathLike | str, layout: str, what: str = "folder") -> Path:
    path = Path(path)
    if not path.is_dir():
        problem = f"{what} not found" if not path.exists() else f"{what} is not a folder"
        raise layout_error(dataset, path, problem, layout)
    return path


class DatasetEntry:
    """Base of the dataset entries: the task, the seed and the root folder.

    Subclasses set ``name`` and ``layout`` (the expected layout, for messages; the task kinds each one
    serves are in :data:`~s2svr_lightning.data.datasets.DATASETS`), take their own options as keyword
    arguments and pass the rest (``task``, ``seed``, ``root``) on to this constructor; ``source(split)``
    lists one split. ``task`` is the :class:`~s2svr_lightning.task.Task` (kept as ``spec``; ``task`` and
    ``scale`` are its kind and scale): any LQ a dataset makes is made by its degradation, never by
    options of the dataset's own.
    """

    name: str = ""
    layout: str = ""

    def __init__(self, *, task: Task, seed: int = 0, root: str | os.PathLike | None = None) -> None:
        if not isinstance(task, Task):
            raise ValueError(f"expected a Task, got {type(task).__name__}")
        # the task's kind and scale, and the Task itself: its degradation makes any LQ this dataset makes
        self.task, self.scale, self.seed, self.spec = task.kind, task.scale, int(seed), task
        self.root = None if root is None else Path(os.path.expanduser(str(root)))

    def require_root(self) -> Path:
        """The root folder; a :class:`DatasetError` with the expected layout if unset or missing."""
        if self.root is None:
            raise layout_error(self.name, "dataset.root", "not set", self.layout)
        return require_dir(self.name, self.root, self.layout, "root folder")

    def check(self) -> None:
        """A cheap look at the root (no listing of every file)."""
        self.require_root()

    def source(self, split: str) -> SequenceSource:
        raise NotImplementedError


def _check_verify(verify: str) -> None:
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"expected verify in {VERIFY_LEVELS}, got {verify!r}")


class SequenceSource(abc.ABC):
    """One split of a dataset: sequences of aligned LQ/HQ frames (see the module docstring)."""

    #: HQ size / LQ size (4 for VSR, 1 otherwise)
    scale: int = 1
    #: whether :meth:`load` returns ground-truth flow
    has_flow: bool = False

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def key(self, index: int) -> str:
        """Unique name of sequence ``index`` (e.g. ``"reds/000"``)."""

    @abc.abstractmethod
    def length(self, index: int) -> int:
        """Number of (LQ, HQ) frame pairs of sequence ``index``."""

    @abc.abstractmethod
    def size(self, index: int) -> tuple[int, int]:
        """HQ ``(H, W)`` of sequence ``index``."""

    @abc.abstractmethod
    def load(self, index: int, start: int, stop: int, crop: Crop | None = None) -> dict[str, torch.Tensor]:
        """Frames ``start:stop`` of sequence ``index`` as a clip dict (module docstring)."""

    def validate(self, verify: str = "header") -> None:  # noqa: B027 - optional hook
        """Full check at ``setup`` time; raises :class:`DatasetError`. Default: nothing to check."""

    #: frame indices that count for the benchmark metric (e.g. Vimeo-90K-T's centre frame), or None for all
    _score: tuple[int, ...] | None = None

    def score_mask(self, index: int) -> torch.Tensor | None:
        """Frames that count for the benchmark metric, ``(length,)`` bool, or None for all of them."""
        if self._score is None:
            return None
        mask = torch.zeros(self.length(index), dtype=torch.bool)
        mask[list(self._score)] = True
        return mask

    def worker_start(self) -> str | None:
        """The ``multiprocessing`` start method that DataLoader workers reading this source need (None: the
        platform's default is safe)."""
        return None

    def frame_names(self, index: int) -> list[str] | None:
        """The dataset's name of each frame of sequence ``index`` (e.g. ``"00000000"``, ``"im4"``), used to
        name saved outputs, or None where frames have no names of their own (outputs use the index)."""
        return None

    def describe(self) -> str:
        return f"{type(self).__name__} with {len(self)} sequences"


def _crop_lq(crop: Crop | None, scale: int) -> Crop | None:
    if crop is None:
        return None
    top, left, h, w = crop
    return top // scale, left // scale, h // scale, w // scale


def _validate_stores(stores: Sequence[FrameStore], verify: str) -> None:
    """Validate many stores in a few threads (validation is file-system and decoder bound)."""
    if verify == "none" or not stores:
        return
    with ThreadPoolExecutor(max_workers=min(8, len(stores))) as pool:
        for future in [pool.submit(s.validate, verify) for s in stores]:
            future.result()


class ListedSource(SequenceSource):
    """A source over a list of sequences whose first item is the key, ``(key, store, ...)``."""

    def __init__(self, sequences: Sequence[tuple], *, score: Sequence[int] | None = None) -> None:
        self.sequences = list(sequences)
        self._score = None if score is None else tuple(score)

    def __len__(self) -> int:
        return len(self.sequences)

    def key(self, index: int) -> str:
        return self.sequences[index][0]

    def worker_start(self) -> str | None:
        for sequence in self.sequences:
            for item in sequence[1:]:
                if isinstance(item, FrameStore) and item.worker_start is not None:
                    return item.worker_start
        return None


class PairedSource(ListedSource):
    """Sequences whose LQ and HQ frames both exist on disk, one :class:`FrameStore` each.

    Args:
        sequences: ``(key, lq_store, hq_store)`` per sequence.
        scale: HQ size / LQ size.
        score: optional per-sequence frame mask for the metric (e.g. Vimeo-90K-T's centre frame).
    """

    def __init__(
        self,
        sequences: Sequence[tuple[str, FrameStore, FrameStore]],
        *,
        scale: int,
        score: Sequence[int] | None = None,
    ) -> None:
        super().__init__(sequences, score=score)
        self.scale = scale

    def length(self, index: int) -> int:
        return len(self.sequences[index][2])

    def size(self, index: int) -> tuple[int, int]:
        return self.sequences[index][2].size()

    def frame_names(self, index: int) -> list[str] | None:
        return self.sequences[index][2].names()

    def validate(self, verify: str = "header") -> None:
        _check_verify(verify)
        stores = [s for _, lq, hq in self.sequences for s in (lq, hq)]
        _validate_stores(stores, verify)
        for key, lq, hq in self.sequences:
            if len(lq) != len(hq):
                raise DatasetError(
                    f"{key}: {len(lq)} LQ frames in {lq.path} but {len(hq)} HQ frames in {hq.path}"
                )
            if len(hq) == 0:
                raise DatasetError(f"{key}: no frames in {hq.path}")
            (h, w), (lh, lw) = hq.size(), lq.size()
            if (lh * self.scale, lw * self.scale) != (h, w):
                raise DatasetError(
                    f"{key}: LQ frames in {lq.path} are {lh}x{lw} but HQ frames in {hq.path} are {h}x{w}; "
                    f"expected LQ = HQ / {self.scale}"
                )

    def load(self, index: int, start: int, stop: int, crop: Crop | None = None) -> dict[str, torch.Tensor]:
        _, lq, hq = self.sequences[index]
        frames = range(start, stop)
        return {"lq": lq.read(frames, _crop_lq(crop, self.scale)), "hq": hq.read(frames, crop)}


class DegradedSource(ListedSource):
    """Sequences of HQ frames whose LQ is made on the fly by the task's degradation
    (:meth:`Task.degrade <s2svr_lightning.task.Task.degrade>`).

    - ``vsr``: MATLAB bicubic down by ``scale``, rounded to 8 bits as the benchmarks' stored BIx4 frames
      are; HQ frames are mod-cropped to a multiple of ``scale``.
    - ``deblur``: every ``blur_frames`` consecutive stored frames (a high-frame-rate source) average into
      one blurred LQ frame whose target is the middle one; windows start every ``blur_stride`` frames.
    - ``cve``: HEVC low-delay P at ``qp`` over the loaded frames (the first loaded frame is the I frame).

    Args:
        sequences: ``(key, hq_store)`` per sequence.
        task: the task whose degradation makes the LQ.
        score: optional per-sequence frame mask for the metric.
    """

    def __init__(
        self,
        sequences: Sequence[tuple[str, FrameStore]],
        *,
        task: Task,
        score: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(task, Task):
            raise ValueError(f"expected a Task, got {type(task).__name__}")
        super().__init__(sequences, score=score)
        self.task = task
        self.scale = task.scale

    def length(self, index: int) -> int:
        return self.task.degraded_length(len(self.sequences[index][1]))

    def size(self, index: int) -> tuple[int, int]:
        h, w = self.sequences[index][1].size()
        return h - h % self.scale, w - w % self.scale

    def frame_names(self, index: int) -> list[str] | None:
        names = self.sequences[index][1].names()
        if names is None or self.task.kind != "deblur":
            return names
        # output frame i is the sharp middle frame of the i-th blur window (see load)
        window, stride = self.task.frame_span
        return [names[i * stride + window // 2] for i in range(self.length(index))]

    def validate(self, verify: str = "header") -> None:
        _check_verify(verify)
        _validate_stores([s for _, s in self.sequences], verify)
        window = self.task.frame_span[0]
        for index, (key, store) in enumerate(self.sequences):
            h, w = self.size(index)
            if self.length(index) < 1 or h < self.scale or w < self.scale:
                need = f"at least {window} frames" if window > 1 else "at least one frame"
                raise DatasetError(
                    f"{key}: {store.path} has {len(store)} frames of {store.size()}; the {self.task.kind} "
                    f"degradation needs {need} of at least {self.scale}x{self.scale} pixels"
                )

    def load(self, index: int, start: int, stop: int, crop: Crop | None = None) -> dict[str, torch.Tensor]:
        store = self.sequences[index][1]
        if crop is None:
            h, w = self.size(index)
            crop = (0, 0, h, w)
        window, stride = self.task.frame_span
        hq = store.read(range(start * stride, (stop - 1) * stride + window), crop)
        lq, hq = self.task.degrade(hq, return_target=True)
        if self.task.kind == "vsr":
            lq = quantize_8bit(lq)  # as if saved to PNG, like the benchmarks' BIx4 frames
        return {"lq": lq, "hq": hq}
