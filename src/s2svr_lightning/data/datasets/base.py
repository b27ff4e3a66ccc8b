"""What every dataset of the library is made of.

- A :class:`SequenceSource` is one split of one dataset: an indexed list of sequences, each a run of
  aligned (LQ, HQ) frames that can be loaded by frame range and crop. Building one only lists files;
  :meth:`SequenceSource.validate` then checks everything a training run will rely on (counts, sizes,
  readability) and raises :class:`DatasetError` naming the file and the problem.
- :class:`PairedSource` pairs two :class:`FrameStore` s per sequence (REDS, GoPro, Vimeo with BIx4, MFQE);
  :class:`DegradedSource` makes the LQ from the HQ on the fly with the task's degradation (Vimeo without
  BIx4, ``video_folder``).
- :class:`TrainClipDataset` draws random N-frame clips with aligned crops and augmentation;
  :class:`EvalSequenceDataset` serves whole sequences (or overlapping chunks) for validation and test.

Loaded clips are dicts of float32 tensors in [0, 1]: ``lq (n, 3, h, w)``, ``hq (n, 3, H, W)`` and, where the
flow is known, ``flow``/``flow_valid`` (forward, ``flow[t]`` = F_{t -> t+1}) and ``flow_bwd``/
``flow_bwd_valid`` (backward, ``flow_bwd[t]`` = F_{t+1 -> t} on frame t+1's grid) with ``n - 1`` entries.
The backward flow lets temporal reversal keep an exact flow.
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..degradations import TASKS, bicubic_downsample, degraded_length, hevc_compress, temporal_blur
from ..errors import DatasetError

__all__ = [
    "Crop",
    "FrameStore",
    "SequenceSource",
    "PairedSource",
    "DegradedSource",
    "TrainClipDataset",
    "EvalSequenceDataset",
    "chunk_windows",
    "VERIFY_LEVELS",
    "layout_error",
    "require_dir",
]

Crop = tuple[int, int, int, int]  # (top, left, height, width) in HQ pixels
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


def _check_verify(verify: str) -> None:
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"expected verify in {VERIFY_LEVELS}, got {verify!r}")


class FrameStore(abc.ABC):
    """One sequence of RGB frames on disk (image files, a video file, a YUV file)."""

    #: where the frames live, used in error messages
    path: str

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of every frame."""

    @abc.abstractmethod
    def read(self, indices: Sequence[int], crop: Crop | None = None) -> torch.Tensor:
        """Frames ``(n, 3, H, W)`` float32 in [0, 1] (cropped to ``crop`` if given)."""

    @abc.abstractmethod
    def validate(self, verify: str = "header") -> None:
        """Raise :class:`DatasetError` if a frame is missing, unreadable, truncated or of another size."""

    def names(self) -> list[str] | None:
        """The name of each frame (an image file's name without its extension), or None (a video file)."""
        return None


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


class PairedSource(SequenceSource):
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
        self.sequences = list(sequences)
        self.scale = scale
        self._score = None if score is None else tuple(score)

    def __len__(self) -> int:
        return len(self.sequences)

    def key(self, index: int) -> str:
        return self.sequences[index][0]

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


