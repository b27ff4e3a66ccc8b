"""Memory and tiles of streaming restoration: how much memory a frame needs, what an out-of-memory
error looks like, where tiles go, and how recurrent states are stitched from tiles into whole frames and
cropped for other tiles (what lets :class:`~s2svr_lightning.restore.stream.StreamingRestorer` shrink its
tiles mid-stream without losing a frame)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import torch

from ..models.s2svr import S2SVR

__all__ = [
    "MEMORY_MARGIN",
    "MIN_TILE",
    "OutOfMemory",
    "crop_state",
    "is_out_of_memory",
    "map_states",
    "memory_estimate",
    "merge_states",
    "reuse_freed_memory",
    "stitch_state",
    "tile_spans",
]

Tensor = torch.Tensor

# Peak bytes per LQ pixel of a causal streaming step in fp32, ``a + b * channels`` per scale. Measured on
# the CPU (docs/restoring.md): peak RSS of 4 frames pushed and flushed at 128x256 LQ minus that at 64x128,
# over the 24,576 extra pixels, for the presets and their 8-channel test variants. x4 SR is dominated by
# output-sized tensors, not by the width (8 channels: 33.1 kB, 64: 31.8 kB); same-size nets grow with it
# (8: 2.1 kB, 48: 8.8 kB). PWC-Lite's whole-frame flow is included.
PIXEL_BYTES = {4: (33_100.0, 0.0), 1: (775.0, 167.5)}
MEMORY_MARGIN = 0.7  # of the free memory: allocator slack, fragmentation, the model's error
MIN_TILE = 32  # LQ pixels; below, the overlaps would be most of each tile


class OutOfMemory(RuntimeError):
    """The device ran out of memory and the tile cannot (or may not) shrink; the message says what to try."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure: CUDA's ``torch.OutOfMemoryError``, MPS's and others'
    RuntimeError "out of memory", the CPU allocator's "can't allocate memory"."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def memory_estimate(net: S2SVR, pixels: int) -> float:
    """Estimated peak bytes of a streaming step on ``pixels`` LQ pixels (one tile, or a whole frame), fp32:
    ``pixels * (a + b * channels)`` with ``a, b`` measured per scale (the net's weights not counted;
    other scales are taken as x4's per output pixel)."""
    a, b = PIXEL_BYTES.get(net.scale, (PIXEL_BYTES[4][0] * net.scale**2 / 16, 0.0))
    return float(pixels) * (a + b * net.channels)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def reuse_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse instead of returning it to the system.

    Process-wide. Eager PyTorch allocates every activation afresh, and glibc serves each block above
    32 MiB with a new ``mmap`` that the kernel zero-fills page by page on first touch. Deblurring at
    360x640 in float32 has 44 MB activations, so every conv output page-faulted: a third of the CPU time
    of a frame went to the kernel (benchmarks/OPTIMISATIONS.md). With ``mmap`` and heap trimming off,
    freed blocks are reused: the CPU time per frame drops by a third there, and the process keeps its
    memory at a steady high-water mark (about 1.5x the default's peak: PyTorch's 64-byte-aligned blocks
    do not always fit the freed ones). Returns whether the C library took the settings (False where it
    is not glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Cut ``[0, size)`` into tiles ``(start, end, keep_start, keep_end)``; the kept parts partition it."""
    if size <= tile:
        return [(0, size, 0, size)]
    stride = tile - 2 * overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    spans = []
    for k, start in enumerate(starts):
        # seams sit in the middle of each overlap, as far as possible from both tiles' edges
        keep_start = 0 if k == 0 else (starts[k - 1] + tile + start) // 2
        keep_end = size if k == len(starts) - 1 else (start + tile + starts[k + 1]) // 2
        spans.append((start, start + tile, keep_start, keep_end))
    return spans


def merge_states(trees: list[Any], fn: Callable[[list[Tensor]], Tensor]) -> Any:
    """One tree from per-tile trees of the same shape (dicts, lists, tuples): ``fn`` on each tensor's
    per-tile values; other leaves (counters, None) are the same on every tile and taken from the first."""
    first = trees[0]
    if isinstance(first, Tensor):
        return fn(trees)
    if isinstance(first, dict):
        return {key: merge_states([tree[key] for tree in trees], fn) for key in first}
    if isinstance(first, (list, tuple)):
        return type(first)(merge_states([tree[k] for tree in trees], fn) for k in range(len(first)))
    return first


def map_states(tree: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    return merge_states([tree], lambda parts: fn(parts[0]))


def state_scale(t: Tensor, rows: int, cols: int) -> int:
    """The state's size over the tile's (1 for LQ-sized states, the net's scale for outputs)."""
    s, rem = divmod(t.shape[-1], cols)
    if rem or s < 1 or t.shape[-2] != s * rows:
        raise AssertionError(f"a stream state of shape {tuple(t.shape)} on a {rows}x{cols} tile")
    return s


def stitch_state(parts: list[Tensor], tiles: list, h: int, w: int) -> Tensor:
    """A whole-frame state from the tiles' states: each tile's kept interior, as outputs are stitched."""
    (ys, xs), first = tiles[0], parts[0]
    s = state_scale(first, ys[1] - ys[0], xs[1] - xs[0])
    out = first.new_empty(*first.shape[:-2], s * h, s * w)
    for ((y0, _, ky0, ky1), (x0, _, kx0, kx1)), part in zip(tiles, parts):
        out[..., s * ky0 : s * ky1, s * kx0 : s * kx1] = part[
            ..., s * (ky0 - y0) : s * (ky1 - y0), s * (kx0 - x0) : s * (kx1 - x0)
        ]
    return out


def crop_state(whole: Tensor, ys: tuple[int, ...], xs: tuple[int, ...], h: int, w: int) -> Tensor:
    s = whole.shape[-1] // w
    crop = whole[..., s * ys[0] : s * ys[1], s * xs[0] : s * xs[1]]
    return crop.contiguous(memory_format=torch.channels_last) if crop.dim() == 4 else crop.contiguous()
