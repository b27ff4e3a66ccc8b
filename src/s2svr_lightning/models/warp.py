"""Backward warping and flow resizing: the one place in the library that warps.

Flows are ``(B, 2, H, W)`` in pixels, channel 0 = x (horizontal), channel 1 = y. A flow ``F``
from frame 1 to frame 2 says that the content at pixel ``p`` of frame 1 sits at ``p + F(p)`` in
frame 2, so ``flow_warp(frame2, F)`` brings frame 2 back onto frame 1's grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import memory_format_of

__all__ = ["flow_warp", "resize_flow", "pixel_grid"]

_grid_cache: dict[tuple, torch.Tensor] = {}


def pixel_grid(height: int, width: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Pixel coordinates ``(1, 2, H, W)`` (x then y), cached per size/device/dtype."""
    key = (height, width, device, dtype)
    grid = _grid_cache.get(key)
    if grid is None:
        ys, xs = torch.meshgrid(
            torch.arange(height, device=device, dtype=dtype),
            torch.arange(width, device=device, dtype=dtype),
            indexing="ij",
        )
        grid = torch.stack((xs, ys), dim=0).unsqueeze(0)
        # only plain tensors made eagerly are kept: a grid made while tracing (torch.export, ONNX,
        # torch.compile, TorchScript) is a fake or traced tensor that later calls must not pick up
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
        if type(grid) is torch.Tensor and not tracing:
            if len(_grid_cache) > 64:  # sizes vary during multi-scale training; keep the cache small
                _grid_cache.clear()
            _grid_cache[key] = grid
    return grid


def flow_warp(
    x: torch.Tensor,
    flow: torch.Tensor,
    *,
    padding_mode: str = "zeros",
    mode: str = "bilinear",
) -> torch.Tensor:
    """Sample ``x`` at ``p + flow(p)`` (backward warp), bilinear, ``align_corners=True``.

    Args:
        x: ``(B, C, H, W)`` features or images.
        flow: ``(B, 2, H, W)`` displacement in pixels, channel 0 = x.
        padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"`` (as ``grid_sample``).
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        ``(B, C, H, W)`` warped tensor, with ``x``'s dtype and memory layout (contiguous or channels_last).
    """
    if x.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(
            f"expected x (B, C, H, W) and flow (B, 2, H, W), got {tuple(x.shape)} and {tuple(flow.shape)}"
        )
    if x.shape[0] != flow.shape[0] or x.shape[-2:] != flow.shape[-2:]:
        raise ValueError(
            f"expected x and flow with the same batch and size, got {tuple(x.shape)} and {tuple(flow.shape)}"
        )
    _, _, h, w = x.shape
    # sample in float32 at least: in bfloat16 the normalised coordinates of a 320 px wide frame are off
    # by up to a pixel (8 mantissa bits); this is also what grid_sample does under autocast
    dtype = torch.promote_types(torch.promote_types(x.dtype, flow.dtype), torch.float32)
    coords = pixel_grid(h, w, device=flow.device, dtype=dtype) + flow
    # normalise to [-1, 1] with align_corners=True: pixel 0 -> -1, pixel W-1 -> +1
    gx = coords[:, 0] * (2.0 / max(w - 1, 1)) - 1.0
    gy = coords[:, 1] * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    warped = F.grid_sample(x.to(dtype), grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    # grid_sample returns NCHW: hand back x's layout and dtype, so that a channels_last / bfloat16
    # computation stays so, without conversions downstream
    return warped.to(x.dtype, memory_format=memory_format_of(x))


def resize_flow(
    flow: torch.Tensor, size: tuple[int, int], *, mode: str = "bilinear", align_corners: bool = True
) -> torch.Tensor:
    """Resize a flow field to ``size = (H, W)`` and rescale its values per axis.

    The values scale with the size ratio along each axis, so that a flow computed at one
    resolution stays correct in pixels of the other.
    """
    h, w = flow.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    if (h, w) == (out_h, out_w):
        return flow
    kwargs = {"align_corners": align_corners} if mode in ("bilinear", "bicubic") else {}
    resized = F.interpolate(flow, size=(out_h, out_w), mode=mode, **kwargs)
    scale = torch.tensor([out_w / w, out_h / h], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return resized * scale
