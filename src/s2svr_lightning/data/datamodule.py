"""``VideoRestorationDataModule``: the one DataModule of a task, shared by all three training stages.

Training batches are random N-frame clips with aligned crops and augmentation (flow stages use the
consecutive pairs of the same clips); validation and test batches are whole sequences (optionally cut
into overlapping chunks), batch size 1, each sequence seen exactly once across DDP ranks.

DDP: the loaders carry their own samplers, both subclasses of ``DistributedSampler`` so Lightning leaves
them as they are whatever ``use_distributed_sampler`` says: the training sampler shuffles a per-rank share,
and the evaluation sampler (:class:`EvalShardSampler`) gives each rank a disjoint set of whole sequences
with no padding, so no sequence is counted twice. A rank may get fewer batches than another (or none
when there are more ranks than sequences): metrics must be reduced with ``torchmetrics`` (synced at
``compute``), not by averaging per-rank means.
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..task import TASK_KINDS, Task
from ..utils import to_plain
from .datasets import EvalSequenceDataset, SequenceSource, TrainClipDataset, build_dataset
from .datasets.base import VERIFY_LEVELS
from .datasets.clips import Augmentation

__all__ = ["VideoRestorationDataModule", "EvalShardSampler", "shard_sequences"]


def shard_sequences(frames_per_sequence: Sequence[int], num_replicas: int) -> list[list[int]]:
    """Assign whole sequences to ranks: longest first to the least loaded rank (ties: lowest rank).

    Deterministic, so every rank computes the same assignment; the shards partition
    ``range(len(frames_per_sequence))`` exactly (no duplicates, nothing missing).
    """
    if num_replicas < 1:
        raise ValueError(f"expected num_replicas >= 1, got {num_replicas}")
    shards: list[list[int]] = [[] for _ in range(num_replicas)]
    load = [0] * num_replicas
    for seq in sorted(range(len(frames_per_sequence)), key=lambda i: (-frames_per_sequence[i], i)):
        rank = min(range(num_replicas), key=lambda r: (load[r], r))
        shards[rank].append(seq)
        load[rank] += frames_per_sequence[seq]
    return [sorted(s) for s in shards]


class EvalShardSampler(DistributedSampler):
    """Indices of one rank's whole sequences of an :class:`EvalSequenceDataset`, in dataset order.

    Chunks of a sequence stay on one rank; shards are balanced by frame count and never padded (unlike
    ``DistributedSampler``, whose repeated samples bias a mean). Subclassing ``DistributedSampler`` keeps
    Lightning from wrapping it.
    """

    def __init__(self, dataset: EvalSequenceDataset, *, num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(
                f"expected 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}"
            )
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        per_seq: dict[int, int] = {}
        for item in range(len(dataset)):
            seq = dataset.sequence_of(item)
            per_seq[seq] = per_seq.get(seq, 0) + dataset.frames_of(item)
        seqs = sorted(per_seq)
        mine = {seqs[i] for i in shard_sequences([per_seq[s] for s in seqs], num_replicas)[rank]}
        self.indices = [item for item in range(len(dataset)) if dataset.sequence_of(item) in mine]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


WORKER_STARTS = ("auto", "fork", "forkserver", "spawn")


def worker_context(start: str) -> multiprocessing.context.BaseContext:
    """The ``multiprocessing`` context that DataLoader workers start with.

    A forkserver imports the data modules once, so each worker forked from it starts without importing
    torch again. As with ``spawn`` (the default on macOS and Windows), each worker imports the main module:
    a script that trains must keep its work under ``if __name__ == "__main__":``."""
    context = multiprocessing.get_context(start)
    if start == "forkserver":
        context.set_forkserver_preload([__name__, "s2svr_lightning.data.media.video_io", "av"])
    return context


class VideoRestorationDataModule(L.LightningDataModule):
    """Data of one task: a dataset chosen by name, random training clips, whole-sequence evaluation.

    Cheap to build (nothing is listed); :meth:`check` looks at the dataset root before any heavy work;
    :meth:`setup` lists and validates the splits a stage needs (counts, sizes, readable files) and raises
    :class:`~s2svr_lightning.data.DatasetError` naming the file and the problem.

    ``num_frames``, ``crop_size`` and ``batch_size`` are plain attributes read by :meth:`train_dataloader`,
    so a stage can change them (or take a copy with :meth:`with_overrides`).

    Args:
        dataset: ``{"name": <gopro|reds|vimeo|mfqe|paired|video_folder|synthetic>, **options}``
            (e.g. ``root``); default: the built-in synthetic video.
        task: ``"vsr"``, ``"deblur"`` or ``"cve"``.
        scale: HQ/LQ size ratio: 4 for VSR (the default) and 1 for the other tasks.
        degradation: how LQ is made, the options of the task kind's degradation (``{"blur_frames": 13}``,
            ``{"qp": 37}``): the config's one ``degradation`` node, which the restorer checkpoint records
            too. The DataModule builds the :class:`~s2svr_lightning.task.Task` once (``self.spec``) and
            hands it to the dataset, which makes its LQ (or picks its stored LQ) by it.
        num_frames: frames per training clip (N).
        crop_size: HQ crop side of training clips (the LQ crop is ``crop_size / scale``); None: whole frames.
        batch_size: training clips per batch (evaluation always uses 1).
        num_workers: DataLoader worker processes.
        hflip, vflip, transpose, reverse: training augmentations, each applied with probability 1/2
            (transpose only on square crops; reverse plays the clip backwards).
        mirror: append each training clip reversed (2N frames; Vimeo-90K's recipe).
        samples_per_epoch: training clips per epoch (default: one per sequence).
        val_chunk, val_overlap: cut validation sequences into chunks of this many frames overlapping by
            ``val_overlap`` (None: whole sequences); test_chunk, test_overlap: the same for test.
        val_max_sequences, test_max_sequences: evaluate only the first sequences.
        seed: seed of the synthetic data and of the training sampler's shuffling under DDP.
        verify: how much ``setup`` checks each file: ``"none"``, ``"header"`` (size, format, truncation;
            default) or ``"full"`` (decode every frame).
        pin_memory, persistent_workers: DataLoader options.
        worker_start: how DataLoader workers start: ``"auto"`` (``forkserver`` for datasets that decode
            video files, whose decoders must not cross a fork; the platform's default otherwise),
            ``"fork"``, ``"forkserver"`` or ``"spawn"``.
    """

    def __init__(
        self,
        *,
        dataset: Mapping[str, Any] | None = None,
        task: str = "vsr",
        scale: int | None = None,
        degradation: Mapping[str, Any] | None = None,
        num_frames: int = 7,
        crop_size: int | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        hflip: bool = True,
        vflip: bool = True,
        transpose: bool = True,
        reverse: bool = True,
        mirror: bool = False,
        samples_per_epoch: int | None = None,
        val_chunk: int | None = None,
        val_overlap: int = 0,
        val_max_sequences: int | None = None,
        test_chunk: int | None = None,
        test_overlap: int = 0,
        test_max_sequences: int | None = None,
        seed: int = 0,
        verify: str = "header",
        pin_memory: bool = False,
        persistent_workers: bool = False,
        worker_start: str = "auto",
    ) -> None:
        super().__init__()
        dataset = {"name": "synthetic"} if dataset is None else to_plain(dataset)
        if not isinstance(dataset, dict) or "name" not in dataset:
            raise ValueError(f"expected dataset to be a mapping with a 'name' key, got {dataset!r}")
        if task not in TASK_KINDS:
            raise ValueError(f"expected task in {TASK_KINDS}, got {task!r}")
        try:  # the one Task of the data: the dataset's LQ, the test stage and the checkpoint all read it
            spec = Task.create(task, scale=scale, degradation=to_plain(degradation) or {})
        except ValueError as err:
            raise ValueError(f"the task of the data (task, scale, degradation): {err}") from None
        scale = spec.scale
        if worker_start not in WORKER_STARTS:
            raise ValueError(f"expected worker_start in {WORKER_STARTS}, got {worker_start!r}")
        if verify not in VERIFY_LEVELS:
            raise ValueError(f"expected verify in {VERIFY_LEVELS}, got {verify!r}")
        for name, value in (("val", (val_chunk, val_overlap)), ("test", (test_chunk, test_overlap))):
            chunk, overlap = value
            if chunk is not None and (chunk < 1 or not 0 <= overlap < chunk):
                raise ValueError(
                    f"expected {name}_chunk >= 1 and 0 <= {name}_overlap < {name}_chunk, got {value}"
                )
        # not degradation: the restorer's hparams log it, and a checkpoint from another run scored here may
        # hold another one, which Lightning's merge of the two hparams would refuse (the test stage notes it)
        self.save_hyperparameters(ignore=["degradation"])
        self.dataset_options = dataset
        self.task, self.scale, self.seed, self.verify = task, scale, int(seed), verify
        self.spec = spec
        self.dataset = build_dataset(dataset, task=self.spec, seed=self.seed)
        self.num_frames, self.crop_size, self.batch_size, self.num_workers = (
            num_frames,
            crop_size,
            batch_size,
            num_workers,
        )
        self.augment = Augmentation(hflip, vflip, transpose, reverse, mirror)
        self.samples_per_epoch = samples_per_epoch
        self.val_chunk, self.val_overlap, self.val_max_sequences = val_chunk, val_overlap, val_max_sequences
        self.test_chunk, self.test_overlap, self.test_max_sequences = (
            test_chunk,
            test_overlap,
            test_max_sequences,
        )
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.worker_start = worker_start
        self._check_training_args()
        self._sources: dict[str, SequenceSource] = {}
        self._checked = False
        self._shard: tuple[int, int] | None = None

    # -- configuration -----------------------------------------------------------------------------
    def _check_training_args(self) -> None:
        if not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"expected num_frames >= 1, got {self.num_frames!r}")
        if self.crop_size is not None and (
            not isinstance(self.crop_size, int) or self.crop_size < self.scale or self.crop_size % self.scale
        ):
            raise ValueError(
                f"expected crop_size None or a positive multiple of {self.scale}, got {self.crop_size!r}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {self.batch_size!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"expected num_workers >= 0, got {self.num_workers!r}")

    def with_overrides(self, **overrides: Any) -> VideoRestorationDataModule:
        """A copy with some training attributes changed (e.g. ``num_frames=2, batch_size=8`` for a flow
        stage); the copy shares the already listed and validated splits."""
        allowed = {
            "num_frames",
            "crop_size",
            "batch_size",
            "num_workers",
            "hflip",
            "vflip",
            "transpose",
            "reverse",
            "mirror",
            "samples_per_epoch",
            "val_chunk",
            "val_overlap",
            "val_max_sequences",
            "test_chunk",
            "test_overlap",
            "test_max_sequences",
            "pin_memory",
            "persistent_workers",
            "worker_start",
        }
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise ValueError(f"cannot override {unknown}; expected some of {sorted(allowed)}")
        other = copy.copy(self)
        other._sources = self._sources  # shared: listing and validation are done once
        other.trainer = None
        augment = {k: v for k, v in overrides.items() if k in Augmentation.__dataclass_fields__}
        other.augment = dataclasses.replace(self.augment, **augment)
        for name, value in overrides.items():
            if name not in augment:
                setattr(other, name, value)
        other._check_training_args()
        return other

    def set_shard(self, rank: int, world_size: int) -> None:
        """Set the evaluation shard (rank, world size) rather than ask the trainer or torch.distributed."""
        if not 0 <= rank < world_size:
            raise ValueError(f"expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self._shard = (rank, world_size)

    def _rank_world(self) -> tuple[int, int]:
        if self._shard is not None:
            return self._shard
        trainer = self.trainer
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    # -- Lightning hooks ---------------------------------------------------------------------------
    def check(self) -> None:
        """Cheap check of the dataset root (nothing listed): raises ``DatasetError`` with the expected layout
        and a hint to try the built-in synthetic data (``+task=demo``)."""
        self.dataset.check()
        self._checked = True

    def prepare_data(self) -> None:
        """Nothing to download: datasets are prepared by the user, the synthetic one is rendered lazily."""

    def source(self, split: str) -> SequenceSource:
        """The listed and validated split ``"train"``, ``"val"`` or ``"test"`` (validated on first use)."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"expected split in ('train', 'val', 'test'), got {split!r}")
        if split not in self._sources:
            if not self._checked:
                self.check()
            src = self.dataset.source(split)
            src.validate(self.verify)
            self._sources[split] = src
        return self._sources[split]

    def setup(self, stage: str | None = None) -> None:
        """List and validate the splits of ``stage`` (all of them for None), and check the training clip
        settings against the training split, so every data error surfaces before training starts."""
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(
            stage or "", ("train", "val", "test")
        )
        for split in splits:
            self.source(split)
        if "train" in splits:
            self.train_dataset()
        if "val" in splits:
            self.val_dataset()
        if "test" in splits:
            self.test_dataset()

    # -- datasets ----------------------------------------------------------------------------------
    def train_dataset(self) -> TrainClipDataset:
        """Training clips with the current ``num_frames``/``crop_size``/augmentation attributes."""
        self._check_training_args()
        return TrainClipDataset(
            self.source("train"),
            num_frames=self.num_frames,
            crop_size=self.crop_size,
            augment=self.augment,
            samples_per_epoch=self.samples_per_epoch,
        )

    def _eval_dataset(self, split: str) -> EvalSequenceDataset:
        return EvalSequenceDataset(
            self.source(split),
            chunk=getattr(self, f"{split}_chunk"),
            overlap=getattr(self, f"{split}_overlap"),
            max_sequences=getattr(self, f"{split}_max_sequences"),
        )

    def val_dataset(self) -> EvalSequenceDataset:
        return self._eval_dataset("val")

    def test_dataset(self) -> EvalSequenceDataset:
        return self._eval_dataset("test")

    # -- loaders -----------------------------------------------------------------------------------
    def _loader_kwargs(self, split: str) -> dict[str, Any]:
        workers = self.num_workers
        kwargs = {
            "num_workers": workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": bool(self.persistent_workers and workers > 0),
        }
        start = self.worker_start if self.worker_start != "auto" else self.source(split).worker_start()
        if workers > 0 and start is not None:
            kwargs["multiprocessing_context"] = worker_context(start)
        return kwargs

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        rank, world = self._rank_world()
        drop_last = len(dataset) >= self.batch_size * world
        if world > 1:
            sampler = DistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=drop_last
            )
            return DataLoader(
                dataset,
                batch_size=self.batch_size,
                sampler=sampler,
                drop_last=drop_last,
                **self._loader_kwargs("train"),
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=drop_last,
            **self._loader_kwargs("train"),
        )

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._eval_dataset(split)
        rank, world = self._rank_world()
        sampler = EvalShardSampler(dataset, num_replicas=world, rank=rank)
        return DataLoader(dataset, batch_size=1, sampler=sampler, **self._loader_kwargs(split))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dataset={self.dataset_options}, task={self.task!r}, scale={self.scale}, "
            f"num_frames={self.num_frames}, crop_size={self.crop_size}, batch_size={self.batch_size})"
        )
