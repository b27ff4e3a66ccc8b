"""A source file's audio streams carried into an output video, interleaved with its frames.

:class:`AudioCarrier` adds one output stream per audio stream of the source to a PyAV output container
and then moves the audio along as the video is written: :meth:`AudioCarrier.advance` muxes every audio
packet up to the time of the last video frame, so the file is interleaved and memory stays constant.

- A stream whose codec the output container accepts (``avformat_query_codec``: AAC, MP3, Opus, FLAC
  into Matroska; AAC, MP3, ALAC into MP4 ...) is copied packet by packet, bit for bit.
- Otherwise (PCM or Vorbis into MP4, say) it is decoded and re-encoded with the first codec of
  :data:`REENCODE_CODECS` the container accepts and this FFmpeg build has, at the source's sample rate.
- Timestamps are the source's (rebased to the output stream's time base by the muxer), so the audio
  stays in sync with video frames that keep their source timestamps too.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

from ..errors import DatasetError

__all__ = ["REENCODE_CODECS", "AudioCarrier"]

# AAC first: the codec every mp4/mov/mkv player plays; Opus for WebM; FLAC/PCM as last resorts
REENCODE_CODECS = ("aac", "libopus", "opus", "libmp3lame", "flac", "pcm_s16le")
_OPUS_RATES = (48000, 24000, 16000, 12000, 8000)


class AudioCarrier:
    """Copy (or re-encode) the audio streams of ``source`` into ``container`` alongside its video.

    Create it after the video stream was added and before anything is muxed (streams cannot be added
    once the header is written). ``streams`` lists ``(source stream index, "copy" | codec name)``.

    Args:
        source: the file whose audio is carried.
        container: a PyAV output container, opened for writing.
        codec: re-encode every stream with this codec instead of copying where possible.
    """

    def __init__(self, source: str | os.PathLike, container, *, codec: str | None = None) -> None:
        import av

        self.source = Path(source)
        self._container = container
        try:
            self._input = av.open(str(self.source), mode="r")
        except Exception as err:
            raise DatasetError(
                f"{self.source}: cannot open for its audio ({type(err).__name__}: {err})"
            ) from None
        self._out: dict[int, object] = {}  # source stream index -> output stream
        self._decode: dict[int, bool] = {}  # source stream index -> re-encoding
        self.streams: list[tuple[int, str]] = []
        for stream in self._input.streams.audio:
            out, how = self._add(stream, codec)
            self._out[stream.index] = out
            self._decode[stream.index] = how != "copy"
            self.streams.append((stream.index, how))
        self._packets = iter(self._input.demux(*self._input.streams.audio)) if self._out else iter(())
        self._held = None  # the first packet past the last advance() time
        self._done = not self._out

    def _add(self, stream, codec: str | None):
        fmt = self._container.format.name
        if codec is None and _accepts(fmt, lambda c: c.add_stream_from_template(stream)):
            return self._container.add_stream_from_template(stream), "copy"
        import av

        rate = stream.codec_context.sample_rate or 48000
        layout = stream.codec_context.layout
        candidates = (codec,) if codec is not None else REENCODE_CODECS
        for name in candidates:
            if name not in av.codecs_available:
                continue
            out_rate = rate if name not in ("libopus", "opus") or rate in _OPUS_RATES else 48000

            def add(container, name=name, out_rate=out_rate):
                out = container.add_stream(name, rate=out_rate)
                out.layout = layout
                return out

            if _accepts(fmt, add):
                return add(self._container), name
        raise ValueError(
            f"expected an audio codec that {fmt} accepts for the audio of {self.source} "
            f"({stream.codec_context.name}), got none of {', '.join(candidates)} working; "
            "pass --no-audio to drop it or write .mkv, which takes most"
        )

    def advance(self, until: float | None, *, drop_after: bool = False) -> None:
        """Mux the audio up to ``until`` seconds (``None``: all of it). ``drop_after``: discard what is
        later (a video cut short keeps only its own span of sound)."""
        while not self._done:
            packet, self._held = self._held if self._held is not None else self._next(), None
            if packet is None:
                if until is None or drop_after:
                    self._flush()
                return
            time = _seconds(packet)
            if until is not None and time is not None and time >= until:
                if drop_after:
                    self._flush()
                else:
                    self._held = packet
                return
            self._mux(packet)

    def _next(self):
        try:
            return next(self._packets, None)
        except Exception as err:  # av.error.*: a corrupt or truncated audio stream
            raise DatasetError(
                f"{self.source}: cannot read its audio ({type(err).__name__}: {err})"
            ) from None

    def _mux(self, packet) -> None:
        index = packet.stream.index
        out = self._out[index]
        if not self._decode[index]:
            if packet.size == 0:  # the demuxer's end-of-stream marker
                return
            packet.stream = out
            self._container.mux(packet)
            return
        try:
            frames = packet.decode()
        except Exception as err:
            raise DatasetError(
                f"{self.source}: cannot decode its audio ({type(err).__name__}: {err})"
            ) from None
        for frame in frames:
            self._container.mux(out.encode(frame))

    def _flush(self) -> None:
        for index, out in self._out.items():
            if self._decode[index]:
                self._container.mux(out.encode(None))
        self._done = True

    def close(self) -> None:
        """Close the source (the output container is the caller's)."""
        if self._input is not None:
            self._input.close()
            self._input = None


def _accepts(fmt: str, add) -> bool:
    """Whether a ``fmt`` container takes the stream ``add(container)`` makes, header written: some refusals
    (FLAC or Opus into MOV) come only from the muxer's header, not from ``avformat_query_codec``."""
    import io

    import av

    probe = av.open(io.BytesIO(), mode="w", format=fmt)
    try:
        add(probe)
        probe.start_encoding()
        return True
    except Exception:
        return False
    finally:
        try:
            probe.close()
        except Exception:
            pass  # closing a container whose header failed can fail too; nothing was written


def _seconds(packet) -> float | None:
    ts = packet.pts if packet.pts is not None else packet.dts
    if ts is None or packet.time_base is None:
        return None
    return float(ts * Fraction(packet.time_base))
