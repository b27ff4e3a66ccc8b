"""Datasets by name: ``gopro``, ``reds``, ``vimeo``, ``mfqe``, ``paired``, ``video_folder`` and ``synthetic``.

Each entry is a class built from plain options (``root`` and the dataset's own keys) plus the
:class:`~s2svr_lightning.task.Task`, whose one ``degradation`` says how any LQ the dataset makes is made:
``check()`` is a cheap look at the root (no listing of every file), ``source(split)`` lists one split
(``"train"``, ``"val"``, ``"test"``) as a :class:`SequenceSource` whose ``validate()`` does the full check.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ...task import TASK_KINDS, Task
from .base import DatasetEntry, DegradedSource, FrameStore, PairedSource, SequenceSource
from .clips import EvalSequenceDataset, TrainClipDataset, chunk_windows

__all__ = [
    "DATASETS",
    "build_dataset",
    "check_dataset_options",
    "DatasetEntry",
    "SequenceSource",
    "FrameStore",
    "PairedSource",
    "DegradedSource",
    "TrainClipDataset",
    "EvalSequenceDataset",
    "chunk_windows",
]

# name -> (module, class, the task kinds it serves); a module is imported on first use, so that one
# dataset's optional imports cost nothing to others, and a task it does not serve is refused before that
DATASETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "gopro": ("gopro", "GoProDataset", ("deblur",)),
    "reds": ("reds", "REDSDataset", ("vsr",)),
    "vimeo": ("vimeo", "VimeoDataset", ("vsr",)),
    "mfqe": ("mfqe", "MFQEDataset", ("cve",)),
    "paired": ("paired", "PairedDataset", TASK_KINDS),
    "video_folder": ("video_folder", "VideoFolderDataset", TASK_KINDS),
    "synthetic": ("synthetic", "SyntheticDataset", TASK_KINDS),
}


def dataset_class(name: str) -> type:
    if name not in DATASETS:
        raise ValueError(f"expected dataset name in {sorted(DATASETS)}, got {name!r}")
    module, cls, _ = DATASETS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


# degradation options that datasets once took themselves: they are the task's now (``degradation.<key>``)
_MOVED_TO_TASK = ("blur_frames", "blur_stride", "qp")


def check_dataset_options(options: Mapping[str, Any]) -> None:
    """Refuse a degradation option given the old way, as a dataset option: how LQ is made is the task's
    ``degradation`` (one node, recorded in the restorer checkpoint), which every dataset reads."""
    moved = [key for key in _MOVED_TO_TASK if key in options]
    if moved:
        raise ValueError(
            f"dataset options {moved} moved to the task's degradation: set "
            + ", ".join(f"degradation.{key}={options[key]}" for key in moved)
            + f" instead of dataset.{moved[0]} (the one place that says how LQ is made)"
        )


def build_dataset(options: Mapping[str, Any], *, task: Task, seed: int = 0):
    """Instantiate the dataset named by ``options["name"]`` with the rest of ``options`` and ``task``.

    Raises ``ValueError`` for an unknown name, an unknown option, a degradation option (the task's, see
    :func:`check_dataset_options`) or a task the dataset does not serve.
    """
    if not isinstance(task, Task):
        raise ValueError(f"expected a Task, got {type(task).__name__}")
    options = dict(options)
    name = options.pop("name", None)
    if name is None:
        raise ValueError(
            f"expected the dataset options to have a 'name' key (one of {sorted(DATASETS)}), got {options}"
        )
    check_dataset_options(options)
    serves = DATASETS[name][2] if name in DATASETS else TASK_KINDS
    if task.kind not in serves:
        raise ValueError(f"the {name} dataset is a {' / '.join(serves)} benchmark, got task={task.kind!r}")
    cls = dataset_class(name)
    try:
        return cls(task=task, seed=seed, **options)
    except TypeError as err:  # an unknown keyword: say which options exist
        import inspect

        params = [
            name
            for name, p in inspect.signature(cls).parameters.items()
            if name not in ("task", "seed") and p.kind is p.KEYWORD_ONLY
        ]
        if issubclass(cls, DatasetEntry):
            params.insert(0, "root")
        raise ValueError(f"bad options for the {name} dataset ({err}); expected some of {params}") from err
