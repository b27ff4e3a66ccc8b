"""Data: the task DataModule, datasets over the benchmarks' real layouts, degradations, video I/O and the
built-in synthetic video with exact flow."""

from .color import rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb
from .datamodule import EvalShardSampler, VideoRestorationDataModule, shard_sequences
from .datasets import DATASETS, build_dataset
from .datasets.synthetic import SyntheticConfig, SyntheticSource
from .degradations import TASKS, bicubic_downsample, degrade, hevc_compress, temporal_blur
from .errors import DatasetError
from .image_io import list_frame_files, read_image
from .video_io import VideoReader, VideoWriter, read_frame_folder

__all__ = [
    "VideoRestorationDataModule",
    "EvalShardSampler",
    "shard_sequences",
    "DATASETS",
    "build_dataset",
    "SyntheticConfig",
    "SyntheticSource",
    "TASKS",
    "bicubic_downsample",
    "temporal_blur",
    "hevc_compress",
    "degrade",
    "DatasetError",
    "VideoReader",
    "VideoWriter",
    "read_frame_folder",
    "read_image",
    "list_frame_files",
    "rgb_to_y",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
]
