"""Torch datasets over a :class:`~s2svr_lightning.data.datasets.base.SequenceSource`: random training clips
with augmentation, and whole sequences (or overlapping chunks) for validation and test.

Samples follow the contract of docs/contracts.md: ``lq (T, 3, h, w)``, ``hq (T, 3, H, W)``, ``key`` and,
where the flow is known, ``flow (T-1, 2, H, W)`` and ``flow_valid (T-1, 1, H, W)``. Augmentations act on
clip dicts and keep the flows exact (a flip negates one flow component, a transpose swaps them, and
temporal reversal swaps the forward and backward flows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import DatasetError
from .base import SequenceSource

__all__ = ["Augmentation", "EvalSequenceDataset", "TrainClipDataset", "chunk_windows"]


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations training clips get: each flip, the transpose (square crops only) and the
    temporal reversal with probability 1/2; ``mirror`` always appends the clip played backwards."""

    hflip: bool = True
    vflip: bool = True
    transpose: bool = True
    reverse: bool = True
    mirror: bool = False


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
    """Clip dict -> the sample contract of docs/contracts.md."""
    sample = {"lq": clip["lq"].float().contiguous(), "hq": clip["hq"].float().contiguous(), "key": key}
    for name in ("flow", "flow_valid", "flow_bwd", "flow_bwd_valid"):
        if name in clip:
            sample[name] = clip[name].float().contiguous()
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
        augment: Augmentation = Augmentation(),
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
        self.augment = augment
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
        aug = self.augment
        if aug.hflip and self._coin():
            clip = _hflip(clip)
        if aug.vflip and self._coin():
            clip = _vflip(clip)
        if aug.transpose and clip["hq"].shape[-1] == clip["hq"].shape[-2] and self._coin():
            clip = _transpose(clip)
        if aug.reverse and self._coin():
            clip = _reverse(clip)
        if aug.mirror:
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
