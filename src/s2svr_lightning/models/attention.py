"""Local attention of S2SVR (paper Eq. 5-7): a context from the 2r+1 flow-aligned latents around step i."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import memory_format_of

__all__ = ["LocalAttention"]


class LocalAttention(nn.Module):
    """Per-pixel, per-channel soft attention over the latents ``z_{i-r} .. z_{i+r}``.

    ``e_ij = V_a tanh(W_a [s_{i-1}, z_j])`` (Eq. 7) with 3x3 convs without bias (``W_a``: 2C -> C,
    ``V_a``: C -> C), ``a_ij = softmax_j(e_ij)`` over the 2r+1 neighbours (Eq. 6), and
    ``c_i = sum_j a_ij * z_j`` (Eq. 5). The caller aligns the neighbours to frame i by flow and fills the
    positions past the sequence ends (see ``S2SVR.align_window``).

    Args:
        channels: C, the channels of the query and of each latent.
        radius: r, the number of neighbours on each side.
    """

    def __init__(self, *, channels: int, radius: int = 1) -> None:
        super().__init__()
        if radius < 0:
            raise ValueError(f"expected radius >= 0, got {radius}")
        self.channels = channels
        self.radius = radius
        self.w_a = nn.Conv2d(2 * channels, channels, 3, padding=1, bias=False)
        self.v_a = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, query: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """``query (B, C, H, W)`` (the previous decoder state), ``neighbours (B, 2r+1, C, H, W)`` ->
        context ``(B, C, H, W)``."""
        k = 2 * self.radius + 1
        if neighbours.dim() != 5 or neighbours.shape[1] != k or neighbours.shape[2] != self.channels:
            raise ValueError(
                f"expected neighbours of shape (B, {k}, {self.channels}, H, W), got {tuple(neighbours.shape)}"
            )
        if query.shape != neighbours[:, 0].shape:
            raise ValueError(
                f"expected query of shape {tuple(neighbours[:, 0].shape)}, got {tuple(query.shape)}"
            )
        b = neighbours.shape[0]
        c = self.channels
        # W_a [s, z_j] = W_s s + W_z z_j: the query's half is the same for every neighbour, so it is
        # computed once and broadcast; the neighbours' half runs as one batch (B * K, C, H, W), a view
        # of a window stacked by S2SVR.align_window
        w_query, w_latent = self.w_a.weight.split(c, dim=1)
        hidden = F.conv2d(neighbours.flatten(0, 1), w_latent, padding=1).unflatten(0, (b, k))
        hidden += F.conv2d(query, w_query, padding=1).unsqueeze(1)
        scores = self.v_a(hidden.tanh_().flatten(0, 1)).unflatten(0, (b, k))
        # softmax and weighted sum over K on (B, K, H, W, C) views: for channels_last tensors these are
        # contiguous, so neither op copies and the context comes out channels_last
        weights = torch.softmax(scores.movedim(2, -1), dim=1)
        context = (weights * neighbours.movedim(2, -1)).sum(dim=1).movedim(-1, 1)
        return context.contiguous(memory_format=memory_format_of(query))
