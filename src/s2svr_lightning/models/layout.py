"""Memory layout helpers: keep a channels_last computation channels_last from end to end.

On CPU, oneDNN convolutions run fastest on channels_last (NHWC) tensors, and a conv fed the other layout
converts its input first. Element-wise ops keep their input's layout, but a few ops return contiguous
(NCHW) results whatever they are given (``grid_sample``, ``stack``, ``new_zeros``, ``softmax`` over a
non-innermost dim); the networks use these helpers there, so that every op keeps the layout it is
given: NCHW in, NCHW out; channels_last in, channels_last out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["is_channels_last", "memory_format_of", "stack_neighbours"]


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-D tensor is stored channels_last (NHWC) rather than contiguous (NCHW)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a channels_last 4-D tensor, else ``torch.contiguous_format``."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def stack_neighbours(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack K tensors ``(B, C, H, W)`` into ``(B, K, C, H, W)``.

    For channels_last inputs the result is stored ``(B, K, H, W, C)``, so that ``flatten(0, 1)`` is a
    channels_last ``(B * K, C, H, W)`` view (a plain ``torch.stack`` interleaves the K tensors per pixel).
    """
    if is_channels_last(tensors[0]):
        return torch.stack([t.permute(0, 2, 3, 1) for t in tensors], dim=1).permute(0, 1, 4, 2, 3)
    return torch.stack(list(tensors), dim=1)
