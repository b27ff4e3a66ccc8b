"""Streaming inference: restore a video frame by frame with carried states and bounded memory.

S2SVR's encoder is causal (Eq. 1) and its local attention looks r frames ahead (Eq. 5), so output t needs
the inputs up to t + r only. :class:`StreamingRestorer` keeps the encoder and decoder states, the 2r+1
latents of the attention window and the flows between them, and emits frame t as soon as frame t + r has
arrived. It calls the very step functions that ``S2SVR.forward`` loops over, so the stream equals the
whole-sequence output to float rounding, and its memory does not grow with the length of the video.

A net with ``bidirectional_first_layer=True`` is not causal. It is restored in overlapping chunks of
``chunk`` frames: each chunk runs ``S2SVR.forward`` on its own, and ``chunk_overlap`` frames at each inner
seam serve as context only and are discarded (every output frame comes from exactly one chunk, at least
``chunk_overlap`` frames away from that chunk's inner ends).

Frames too large for memory can be cut into overlapping spatial tiles (``tile``, ``tile_overlap``, in LQ
pixels). Each tile streams on its own with its own states; the output is stitched from tile interiors,
with the seam in the middle of each overlap. The flow is the one part with a global receptive field
(PWC-Lite decodes from 1/64 of the frame and pads to a multiple of 64), so by default
(``tile_flow="frame"``) each consecutive pair's flow is computed once on the whole frame, by the same
``S2SVR.pair_flows``, and cropped for every tile; PWC-Lite is small next to the restorer. Then the only
difference from untiled restoration is the convs' zero padding at tile edges, whose influence
decays with distance; the recurrence lets it travel a little further every frame, so it is not zero in
principle, and ``tile_overlap`` keeps it away from the kept interiors (the tests measure it below 1e-5
at 16 px). ``tile_flow="tile"`` runs the flow net on each tile instead (less memory, but flows that
differ from the whole-frame ones everywhere, not only near seams).

``tile="auto"`` picks the tile when the first frame's size is known: whole frames where
:func:`memory_estimate` says they fit the free memory (:func:`~s2svr_lightning.restore.options.free_memory`,
with a safety margin), else the largest tile that does. Whatever the tile, an out-of-memory error
(``torch.OutOfMemoryError`` or a RuntimeError saying "out of memory" / "can't allocate memory") during a
frame rolls every tile stream back to its state before that frame, cuts the frame into smaller tiles and
redoes it: no frame is lost or emitted twice. The recurrent states (encoder and decoder states, the
window's latents, flows and frames, the fed-back output) are all images at LQ or output size, so they are
carried across the change of tiles: each is stitched from the old tiles' kept interiors into a whole
frame, exactly as outputs are, and cropped for the new tiles. The new tiles then start from the states an
untiled run would have had up to the old seams' error, and the output stays within tiling's error of an
untiled run (the tests bound it as they bound tiling's). With a fixed ``tile`` (or None) the error is
raised instead, as :class:`OutOfMemory`, with the fix in its message.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import Any

import torch

from ..models.s2svr import S2SVR
from ..utils import to_float_frames
from .options import free_memory, resolve_hardware
from .tiles import (
    MEMORY_MARGIN,
    MIN_TILE,
    OutOfMemory,
    crop_state,
    is_out_of_memory,
    map_states,
    memory_estimate,
    merge_states,
    reuse_freed_memory,
    stitch_state,
    tile_spans,
)
from .window import LatentWindow

__all__ = ["StreamingRestorer"]

Tensor = torch.Tensor

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class _CausalStream:
    """One causal stream over ``(1, 3, h, w)`` frames: the state of ``S2SVR.forward`` cut at frame t."""

    def __init__(self, net: S2SVR) -> None:
        self.net = net
        self.radius = net.radius
        self.count = 0  # frames received
        self.next_out = 0  # index of the next frame to decode
        self.window = LatentWindow(net.radius)
        self.encoder_states: list[Tensor] | None = None
        self.decoder_states: list[Tensor] | None = None
        self.y_prev: Tensor | None = None

    def push(self, x_t: Tensor, flows: tuple[Tensor, Tensor] | None = None) -> list[Tensor]:
        """``flows``: ``(t -> t-1, t-1 -> t)`` given from outside (whole-frame flows), else computed."""
        net, t, window = self.net, self.count, self.window
        if t > 0 and flows is None:
            flows = net.pair_flows(x_t, window.frames[t - 1])
        z, self.encoder_states = net.encode_step(x_t, self.encoder_states, flows[0] if t > 0 else None)
        if t == 0:
            self.decoder_states, self.y_prev = net.init_decoder(x_t, self.encoder_states)
        window.add(t, z, flows if t > 0 else None, frame=x_t)
        self.count += 1
        outputs = []
        while self.next_out + self.radius <= t:
            outputs.append(self._decode(last=t))
        return outputs

    def state(self) -> dict[str, Any]:
        """Everything a step changes, as a tree of tensors (for a rollback, or to re-tile it): the step
        functions make new tensors rather than write into these, so shallow copies are snapshots."""
        w = self.window
        return {
            "count": self.count,
            "next_out": self.next_out,
            "encoder_states": None if self.encoder_states is None else list(self.encoder_states),
            "decoder_states": None if self.decoder_states is None else list(self.decoder_states),
            "y_prev": self.y_prev,
            "window": {k: dict(getattr(w, k)) for k in ("frames", "latents", "to_prev", "to_next")},
        }

    def load(self, state: dict[str, Any]) -> None:
        self.count, self.next_out = state["count"], state["next_out"]
        self.encoder_states, self.decoder_states = state["encoder_states"], state["decoder_states"]
        self.y_prev = state["y_prev"]
        for key, store in state["window"].items():
            setattr(self.window, key, dict(store))

    def flush(self) -> list[Tensor]:
        outputs = []
        while self.next_out < self.count:
            outputs.append(self._decode(last=self.count - 1))
        return outputs

    def _decode(self, *, last: int) -> Tensor:
        net, i, window = self.net, self.next_out, self.window
        past, future = window.neighbours(i, last)
        aligned = net.align_window(window.latents[i], past, future)
        y, self.decoder_states = net.decode_step(
            window.frames[i], aligned, self.decoder_states, self.y_prev, window.to_prev.get(i)
        )
        self.y_prev = y
        self.next_out = i + 1
        window.forget(i, self.count - 1)
        return y


class _ChunkedStream:
    """Overlapping chunks for non-causal (bidirectional) nets: each chunk is one ``S2SVR.forward``.

    A chunk covers ``chunk`` frames; the next one starts ``chunk - 2 * overlap`` frames later. Of each
    chunk, the frames within ``overlap`` of an inner end are context only; the rest are emitted.
    """

    def __init__(self, net: S2SVR, *, chunk: int, overlap: int) -> None:
        self.net = net
        self.chunk = chunk
        self.overlap = overlap
        self.buffer: list[Tensor] = []  # frames from absolute index self.start on
        self.flows: list[tuple[Tensor, Tensor] | None] = []  # given flows to the previous frame, per frame
        self.start = 0
        self.emitted = 0  # frames already emitted
        self.fresh = 0  # frames pushed since the last chunk ran
        self.tail: list[Tensor] = []  # last chunk's final `overlap` outputs, used if the video ends there

    def _forward(self) -> Tensor:
        clip = torch.stack(self.buffer, dim=1)
        given = self.flows[1:]
        if not given or given[0] is None:
            return self.net(clip)
        to_prev = torch.stack([f[0] for f in given], dim=1)
        to_next = torch.stack([f[1] for f in given], dim=1)
        return self.net(clip, flows=(to_prev, to_next))

    def state(self) -> dict[str, Any]:
        """As :meth:`_CausalStream.state`: the buffered frames, their flows and the last chunk's tail."""
        return {
            "buffer": list(self.buffer),
            "flows": list(self.flows),
            "tail": list(self.tail),
            "counters": (self.start, self.emitted, self.fresh),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.buffer, self.flows, self.tail = list(state["buffer"]), list(state["flows"]), list(state["tail"])
        self.start, self.emitted, self.fresh = state["counters"]

    def push(self, x_t: Tensor, flows: tuple[Tensor, Tensor] | None = None) -> list[Tensor]:
        self.buffer.append(x_t)
        self.flows.append(flows)
        self.fresh += 1
        if len(self.buffer) < self.chunk:
            return []
        y = self._forward()
        end = self.start + self.chunk - self.overlap
        outputs = [y[:, k - self.start] for k in range(self.emitted, end)]
        self.tail = [y[:, k - self.start] for k in range(end, self.start + self.chunk)]
        self.emitted = end
        drop = self.chunk - 2 * self.overlap
        self.buffer = self.buffer[drop:]
        self.flows = self.flows[drop:]
        self.start += drop
        self.fresh = 0
        return outputs

    def flush(self) -> list[Tensor]:
        if self.fresh == 0:  # the video ended with the last chunk: its end frames are final
            outputs = self.tail
        else:
            y = self._forward()
            outputs = [y[:, k - self.start] for k in range(self.emitted, self.start + len(self.buffer))]
        self.buffer, self.flows, self.tail, self.fresh = [], [], [], 0
        return outputs


class StreamingRestorer:
    """Restore a video one frame at a time with an :class:`~s2svr_lightning.models.S2SVR` network.

    Args:
        net: the restoration network; it is moved to ``device``, converted to channels_last (its conv
            weights) and put in eval mode.
        device: where to run (default: the net's device; ``"auto"``: CUDA, else MPS, else CPU).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast on ``device``; CPU supports both), or
            ``"auto"``: bf16 where the hardware has bf16 units, fp16 on older CUDA, else fp32
            (:func:`~s2svr_lightning.restore.options.resolve_hardware`).
        tile: optional tile size in LQ pixels (>= 16); None restores whole frames; ``"auto"`` picks it
            from the free memory and shrinks it on an out-of-memory error (the module's docstring).
        memory: bytes free on a device (default
            :func:`~s2svr_lightning.restore.options.free_memory`; tests give their own).
        log: where the one-line notes go (a tile chosen or shrunk); default: standard error.
        tile_overlap: LQ pixels of context on each side of an inner tile seam (``tile > 2 * overlap``).
        tile_flow: ``"frame"`` (flow on the whole frame, cropped per tile) or ``"tile"`` (per tile).
        chunk: frames per chunk for bidirectional nets (ignored for causal nets).
        chunk_overlap: context frames at each inner chunk seam, discarded (``chunk > 2 * overlap``).
        reuse_memory: on CPU, call :func:`reuse_freed_memory` (process-wide: glibc then keeps freed
            memory instead of page-faulting every large activation anew; faster, more resident memory).
        compile: compile the network's recurrent layers (``torch.compile``,
            :func:`~s2svr_lightning.compilation.compile_restorer`; in place, so ``net`` stays compiled):
            the first frames of each size wait for the compiler; where it cannot compile, one line says
            so and restoration runs eagerly.

    ``push(frame)`` takes ``(3, h, w)`` or ``(1, 3, h, w)``, float in [0, 1] (uint8 is divided by 255),
    and returns the list of output frames now complete, each ``(3, scale*h, scale*w)`` float32 on the CPU,
    unclamped, in order; ``flush()`` ends the video and returns the rest (the restorer can then take a
    new video). A causal net emits frame t when frame t + r arrives.
    """

    def __init__(
        self,
        net: S2SVR,
        *,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        tile: int | str | None = None,
        tile_overlap: int = 16,
        tile_flow: str = "frame",
        chunk: int = 25,
        chunk_overlap: int = 5,
        reuse_memory: bool = True,
        compile: bool = False,
        memory: Callable[[torch.device], int | None] = free_memory,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not isinstance(net, S2SVR):
            raise ValueError(f"expected an S2SVR network, got {type(net).__name__}")
        if precision != "auto" and precision not in _PRECISIONS:
            raise ValueError(f"expected precision in {sorted(_PRECISIONS)} or 'auto', got {precision!r}")
        if isinstance(tile, str) and tile != "auto":
            raise ValueError(f"expected tile an int, None or 'auto', got {tile!r}")
        if tile == "auto" and tile_overlap < 0:
            raise ValueError(f"expected tile_overlap >= 0, got {tile_overlap}")
        if tile not in (None, "auto") and (tile < 16 or tile <= 2 * tile_overlap or tile_overlap < 0):
            raise ValueError(
                f"expected tile >= 16 and tile > 2 * tile_overlap >= 0, got tile={tile}, "
                f"tile_overlap={tile_overlap}"
            )
        if tile_flow not in ("frame", "tile"):
            raise ValueError(f"expected tile_flow 'frame' or 'tile', got {tile_flow!r}")
        if chunk < 1 or chunk_overlap < 0 or chunk <= 2 * chunk_overlap:
            raise ValueError(
                f"expected chunk > 2 * chunk_overlap >= 0, got chunk={chunk}, chunk_overlap={chunk_overlap}"
            )
        if device is None:
            device = next(net.parameters()).device
        if str(device) == "auto" or precision == "auto":
            device, precision, _ = resolve_hardware(device, precision)
        self.device = torch.device(device)
        if reuse_memory and self.device.type == "cpu":
            reuse_freed_memory()
        # channels_last end to end: the layout oneDNN's (and cuDNN's) convolutions run fastest on;
        # the weights and the frames are converted once and every op of the net keeps the layout
        self.net = net.to(self.device, memory_format=torch.channels_last).eval()
        if compile:
            from ..compilation import compile_restorer

            compile_restorer(self.net)
        self.precision = precision
        self.auto_tile = tile == "auto"
        self.tile: int | None = None if self.auto_tile else tile  # auto: chosen per video in _start
        self.tile_overlap = tile_overlap
        self.memory = memory
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.tile_flow = tile_flow
        self.chunk = chunk
        self.chunk_overlap = chunk_overlap
        self._reset()

    @property
    def latency(self) -> int:
        """Frames that must arrive after frame t before it is emitted (r, or up to a chunk)."""
        return self.chunk - 1 if self.net.bidirectional_first_layer else self.net.radius

    def _reset(self) -> None:
        self._size: tuple[int, int] | None = None
        self._prev: Tensor | None = None  # previous whole frame, for whole-frame flows
        self._streams: list = []
        self._tiles: list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]] = []

    def _new_stream(self):
        if self.net.bidirectional_first_layer:
            return _ChunkedStream(self.net, chunk=self.chunk, overlap=self.chunk_overlap)
        return _CausalStream(self.net)

    def _layout(self, h: int, w: int) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
        if self.tile is None:
            return [((0, h, 0, h), (0, w, 0, w))]
        return [
            (ys, xs)
            for ys in tile_spans(h, self.tile, self.tile_overlap)
            for xs in tile_spans(w, self.tile, self.tile_overlap)
        ]

    @property
    def min_tile(self) -> int:
        """The smallest tile ``tile="auto"`` goes down to (LQ pixels)."""
        return max(MIN_TILE, 2 * self.tile_overlap + 16)

    def choose_tile(self, h: int, w: int) -> int | None:
        """``tile="auto"``'s tile for ``h x w`` frames: None (whole frames) where :func:`memory_estimate`
        fits the free memory with a margin, else the largest multiple of 8 that fits (at least
        :attr:`min_tile`); None where the free memory is unknown."""
        free = self.memory(self.device)
        if free is None:
            return None
        budget = MEMORY_MARGIN * free
        if memory_estimate(self.net, h * w) <= budget:
            return None
        tile = max(h, w) // 8 * 8
        while tile > self.min_tile and memory_estimate(self.net, tile * tile) > budget:
            tile -= 8
        return max(tile, self.min_tile)

    def _start(self, h: int, w: int) -> None:
        self._size = (h, w)
        if self.auto_tile:
            self.tile = self.choose_tile(h, w)
            if self.tile is not None:
                self.log(f"tile {self.tile} for {w}x{h} frames: whole frames do not fit the free memory")
        self._tiles = self._layout(h, w)
        self._streams = [self._new_stream() for _ in self._tiles]

    def _prepare(self, frame: Tensor) -> Tensor:
        if not isinstance(frame, torch.Tensor):
            raise ValueError(f"expected a frame tensor (3, h, w) or (1, 3, h, w), got {type(frame).__name__}")
        x = frame.unsqueeze(0) if frame.dim() == 3 else frame
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3 or min(x.shape[-2:]) < 16:
            raise ValueError(
                "expected a frame of shape (3, h, w) or (1, 3, h, w) with h, w >= 16, "
                f"got {tuple(frame.shape)}"
            )
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise ValueError(f"expected a float frame in [0, 1] or uint8, got {x.dtype}")
        x = to_float_frames(x)
        h, w = x.shape[-2:]
        if self._size is None:
            self._start(h, w)
        elif (h, w) != self._size:
            raise ValueError(
                f"expected every frame of size {self._size}, got {(h, w)}; call flush() between videos"
            )
        return x.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)

    def _autocast(self):
        dtype = _PRECISIONS[self.precision]
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _stitch(self, per_tile: list[list[Tensor]]) -> list[Tensor]:
        counts = {len(outs) for outs in per_tile}
        assert len(counts) == 1, "tiles stream in lockstep"
        s = self.net.scale
        h, w = self._size
        frames = []
        for k in range(counts.pop()):
            if len(self._tiles) == 1:
                out = per_tile[0][k][0].float().contiguous()
            else:
                out = torch.empty(3, s * h, s * w, device=self.device)
                for ((y0, _, ky0, ky1), (x0, _, kx0, kx1)), outs in zip(self._tiles, per_tile):
                    out[:, s * ky0 : s * ky1, s * kx0 : s * kx1] = outs[k][
                        0, :, s * (ky0 - y0) : s * (ky1 - y0), s * (kx0 - x0) : s * (kx1 - x0)
                    ].float()
            frames.append(out.cpu())
        return frames

    def _push(self, x: Tensor) -> list[Tensor]:
        with self._autocast():
            flows = None
            if len(self._tiles) > 1 and self.tile_flow == "frame" and self._prev is not None:
                flows = self.net.pair_flows(x, self._prev)
            per_tile = []
            for ((y0, y1, _, _), (x0, x1, _, _)), stream in zip(self._tiles, self._streams):
                crop = None if flows is None else tuple(f[..., y0:y1, x0:x1] for f in flows)
                per_tile.append(stream.push(x[..., y0:y1, x0:x1], crop))
        frames = self._stitch(per_tile)
        # kept whatever the tiling (a reference, no copy): whole-frame flows after a switch to tiles
        self._prev = x
        return frames

    def _flush(self) -> list[Tensor]:
        with self._autocast():
            per_tile = [stream.flush() for stream in self._streams]
        return self._stitch(per_tile)

    def _retrying(self, step: Callable[[], list[Tensor]], what: str) -> list[Tensor]:
        """Run ``step``; on an out-of-memory error, roll the streams back, shrink the tile and redo it."""
        while True:
            saved = [stream.state() for stream in self._streams]
            failure = None
            try:
                return step()
            except RuntimeError as err:  # torch.OutOfMemoryError is one
                if not is_out_of_memory(err):
                    raise
                failure = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            # here, outside the except block, the traceback (and the activations it holds) is released
            for stream, state in zip(self._streams, saved):
                stream.load(state)
            del saved
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._shrink(failure, what)

    def _shrink(self, failure: str, what: str) -> None:
        h, w = self._size
        current = self.tile if self.tile is not None else max(h, w)
        smaller = max(current * 3 // 4 // 8 * 8, self.min_tile)
        if not self.auto_tile or smaller >= current:
            hint = (
                "use --tile auto (the default) to shrink the tile and retry"
                if not self.auto_tile
                else "try --tile-flow tile (no whole-frame flow), --precision bf16/fp16, or another device"
            )
            tile = "whole frames" if self.tile is None else f"tile {self.tile}"
            raise OutOfMemory(
                f"out of memory on {self.device} at {tile} of {w}x{h} frames ({failure}); {hint}"
            )
        was = "whole frames" if self.tile is None else f"tile {self.tile}"
        self.log(f"out of memory at {was}: {what} again in tiles of {smaller}")
        self._retile(smaller)

    def _retile(self, tile: int) -> None:
        """Cut the streams into tiles of ``tile``, carrying their states (the module's docstring)."""
        h, w = self._size
        old_tiles, old_states = self._tiles, [stream.state() for stream in self._streams]
        self.tile = tile
        self._tiles = self._layout(h, w)
        self._streams = [self._new_stream() for _ in self._tiles]
        whole = merge_states(old_states, lambda parts: stitch_state(parts, old_tiles, h, w))
        del old_states
        for (ys, xs), stream in zip(self._tiles, self._streams):
            stream.load(map_states(whole, lambda t, ys=ys, xs=xs: crop_state(t, ys, xs, h, w)))

    @torch.inference_mode()
    def push(self, frame: Tensor) -> list[Tensor]:
        """Feed the next LQ frame; returns the output frames completed by it (possibly none)."""
        x = self._prepare(frame)
        return self._retrying(lambda: self._push(x), "the frame")

    @torch.inference_mode()
    def flush(self) -> list[Tensor]:
        """End the video: returns the frames still pending, then resets for a new video."""
        if self._size is None:
            return []
        frames = self._retrying(self._flush, "the last frames")
        self._reset()
        return frames

    def restore(self, frames: Iterable[Tensor]) -> Iterator[Tensor]:
        """Restore a whole video lazily: yields ``(3, scale*h, scale*w)`` frames in order."""
        for frame in frames:
            yield from self.push(frame)
        yield from self.flush()
