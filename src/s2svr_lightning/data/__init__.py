"""Data: the task DataModule, datasets over the benchmarks' real layouts, degradations, video I/O and the
built-in synthetic video with exact flow.

Names are imported lazily (as in :mod:`s2svr_lightning`), so that ``restore`` can read video through
:mod:`~s2svr_lightning.data.media.frames` without loading Lightning for the DataModule.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "VideoRestorationDataModule": ".datamodule",
    "EvalShardSampler": ".datamodule",
    "shard_sequences": ".datamodule",
    "DATASETS": ".datasets",
    "build_dataset": ".datasets",
    "SyntheticConfig": ".datasets.synthetic",
    "SyntheticSource": ".datasets.synthetic",
    "bicubic_downsample": ".degradations",
    "temporal_blur": ".degradations",
    "hevc_compress": ".degradations",
    "degrade": ".degradations",
    "degrade_stream": ".degradations",
    "DatasetError": ".errors",
    "VideoReader": ".media.video_io",
    "VideoWriter": ".media.video_io",
    "read_frame_folder": ".media.image_io",
    "read_image": ".media.image_io",
    "list_frame_files": ".media.image_io",
    "FrameSource": ".media.frames",
    "open_source": ".media.frames",
    "FolderSink": ".media.frames",
    "VideoSink": ".media.frames",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
