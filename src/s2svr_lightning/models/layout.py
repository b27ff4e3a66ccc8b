"""Memory layout helpers: keep a channels_last computation channels_last from end to end.

On CPU, oneDNN convolutions run fastest on channels_last (NHWC) tensors (on this project's AVX-512 machine
about 1.5x the NCHW rate in fp32 and 2.5x in bf16), and a conv fed the other layout converts its input
first. Most element-wise ops keep their input's layout, but a few produce contiguous (NCHW) results
(``grid_sample``, ``softmax`` over a non-innermost dim, ``stack``); the networks use these helpers there,
so that every op keeps the layout it is given: NCHW in, NCHW out, channels_last in, channels_last out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["is_channels_last", "like_layout", "stack_neighbours"]


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-D tensor is stored channels_last (NHWC) rather than contiguous (NCHW)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def like_layout(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``x`` in ``reference``'s layout (a copy only when the layouts differ)."""
    if is_channels_last(reference) and not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def stack_neighbours(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack K tensors ``(B, C, H, W)`` into ``(B, K, C, H, W)``.

    For channels_last inputs the result is stored ``(B, K, H, W, C)``, so that ``flatten(0, 1)`` is a
    channels_last ``(B * K, C, H, W)`` view (a plain ``torch.stack`` interleaves the K tensors per pixel).
    """
    if is_channels_last(tensors[0]):
        return torch.stack([t.permute(0, 2, 3, 1) for t in tensors], dim=1).permute(0, 1, 4, 2, 3)
    return torch.stack(list(tensors), dim=1)
