"""Forward-backward occlusion check (Wang et al. 2018b / UnFlow), used to mask Eq. 11.

A pixel ``p`` of frame 1 is visible in frame 2 when following ``F12`` and coming back with ``F21``
lands near the start: ``F12(p) + F21(p + F12(p)) ~= 0``. Where the two flows disagree by more than a
tolerance that grows with the motion, the pixel is marked occluded (it has no match in frame 2, or it
leaves the frame).
"""

from __future__ import annotations

import torch

from s2svr_lightning.models.warp import flow_warp

__all__ = ["forward_backward_occlusion"]


@torch.no_grad()
def forward_backward_occlusion(
    flow12: torch.Tensor,
    flow21: torch.Tensor,
    *,
    alpha1: float = 0.01,
    alpha2: float = 0.5,
) -> torch.Tensor:
    """Occlusion mask of frame 1 from the forward-backward consistency check.

    Occluded where ``|F12 + W(F21)|^2 > alpha1 (|F12|^2 + |W(F21)|^2) + alpha2``, with ``W(F21)`` the
    backward flow sampled at ``p + F12(p)`` (zeros outside the frame, so flows that leave the frame are
    flagged). The mask carries no gradient: it selects pixels, it is not optimised.

    Args:
        flow12: ``(B, 2, H, W)`` flow frame 1 -> frame 2, pixels.
        flow21: ``(B, 2, H, W)`` flow frame 2 -> frame 1, pixels.
        alpha1: relative tolerance (0.01 in UnFlow / ARFlow).
        alpha2: absolute tolerance in squared pixels (0.5).

    Returns:
        ``(B, 1, H, W)`` float mask, 1 = occluded, 0 = visible.
    """
    if flow12.dim() != 4 or flow12.shape[1] != 2 or flow12.shape != flow21.shape:
        raise ValueError(
            f"expected flow12 and flow21 of the same shape (B, 2, H, W), got {tuple(flow12.shape)} "
            f"and {tuple(flow21.shape)}"
        )
    flow21_at_target = flow_warp(flow21, flow12, padding_mode="zeros")
    mismatch = (flow12 + flow21_at_target).square().sum(1, keepdim=True)
    magnitude = flow12.square().sum(1, keepdim=True) + flow21_at_target.square().sum(1, keepdim=True)
    return (mismatch > alpha1 * magnitude + alpha2).to(flow12.dtype)
