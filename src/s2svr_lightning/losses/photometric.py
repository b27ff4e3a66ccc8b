"""Photometric loss (Eq. 11) with optional SSIM and census terms.

``L_ph(F12) = sum_p rho(I1(p), I2(p + F12(p))) * O(p) / sum_p O(p)``: frame 2 is warped back onto frame 1
by the flow (``flow_warp``), compared per pixel, and averaged over the visible pixels only (``O = 1 -
occlusion``), so that the loss does not shrink just because more pixels are marked occluded. The paper's
``rho`` is the l1 distance (the default here, averaged over RGB); ARFlow's SSIM and census (ternary) terms
are options.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from s2svr_lightning.models.warp import flow_warp

__all__ = ["photometric_loss", "photometric_map", "ssim_distance", "census_distance"]

# ITU-R BT.601 luma weights, as in ARFlow's census transform
_GREY = (0.2989, 0.5870, 0.1140)


def _check_pair(im1: torch.Tensor, im2: torch.Tensor) -> None:
    if im1.dim() != 4 or im1.shape != im2.shape:
        raise ValueError(
            f"expected im1 and im2 of the same shape (B, C, H, W), got {tuple(im1.shape)} and "
            f"{tuple(im2.shape)}"
        )


def ssim_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel structural dissimilarity ``clamp((1 - SSIM) / 2, 0, 1)``, mean over channels.

    SSIM on 3x3 box windows with C1 = 0.01^2, C2 = 0.03^2 (ARFlow's form); the images are reflection
    padded by one pixel so the map keeps the input size (ARFlow crops it instead).

    Args:
        x, y: ``(B, C, H, W)`` images in [0, 1], H, W >= 2.

    Returns:
        ``(B, 1, H, W)`` dissimilarity in [0, 1].
    """
    _check_pair(x, y)
    c1, c2 = 0.01**2, 0.03**2
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    y = F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x = F.avg_pool2d(x, 3, 1)
    mu_y = F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x.square()
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y.square()
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / (
        (mu_x.square() + mu_y.square() + c1) * (sigma_x + sigma_y + c2)
    )
    return ((1 - ssim) / 2).clamp(0, 1).mean(1, keepdim=True)


def _census_transform(image: torch.Tensor) -> torch.Tensor:
    """Soft ternary census of a ``(B, 3, H, W)`` image: ``(B, 9, H, W)`` over the 3x3 neighbourhood."""
    weights = image.new_tensor(_GREY).view(1, 3, 1, 1)
    grey = (image * weights).sum(1, keepdim=True) * 255.0
    patches = F.unfold(grey, kernel_size=3, padding=1).view(grey.shape[0], 9, *grey.shape[-2:])
    diff = patches - grey
    return diff / torch.sqrt(0.81 + diff.square())


def census_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel soft census (ternary) distance, robust to brightness changes (ARFlow's form).

    Distance per neighbour ``d^2 / (0.1 + d^2)``, averaged over the 9 neighbours; the one-pixel border,
    whose neighbourhood leaves the image, is set to 0.

    Args:
        x, y: ``(B, 3, H, W)`` RGB images in [0, 1].

    Returns:
        ``(B, 1, H, W)`` distance in [0, 1).
    """
    _check_pair(x, y)
    if x.shape[1] != 3:
        raise ValueError(f"expected RGB images (B, 3, H, W) for the census term, got {tuple(x.shape)}")
    d = _census_transform(x) - _census_transform(y)
    dist = (d.square() / (0.1 + d.square())).mean(1, keepdim=True)
    border = torch.zeros_like(dist)
    border[..., 1:-1, 1:-1] = 1.0
    return dist * border


def photometric_map(
    im1: torch.Tensor,
    warped: torch.Tensor,
    *,
    w_l1: float = 1.0,
    w_ssim: float = 0.0,
    w_census: float = 0.0,
) -> torch.Tensor:
    """Per-pixel photometric error ``(B, 1, H, W)`` between frame 1 and frame 2 warped onto it.

    ``w_l1 * mean_c |I1 - I2w| + w_ssim * ssim_distance + w_census * census_distance``.
    """
    _check_pair(im1, warped)
    if min(w_l1, w_ssim, w_census) < 0 or w_l1 + w_ssim + w_census <= 0:
        raise ValueError(
            f"expected non-negative photometric weights with a positive sum, got l1={w_l1}, "
            f"ssim={w_ssim}, census={w_census}"
        )
    error = im1.new_zeros(im1.shape[0], 1, *im1.shape[-2:])
    if w_l1 > 0:
        error = error + w_l1 * (im1 - warped).abs().mean(1, keepdim=True)
    if w_ssim > 0:
        error = error + w_ssim * ssim_distance(im1, warped)
    if w_census > 0:
        error = error + w_census * census_distance(im1, warped)
    return error


def photometric_loss(
    im1: torch.Tensor,
    im2: torch.Tensor,
    flow12: torch.Tensor,
    *,
    occlusion: torch.Tensor | None = None,
    w_l1: float = 1.0,
    w_ssim: float = 0.0,
    w_census: float = 0.0,
    padding_mode: str = "border",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Occlusion-masked photometric loss of Eq. 11, normalised by the share of visible pixels.

    Args:
        im1, im2: ``(B, 3, H, W)`` frames in [0, 1].
        flow12: ``(B, 2, H, W)`` flow frame 1 -> frame 2 in pixels.
        occlusion: optional ``(B, 1, H, W)`` mask, 1 = occluded (``forward_backward_occlusion``); its
            pixels are left out. None uses every pixel.
        w_l1, w_ssim, w_census: weights of the per-pixel terms (the paper: l1 only).
        padding_mode: how ``flow_warp`` samples outside frame 2 (``"border"``, as ARFlow).
        eps: guards the division when (almost) every pixel is occluded, so the loss stays finite (0).

    Returns:
        Scalar loss: ``sum(error * visible) / max(sum(visible), eps)`` over the whole batch.
    """
    _check_pair(im1, im2)
    if flow12.dim() != 4 or flow12.shape[1] != 2 or flow12.shape[0] != im1.shape[0]:
        raise ValueError(
            f"expected flow12 (B, 2, H, W) matching im1 {tuple(im1.shape)}, got {tuple(flow12.shape)}"
        )
    warped = flow_warp(im2, flow12, padding_mode=padding_mode)
    error = photometric_map(im1, warped, w_l1=w_l1, w_ssim=w_ssim, w_census=w_census)
    if occlusion is None:
        return error.mean()
    if occlusion.shape != error.shape:
        raise ValueError(f"expected occlusion of shape {tuple(error.shape)}, got {tuple(occlusion.shape)}")
    visible = 1.0 - occlusion.detach().to(error.dtype)
    return (error * visible).sum() / visible.sum().clamp_min(eps)