class DegradedSource(SequenceSource):
    """Sequences of HQ frames whose LQ is made on the fly by the task's degradation.

    - ``vsr``: MATLAB bicubic down by ``scale``; HQ frames are mod-cropped to a multiple of ``scale``.
    - ``deblur``: every ``blur_frames`` consecutive stored frames (a high-frame-rate source) average into
      one blurred LQ frame whose target is the middle one; windows start every ``blur_stride`` frames.
    - ``cve``: HEVC low-delay P at ``qp`` over the loaded frames (the first loaded frame is the I frame).
    """

    def __init__(
        self,
        sequences: Sequence[tuple[str, FrameStore]],
        *,
        task: str,
        scale: int = 4,
        blur_frames: int = 7,
        blur_stride: int | None = None,
        qp: int = 37,
        score: Sequence[int] | None = None,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"expected task in {TASKS}, got {task!r}")
        self.sequences = list(sequences)
        self.task = task
        self.scale = scale if task == "vsr" else 1
        self.blur_frames = blur_frames
        self.blur_stride = blur_frames if blur_stride is None else blur_stride
        self.qp = qp
        self._score = None if score is None else tuple(score)

    def __len__(self) -> int:
        return len(self.sequences)

    def key(self, index: int) -> str:
        return self.sequences[index][0]

    def length(self, index: int) -> int:
        n = len(self.sequences[index][1])
        if self.task == "deblur":
            return degraded_length("deblur", n, blur_frames=self.blur_frames, blur_stride=self.blur_stride)
        return n

    def size(self, index: int) -> tuple[int, int]:
        h, w = self.sequences[index][1].size()
        return h - h % self.scale, w - w % self.scale

    def frame_names(self, index: int) -> list[str] | None:
        names = self.sequences[index][1].names()
        if names is None or self.task != "deblur":
            return names
        # output frame i is the sharp middle frame of the i-th blur window (see load)
        first = self.blur_frames // 2
        return [names[i * self.blur_stride + first] for i in range(self.length(index))]

    def validate(self, verify: str = "header") -> None:
        _check_verify(verify)
        _validate_stores([s for _, s in self.sequences], verify)
        for index, (key, store) in enumerate(self.sequences):
            h, w = self.size(index)
            if self.length(index) < 1 or h < self.scale or w < self.scale:
                need = (
                    f"at least {self.blur_frames} frames" if self.task == "deblur" else "at least one frame"
                )
                raise DatasetError(
                    f"{key}: {store.path} has {len(store)} frames of {store.size()}; the {self.task} "
                    f"degradation needs {need} of at least {self.scale}x{self.scale} pixels"
                )

    def load(self, index: int, start: int, stop: int, crop: Crop | None = None) -> dict[str, torch.Tensor]:
        store = self.sequences[index][1]
        if crop is None:
            h, w = self.size(index)
            crop = (0, 0, h, w)
        if self.task == "deblur":
            first, k = start * self.blur_stride, self.blur_frames
            last = (stop - 1) * self.blur_stride + k
            sub = store.read(range(first, last), crop)
            lq = temporal_blur(sub, k, stride=self.blur_stride)
            hq = sub[k // 2 :: self.blur_stride][: lq.shape[0]]
            return {"lq": lq, "hq": hq}
        hq = store.read(range(start, stop), crop)
        if self.task == "vsr":
            lq = bicubic_downsample(hq, self.scale).clamp_(0.0, 1.0)
            lq = torch.round(lq * 255.0) / 255.0  # as if saved to PNG, like the benchmarks' BIx4 frames
        else:
            lq = hevc_compress(hq, self.qp)
        return {"lq": lq, "hq": hq}


# --------------------------------------------------------------------------------------------------
# Augmentation on clip dicts (flows follow the frames)
# --------------------------------------------------------------------------------------------------


def _hflip(clip: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v.flip(-1) for k, v in clip.items()}
    for name in ("flow", "flow_bwd"):
        if name in out:
            out[name] = out[name] * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
    return out


def _vflip(clip: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v.flip(-2) for k, v in clip.items()}
    for name in ("flow", "flow_bwd"):
        if name in out:
            out[name] = out[name] * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
    return out


def _transpose(clip: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v.transpose(-1, -2) for k, v in clip.items()}
    for name in ("flow", "flow_bwd"):
        if name in out:
            out[name] = out[name].flip(1)  # x and y swap roles
    return out


def _reverse(clip: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Play the clip backwards: the forward flow of the reversed clip is the reversed backward flow."""
    out = {"lq": clip["lq"].flip(0), "hq": clip["hq"].flip(0)}
    if "flow" in clip:
        out["flow"], out["flow_bwd"] = clip["flow_bwd"].flip(0), clip["flow"].flip(0)
        out["flow_valid"], out["flow_bwd_valid"] = clip["flow_bwd_valid"].flip(0), clip["flow_valid"].flip(0)
    return out


def _mirror(clip: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Append the clip played backwards (Vimeo-90K's 7 -> 14 frames); the turning point has zero flow."""
    rev = _reverse(clip)
    out = {"lq": torch.cat((clip["lq"], rev["lq"])), "hq": torch.cat((clip["hq"], rev["hq"]))}
    if "flow" in clip:
        zero = torch.zeros_like(clip["flow"][:1])
        ones = torch.ones_like(clip["flow_valid"][:1])
        out["flow"] = torch.cat((clip["flow"], zero, rev["flow"]))
        out["flow_bwd"] = torch.cat((clip["flow_bwd"], zero, rev["flow_bwd"]))
        out["flow_valid"] = torch.cat((clip["flow_valid"], ones, rev["flow_valid"]))
        out["flow_bwd_valid"] = torch.cat((clip["flow_bwd_valid"], ones, rev["flow_bwd_valid"]))
    return out


def _to_sample(clip: dict[str, torch.Tensor], key: str) -> dict:
    """Clip dict -> the sample contract of docs/contracts.md (the backward flow stays internal)."""
    sample = {"lq": clip["lq"].float().contiguous(), "hq": clip["hq"].float().contiguous(), "key": key}
    if "flow" in clip:
        sample["flow"] = clip["flow"].float().contiguous()
        sample["flow_valid"] = clip["flow_valid"].float().contiguous()
    return sample


class TrainClipDataset(torch.utils.data.Dataset):
    """Random ``num_frames``-frame clips of a source with aligned random crops and augmentation.

    Item ``i`` draws from sequence ``i % len(source)``: a random start frame, a random HQ crop of
    ``crop_size`` (aligned to the scale so the LQ crop is exactly ``crop_size / scale``), then each enabled
    augmentation with probability 1/2: horizontal flip, vertical flip, transpose (square crops only),
    temporal reversal; ``mirror`` appends the reversed clip (2N frames). Randomness comes from torch's
    global generator, which Lightning and the DataLoader seed per worker.

    Returns samples ``lq (T, 3, h, w)``, ``hq (T, 3, H, W)``, ``key`` and, if known, ``flow (T-1, 2, H, W)``
    and ``flow_valid (T-1, 1, H, W)``.
    """

    def __init__(
        self,
        source: SequenceSource,
        *,
        num_frames: int,
        crop_size: int | None,
        hflip: bool = True,
        vflip: bool = True,
        transpose: bool = True,
        reverse: bool = True,
        mirror: bool = False,
        samples_per_epoch: int | None = None,
    ) -> None:
        if len(source) == 0:
            raise DatasetError(f"no training sequences in {source.describe()}")
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"expected num_frames >= 1, got {num_frames!r}")
        scale = source.scale
        if crop_size is not None and (crop_size < scale or crop_size % scale):
            raise ValueError(
                f"expected crop_size to be a positive multiple of the scale {scale}, got {crop_size}"
            )
        for i in range(len(source)):
            if source.length(i) < num_frames:
                raise DatasetError(
                    f"sequence {source.key(i)} has {source.length(i)} frames, < num_frames={num_frames}"
                )
            h, w = source.size(i)
            if crop_size is not None and (h < crop_size or w < crop_size):
                raise DatasetError(
                    f"sequence {source.key(i)} has {h}x{w} frames, smaller than crop_size={crop_size}"
                )
        if crop_size is None and len({source.size(i) for i in range(len(source))}) > 1:
            raise DatasetError(
                "training sequences have different frame sizes, so whole frames cannot be batched; "
                "set crop_size"
            )
        self.source = source
        self.num_frames = num_frames
        self.crop_size = crop_size
        self.hflip, self.vflip, self.transpose, self.reverse, self.mirror = (
            hflip,
            vflip,
            transpose,
            reverse,
            mirror,
        )
        self.samples_per_epoch = samples_per_epoch

    def __len__(self) -> int:
        return self.samples_per_epoch if self.samples_per_epoch else len(self.source)

    def _coin(self) -> bool:
        return bool(torch.randint(0, 2, ()).item())

    def __getitem__(self, item: int) -> dict:
        index = item % len(self.source)
        n = self.num_frames
        start = int(torch.randint(0, self.source.length(index) - n + 1, ()).item())
        crop = None
        if self.crop_size is not None:
            h, w = self.source.size(index)
            s, c = self.source.scale, self.crop_size
            top = int(torch.randint(0, (h - c) // s + 1, ()).item()) * s
            left = int(torch.randint(0, (w - c) // s + 1, ()).item()) * s
            crop = (top, left, c, c)
        clip = self.source.load(index, start, start + n, crop)
        if self.hflip and self._coin():
            clip = _hflip(clip)
        if self.vflip and self._coin():
            clip = _vflip(clip)
        if self.transpose and clip["hq"].shape[-1] == clip["hq"].shape[-2] and self._coin():
            clip = _transpose(clip)
        if self.reverse and self._coin():
            clip = _reverse(clip)
        if self.mirror:
            clip = _mirror(clip)
        return _to_sample(clip, f"{self.source.key(index)}/{start:06d}")


def chunk_windows(length: int, chunk: int | None, overlap: int = 0) -> list[tuple[int, int, int, int]]:
    """Cut ``length`` frames into windows of ``chunk`` frames overlapping by ``overlap``.

    Returns ``(start, stop, score_start, score_stop)`` per window: each frame of the sequence lies in the
    scored part of exactly one window (an overlap is split between its two windows), so metrics over
    scored frames count every frame once. The last window is shifted back to end at ``length``.
    """
    if length < 1:
        raise ValueError(f"expected a sequence length >= 1, got {length}")
    if chunk is None or chunk >= length:
        return [(0, length, 0, length)]
    if chunk < 1 or not 0 <= overlap < chunk:
        raise ValueError(
            f"expected chunk >= 1 and 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}"
        )
    step = chunk - overlap
    starts = list(range(0, length - chunk + 1, step))
    if starts[-1] + chunk < length:
        starts.append(length - chunk)
    windows = []
    for j, start in enumerate(starts):
        stop = start + chunk
        lo = 0 if j == 0 else (windows[-1][3])
        hi = length if j == len(starts) - 1 else math.ceil((stop + starts[j + 1]) / 2)
        windows.append((start, stop, lo, hi))
    return windows


class EvalSequenceDataset(torch.utils.data.Dataset):
    """Whole sequences (or overlapping chunks of them) for validation and test, in a fixed order.

    Samples add to the contract ``frames (T,)`` (int64 frame numbers within the sequence) and ``score
    (T,)`` (bool: the frames a metric must count; all of them for a whole sequence, the owned part of each
    chunk otherwise, and only the benchmark's frames where a dataset scores a subset, e.g. Vimeo-90K-T's
    centre frame). ``key`` is the sequence's key, shared by its chunks, so metrics can average per
    sequence. Where the source names its frames (:meth:`SequenceSource.frame_names`), ``frame_names``
    holds the ``T`` names (the default collate turns them into ``T`` tuples of one name per sample).

    Args:
        source: the split.
        chunk: frames per sample (None: whole sequences).
        overlap: frames shared by consecutive chunks.
        max_sequences: keep only the first sequences (quick validation).
    """

    def __init__(
        self,
        source: SequenceSource,
        *,
        chunk: int | None = None,
        overlap: int = 0,
        max_sequences: int | None = None,
    ) -> None:
        if len(source) == 0:
            raise DatasetError(f"no evaluation sequences in {source.describe()}")
        self.source = source
        count = len(source) if max_sequences is None else min(int(max_sequences), len(source))
        self.windows: list[tuple[int, int, int, int, int]] = []
        for index in range(count):
            for start, stop, lo, hi in chunk_windows(source.length(index), chunk, overlap):
                self.windows.append((index, start, stop, lo, hi))

    def __len__(self) -> int:
        return len(self.windows)

    def sequence_of(self, item: int) -> int:
        return self.windows[item][0]

    def frames_of(self, item: int) -> int:
        _, start, stop, _, _ = self.windows[item]
        return stop - start

    def __getitem__(self, item: int) -> dict:
        index, start, stop, lo, hi = self.windows[item]
        clip = self.source.load(index, start, stop, None)
        sample = _to_sample(clip, self.source.key(index))
        frames = torch.arange(start, stop)
        score = (frames >= lo) & (frames < hi)
        mask = self.source.score_mask(index)
        if mask is not None:
            score &= mask[start:stop]
        sample["frames"] = frames
        sample["score"] = score
        names = self.source.frame_names(index)
        if names is not None:
            sample["frame_names"] = list(names[start:stop])
        return sample
