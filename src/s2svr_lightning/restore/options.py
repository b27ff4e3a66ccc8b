"""How to restore: one frozen set of options, built once (from the command line or from ``stage=predict``).

The same :class:`RestoreOptions` serves every input of a batch; what differs per input (its path, its
output, its reference) is passed beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

__all__ = ["RestoreOptions"]


@dataclass(frozen=True)
class RestoreOptions:
    """The options of a restore run (the command line's, with its defaults).

    Stream (:class:`~s2svr_lightning.restore.stream.StreamingRestorer`):
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast).
        compile: ``torch.compile`` the network's recurrent layers.
        tile: spatial tiles of this many LQ pixels; None restores whole frames.
        tile_overlap: LQ pixels of overlap between tiles (None: the restorer's default).
        tile_flow: with ``tile``, flow on the whole ``"frame"`` or per ``"tile"``.
    Encoder (the output video; :class:`~s2svr_lightning.data.media.frames.VideoSink`):
        codec, crf, pix_fmt, preset: the video encoder's (None: its defaults, H.264 at crf 18).
        audio: keep the source's audio streams (dropped anyway when ``fps`` retimes the video).
        audio_codec: re-encode the audio with this codec instead of copying it.
        fps: output frame rate (None: the source's timestamps; 25 for frame folders).
        format: a batch's output container (``mp4``, ``mkv``, ``mov``) or ``png`` for frame folders
            (None: from the source and the codec).
    Run:
        max_frames: restore only the first N frames.
        degrade: the input is HQ: degrade it with the checkpoint's task, restore and score against it.
        degrade_chunk: compressed video: frames per HEVC stream.
        overwrite: replace an output that exists.
        progress: show a progress bar.
        temporal: with a reference (``reference`` or ``degrade``), also score temporal consistency:
            ``"off"``, ``"warp"`` (warping error) or ``"full"`` (and tOF); :mod:`s2svr_lightning.temporal`.
        flow: the temporal scores' flow estimator: ``"tvl1"`` or a flow / restorer checkpoint.
    """

    device: str | torch.device = "cpu"
    precision: str = "fp32"
    compile: bool = False
    tile: int | None = None
    tile_overlap: int | None = None
    tile_flow: str = "frame"

    codec: str | None = None
    crf: int | None = None
    pix_fmt: str | None = None
    preset: str | None = None
    audio: bool = True
    audio_codec: str | None = None
    fps: float | Fraction | None = None
    format: str | None = None

    max_frames: int | None = None
    degrade: bool = False
    degrade_chunk: int = 32
    overwrite: bool = False
    progress: bool = True
    temporal: str = "off"
    flow: str = "tvl1"

    def stream_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~s2svr_lightning.restore.stream.StreamingRestorer`."""
        kwargs: dict[str, Any] = {
            "device": self.device,
            "precision": self.precision,
            "tile": self.tile,
            "tile_flow": self.tile_flow,
            "compile": self.compile,
        }
        if self.tile_overlap is not None:  # else the restorer's own default
            kwargs["tile_overlap"] = self.tile_overlap
        return kwargs

    def encoder_kwargs(self) -> dict[str, Any]:
        """The video encoder's keyword arguments, as
        :class:`~s2svr_lightning.data.media.frames.VideoSink` takes them."""
        return {
            "codec": self.codec,
            "crf": self.crf,
            "pix_fmt": self.pix_fmt,
            "preset": self.preset,
            "audio_codec": self.audio_codec,
        }
