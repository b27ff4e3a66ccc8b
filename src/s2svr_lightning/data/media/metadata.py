"""What a video file carries besides its frames and audio, read so that a restored video keeps it:
display matrix (rotation), sample aspect ratio, language and title tags
(:class:`~s2svr_lightning.data.media.video_writer.SourceMetadata`, which the writer takes)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import file_error
from .video_writer import CONTAINER_TAGS, STREAM_TAGS, SourceMetadata

__all__ = ["read_metadata"]


def read_metadata(path: str | os.PathLike) -> SourceMetadata:
    """The :class:`~s2svr_lightning.data.media.video_writer.SourceMetadata` of a video file's first video
    stream: its display matrix (from the first frame's side data, where FFmpeg puts the container's
    matrix, e.g. an mp4 track's), sample aspect ratio and tags. One frame is decoded."""
    import av

    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise file_error(path, "cannot open video", err) from None
    try:
        stream = container.streams.video[0]
        matrix = None
        for frame in container.decode(stream):
            side = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
            if side is not None:
                matrix = tuple(int(v) for v in np.frombuffer(bytes(side), dtype="<i4"))
            break
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        stream_meta, container_meta = dict(stream.metadata), dict(container.metadata)
    finally:
        container.close()
    return SourceMetadata(
        display_matrix=matrix,
        sample_aspect_ratio=Fraction(sar) if sar and Fraction(sar) != 1 else None,
        stream_tags=tuple((k, stream_meta[k]) for k in STREAM_TAGS if stream_meta.get(k)),
        container_tags=tuple((k, container_meta[k]) for k in CONTAINER_TAGS if container_meta.get(k)),
    )
