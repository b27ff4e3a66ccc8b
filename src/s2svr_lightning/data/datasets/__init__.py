"""Datasets by name: ``gopro``, ``reds``, ``vimeo``, ``mfqe``, ``paired``, ``video_folder`` and ``synthetic``.

Each entry is a class built from plain options (``root`` and the dataset's own keys) plus the task:
``check()`` is a cheap look at the root (no listing of every file), ``source(split)`` lists one split
(``"train"``, ``"val"``, ``"test"``) as a :class:`SequenceSource` whose ``validate()`` does the full check.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from .base import DatasetEntry, DegradedSource, FrameStore, PairedSource, SequenceSource
from .clips import EvalSequenceDataset, TrainClipDataset, chunk_windows

__all__ = [
    "DATASETS",
    "DEFAULT_TASK",
    "build_dataset",
    "DatasetEntry",
    "SequenceSource",
    "FrameStore",
    "PairedSource",
    "DegradedSource",
    "TrainClipDataset",
    "EvalSequenceDataset",
    "chunk_windows",
]

# name -> (module, class); imported on first use so that one dataset's optional imports cost nothing to others
DATASETS: dict[str, tuple[str, str]] = {
    "gopro": ("gopro", "GoProDataset"),
    "reds": ("reds", "REDSDataset"),
    "vimeo": ("vimeo", "VimeoDataset"),
    "mfqe": ("mfqe", "MFQEDataset"),
    "paired": ("paired", "PairedDataset"),
    "video_folder": ("video_folder", "VideoFolderDataset"),
    "synthetic": ("synthetic", "SyntheticDataset"),
}

#: the task each benchmark dataset is made for (``paired``, ``video_folder`` and ``synthetic`` serve any
#: task)
DEFAULT_TASK = {"gopro": "deblur", "reds": "vsr", "vimeo": "vsr", "mfqe": "cve"}


def dataset_class(name: str) -> type:
    if name not in DATASETS:
        raise ValueError(f"expected dataset name in {sorted(DATASETS)}, got {name!r}")
    module, cls = DATASETS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def build_dataset(options: Mapping[str, Any], *, task: str, scale: int, seed: int = 0):
    """Instantiate the dataset named by ``options["name"]`` with the rest of ``options``.

    Raises ``ValueError`` for an unknown name, an unknown option or a task the dataset does not serve.
    """
    options = dict(options)
    name = options.pop("name", None)
    if name is None:
        raise ValueError(
            f"expected the dataset options to have a 'name' key (one of {sorted(DATASETS)}), got {options}"
        )
    cls = dataset_class(name)
    if task not in cls.tasks:
        raise ValueError(f"the {name} dataset serves the task(s) {list(cls.tasks)}, got task={task!r}")
    try:
        return cls(task=task, scale=scale, seed=seed, **options)
    except TypeError as err:  # an unknown keyword: say which options exist
        import inspect

        params = [
            name
            for name, p in inspect.signature(cls).parameters.items()
            if name not in ("task", "scale", "seed") and p.kind is p.KEYWORD_ONLY
        ]
        if issubclass(cls, DatasetEntry):
            params.insert(0, "root")
        raise ValueError(f"bad options for the {name} dataset ({err}); expected some of {params}") from err
