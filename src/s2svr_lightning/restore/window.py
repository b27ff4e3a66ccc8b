"""The attention window of streaming restoration: the 2r+1 latents (and their flows and frames) that
local attention (Eq. 5) reads around frame t, kept by the streaming restorer and by the exported step's
host loop alike."""

from __future__ import annotations

import torch

__all__ = ["LatentWindow"]

Tensor = torch.Tensor


class LatentWindow:
    """The latents and flows around the frame being decoded: what S2SVR's attention window reads (Eq. 5).

    Per frame ``j`` it keeps the latent ``z_j``, ``to_prev[j]`` (= ``o_j``, the flow j -> j-1),
    ``to_next[j]`` (the flow j -> j+1) and, if given, the frame itself; :meth:`forget` drops what no later
    window reads, so it holds about ``2r + 1`` frames' worth whatever the video's length. Both the
    streaming restorer and the host loop of an exported step (:mod:`s2svr_lightning.restore.export`) keep
    their window here.
    """

    def __init__(self, radius: int) -> None:
        self.radius = int(radius)
        self.frames: dict[int, Tensor] = {}
        self.latents: dict[int, Tensor] = {}
        self.to_prev: dict[int, Tensor] = {}
        self.to_next: dict[int, Tensor] = {}

    def add(
        self, t: int, latent: Tensor, flows: tuple[Tensor, Tensor] | None = None, frame: Tensor | None = None
    ) -> None:
        """Frame ``t``'s latent, its flows ``(t -> t-1, t-1 -> t)`` (none for frame 0) and frame."""
        self.latents[t] = latent
        if flows is not None:
            self.to_prev[t], self.to_next[t - 1] = flows
        if frame is not None:
            self.frames[t] = frame

    def neighbours(
        self, i: int, last: int
    ) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
        """``(past, future)`` of frame ``i`` for :meth:`S2SVR.align_window` (``last``: the last frame):
        ``past = [(z_{i-1}, o_i), (z_{i-2}, o_{i-1}), ...]``, ``future = [(z_{i+1}, F_{i->i+1}), ...]``,
        each at most ``r`` long (shorter at the video's ends)."""
        r = self.radius
        past = [(self.latents[j], self.to_prev[j + 1]) for j in range(i - 1, max(i - r, 0) - 1, -1)]
        future = [(self.latents[j], self.to_next[j - 1]) for j in range(i + 1, min(i + r, last) + 1)]
        return past, future

    def padded(self, i: int, last: int, zero_flow: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The window of frame ``i`` at a fixed size, for a traced graph: the ``2r + 1`` latents
        ``z_{i-r} .. z_{i+r}``, the ``r`` past flows ``o_i, o_{i-1}, ...`` and the ``r`` future flows
        ``F_{i->i+1}, ...``. Neighbours beyond the ends are the nearest latent with a zero flow, which is
        what :meth:`S2SVR.align_window` repeats for a short window."""
        r = self.radius
        latents = [self.latents[min(max(j, 0), last)] for j in range(i - r, i + r + 1)]
        past = [self.to_prev[i - j] if i - j >= 1 else zero_flow for j in range(r)]
        future = [self.to_next[i + j] if i + j + 1 <= last else zero_flow for j in range(r)]
        return latents, past, future

    def forget(self, i: int, last: int) -> None:
        """Frame ``i`` is decoded (``last``: the newest frame held): drop what no later window reads (the
        window of ``i + 1`` starts at ``i + 1 - r``; the newest frame is kept for the next flow)."""
        keep_from = i + 1 - self.radius
        for store, first in (
            (self.latents, keep_from),
            (self.to_prev, min(keep_from + 1, i + 1)),
            (self.to_next, i + 1),
            (self.frames, min(i + 1, last)),
        ):
            for key in [k for k in store if k < first]:
                del store[key]
