"""Data: the task DataModule, datasets over the benchmarks' real layouts, degradations, video I/O and the
built-in synthetic video with exact flow.

Names are imported lazily (as in :mod:`s2svr_lightning`), so that ``restore`` can read video through
:mod:`~s2svr_lightning.data.media.frames` without loading Lightning for the DataModule.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {  # module: the names it exports
    ".datamodule": ("VideoRestorationDataModule", "EvalShardSampler", "shard_sequences"),
    ".datasets": ("DATASETS", "build_dataset"),
    ".datasets.synthetic": ("SyntheticConfig", "SyntheticSource"),
    ".degradations": ("bicubic_downsample", "temporal_blur", "hevc_compress", "degrade", "degrade_stream"),
    ".errors": ("DatasetError",),
    ".media.video_io": ("VideoReader", "VideoWriter"),
    ".media.image_io": ("read_frame_folder", "read_image", "list_frame_files"),
    ".media.frames": ("FrameSource", "open_source", "FolderSink", "VideoSink"),
}

__all__ = [name for names in _EXPORTS.values() for name in names]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
