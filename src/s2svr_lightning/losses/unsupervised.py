"""The unsupervised flow objective of Eq. 14 for a frame pair, both directions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from s2svr_lightning.losses.occlusion import forward_backward_occlusion
from s2svr_lightning.losses.photometric import photometric_loss
from s2svr_lightning.losses.smoothness import smoothness_loss

__all__ = ["UnsupervisedFlowLoss"]


def _as_pyramid(flows: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [flows] if isinstance(flows, torch.Tensor) else list(flows)


class UnsupervisedFlowLoss(nn.Module):
    """``w_ph * L_ph + w_ssim * L_ssim + w_census * L_census + w_sm * L_sm`` (Eq. 14 and ARFlow's terms).

    Each term is the mean of the two directions 1->2 and 2->1. ``L_ph`` is Eq. 11 with the l1 ``rho``,
    masked by the forward-backward occlusion check; ``L_ssim`` and ``L_census`` are ARFlow's photometric
    terms under the same mask; ``L_sm`` is the edge-aware smoothness of Eq. 13 (``smoothness_loss``).

    The paper's ``w_ph = 0.15`` and ``w_sm = 50`` are ARFlow's warm-up weights, where the l1 term of
    weight 0.15 comes with an SSIM term of weight 0.85; that is the default here (``w_ssim = 0.85``).
    ``w_ssim = 0`` is Eq. 14 to the letter, but with l1 alone and these weights the smoothness term
    dominates and PWC-Lite settles on a constant flow (measured: ``benchmarks/flow_quality.py``).
    Options, off by default: the census term, and ARFlow-style multi-scale photometric terms over a flow
    pyramid (``scale_weights``, finest first; frames area-downsampled to each level, occlusion computed at
    the finest level and resized with nearest). Smoothness is always taken at the finest level.

    Args:
        w_ph: weight of the l1 photometric term (Eq. 14).
        w_ssim, w_census: weights of ARFlow's SSIM and census photometric terms.
        w_sm: weight of the smoothness term (Eq. 14).
        edge_alpha: edge weight ``exp(-edge_alpha |dI|)`` of Eq. 13.
        smooth_normalize: smoothness on ``flow / min(H, W)`` (see ``smoothness_loss``).
        occlusion_alpha1, occlusion_alpha2: tolerances of ``forward_backward_occlusion``.
        scale_weights: photometric weight of each pyramid level, finest first; ``(1.0,)`` = finest only.
        padding_mode: ``flow_warp`` padding for the photometric warp.
        min_visible: a pair whose share of visible pixels is below this is not masked. A guard, not in
            the paper: a network whose two directions disagree everywhere (untrained, or after a bad
            step) marks every pixel occluded, and the masked loss of Eq. 11 then has no pixel left to
            learn from, so training would stall for good. 0 disables the guard.
    """

    def __init__(
        self,
        *,
        w_ph: float = 0.15,
        w_sm: float = 50.0,
        w_ssim: float = 0.85,
        w_census: float = 0.0,
        edge_alpha: float = 10.0,
        smooth_normalize: bool = True,
        occlusion_alpha1: float = 0.01,
        occlusion_alpha2: float = 0.5,
        scale_weights: Sequence[float] = (1.0,),
        padding_mode: str = "border",
        min_visible: float = 0.2,
    ) -> None:
        super().__init__()
        if min(w_ph, w_ssim, w_census, w_sm) < 0 or w_ph + w_ssim + w_census <= 0:
            raise ValueError(
                "expected non-negative loss weights and a positive photometric weight, got "
                f"w_ph={w_ph}, w_ssim={w_ssim}, w_census={w_census}, w_sm={w_sm}"
            )
        scale_weights = tuple(float(w) for w in scale_weights)
        if not scale_weights or scale_weights[0] <= 0 or min(scale_weights) < 0:
            raise ValueError(
                f"expected scale_weights with a positive first (finest) entry, got {scale_weights}"
            )
        self.w_ph, self.w_sm = float(w_ph), float(w_sm)
        self.photometric_kwargs = {
            "w_l1": self.w_ph,
            "w_ssim": w_ssim,
            "w_census": w_census,
            "padding_mode": padding_mode,
        }
        self.edge_alpha = float(edge_alpha)
        self.smooth_normalize = bool(smooth_normalize)
        self.occlusion_alpha1, self.occlusion_alpha2 = float(occlusion_alpha1), float(occlusion_alpha2)
        self.scale_weights = scale_weights
        if not 0 <= min_visible < 1:
            raise ValueError(f"expected 0 <= min_visible < 1, got {min_visible}")
        self.min_visible = float(min_visible)

    @property
    def num_scales(self) -> int:
        """How many pyramid levels the loss reads (1 = the network's final flow only)."""
        return len(self.scale_weights)

    def occlusion(self, flow12: torch.Tensor, flow21: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Occlusion masks ``(B, 1, H, W)`` of frame 1 and of frame 2 (1 = occluded), no gradient."""
        kwargs = {"alpha1": self.occlusion_alpha1, "alpha2": self.occlusion_alpha2}
        return (
            forward_backward_occlusion(flow12, flow21, **kwargs),
            forward_backward_occlusion(flow21, flow12, **kwargs),
        )

    def _photometric(
        self, im1: torch.Tensor, im2: torch.Tensor, flows: list[torch.Tensor], occ: torch.Tensor | None
    ) -> torch.Tensor:
        total = im1.new_zeros(())
        for weight, flow in zip(self.scale_weights, flows):
            if weight == 0:
                continue
            size = tuple(flow.shape[-2:])
            if size == tuple(im1.shape[-2:]):
                a, b, o = im1, im2, occ
            else:
                a, b = F.adaptive_avg_pool2d(im1, size), F.adaptive_avg_pool2d(im2, size)
                o = None if occ is None else F.interpolate(occ, size=size, mode="nearest")
            total = total + weight * photometric_loss(a, b, flow, occlusion=o, **self.photometric_kwargs)
        return total

    def forward(
        self,
        im1: torch.Tensor,
        im2: torch.Tensor,
        flow12: torch.Tensor | Sequence[torch.Tensor],
        flow21: torch.Tensor | Sequence[torch.Tensor],
        *,
        use_occlusion: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Loss terms for the pairs ``(im1, im2)``.

        Args:
            im1, im2: ``(B, 3, H, W)`` frames in [0, 1].
            flow12, flow21: ``(B, 2, H, W)`` flows in pixels, or pyramids of them (finest first, the
                finest at ``(H, W)``), with at least ``num_scales`` levels.
            use_occlusion: mask Eq. 11 with the forward-backward check; False during the warm-up, when
                an untrained network would make every pixel "occluded" (0/0 in Eq. 11).

        Returns:
            dict with ``loss``, ``photometric`` (the weighted photometric terms together),
            ``smoothness``, ``occlusion`` (the share of pixels the check marks occluded, computed even
            when it is not applied) and
            ``occlusion_masked`` (the share actually left out of Eq. 11); the shares carry no gradient.
        """
        flows12, flows21 = _as_pyramid(flow12), _as_pyramid(flow21)
        if len(flows12) < self.num_scales or len(flows21) < self.num_scales:
            raise ValueError(f"expected flow pyramids with >= {self.num_scales} levels, got {len(flows12)}")
        finest12, finest21 = flows12[0], flows21[0]
        if finest12.shape[-2:] != im1.shape[-2:] or finest12.shape != finest21.shape:
            raise ValueError(
                f"expected finest flows (B, 2, H, W) at the frame size {tuple(im1.shape)}, got "
                f"{tuple(finest12.shape)} and {tuple(finest21.shape)}"
            )
        occ1, occ2 = self.occlusion(finest12, finest21)
        mask1, mask2 = (self._guarded(occ1), self._guarded(occ2)) if use_occlusion else (None, None)
        photo = 0.5 * (
            self._photometric(im1, im2, flows12, mask1) + self._photometric(im2, im1, flows21, mask2)
        )
        smooth_kwargs = {"edge_alpha": self.edge_alpha, "normalize": self.smooth_normalize}
        smooth = 0.5 * (
            smoothness_loss(finest12, im1, **smooth_kwargs) + smoothness_loss(finest21, im2, **smooth_kwargs)
        )
        masked = 0.0 if mask1 is None else 0.5 * (mask1.mean() + mask2.mean())
        return {
            "loss": photo + self.w_sm * smooth,
            "photometric": photo,
            "smoothness": smooth,
            "occlusion": 0.5 * (occ1.mean() + occ2.mean()),
            "occlusion_masked": torch.as_tensor(masked, dtype=photo.dtype, device=photo.device),
        }

    def _guarded(self, occ: torch.Tensor) -> torch.Tensor:
        """The mask, cleared for pairs with fewer than ``min_visible`` visible pixels."""
        visible = 1.0 - occ.mean(dim=(1, 2, 3), keepdim=True)
        return occ * (visible >= self.min_visible).to(occ.dtype)
