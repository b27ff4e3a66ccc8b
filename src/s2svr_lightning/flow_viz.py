"""Colour-coded optical flow with the standard Middlebury colour wheel (Baker et al., 2011).

Hue gives the direction, saturation the magnitude relative to ``max_norm``: zero motion is white,
motion to the right red, down yellow-orange, left cyan, up blue. Flows longer than ``max_norm`` are
drawn at full saturation and darkened (x 0.75), as in the Middlebury code.
"""

from __future__ import annotations

import math

import torch

from .utils import expect_shape, to_uint8_frames

__all__ = ["flow_to_color", "make_colorwheel"]

# segment lengths of the wheel, red -> yellow -> green -> cyan -> blue -> magenta -> red
_SEGMENTS = (("RY", 15), ("YG", 6), ("GC", 4), ("CB", 11), ("BM", 13), ("MR", 6))


def make_colorwheel() -> torch.Tensor:
    """The 55 colours of the wheel, ``(55, 3)`` float in [0, 255]."""
    rows = []
    for name, n in _SEGMENTS:
        for i in range(n):
            ramp = math.floor(255 * i / n)
            rows.append(
                {
                    "RY": (255, ramp, 0),
                    "YG": (255 - ramp, 255, 0),
                    "GC": (0, 255, ramp),
                    "CB": (0, 255 - ramp, 255),
                    "BM": (ramp, 0, 255),
                    "MR": (255, 0, 255 - ramp),
                }[name]
            )
    return torch.tensor(rows, dtype=torch.float64)


def flow_to_color(
    flow: torch.Tensor,
    max_norm: float | torch.Tensor | None = None,
    *,
    to_uint8: bool = False,
) -> torch.Tensor:
    """Colour-code a flow field.

    Args:
        flow: ``(B, 2, H, W)`` or ``(2, H, W)`` flow in pixels, channel 0 = x.
        max_norm: the magnitude drawn at full saturation: a number, or ``(B,)`` per image. None uses
            each image's own largest finite magnitude (pass the ground truth's maximum to draw a
            prediction and its ground truth on the same scale).
        to_uint8: return uint8 in [0, 255] instead of float in [0, 1].

    Returns:
        ``(B, 3, H, W)`` (or ``(3, H, W)``) RGB image. Non-finite flow vectors are drawn black.
    """
    squeeze = flow.dim() == 3
    if squeeze:
        flow = flow.unsqueeze(0)
    expect_shape(flow, "(B, 2, H, W)", "flow")
    if not flow.is_floating_point():
        raise ValueError(f"expected a floating-point flow, got {flow.dtype}")
    flow = flow.detach().to(torch.float64)
    finite = torch.isfinite(flow).all(1)  # (B, H, W)
    flow = torch.where(finite.unsqueeze(1), flow, torch.zeros_like(flow))
    u, v = flow[:, 0], flow[:, 1]
    radius = torch.sqrt(u.square() + v.square())
    batch = flow.shape[0]
    if max_norm is None:
        norm = radius.flatten(1).amax(1)
    else:
        norm = torch.as_tensor(max_norm, dtype=torch.float64, device=flow.device).flatten()
        if norm.numel() == 1:
            norm = norm.expand(batch)
        if norm.numel() != batch:
            raise ValueError(f"expected max_norm a number or of shape ({batch},), got {tuple(norm.shape)}")
    norm = norm.clamp_min(1e-12).view(batch, 1, 1)
    radius = radius / norm

    wheel = make_colorwheel().to(flow.device) / 255.0
    ncols = wheel.shape[0]
    angle = torch.atan2(-v, -u) / math.pi  # in [-1, 1]
    position = (angle + 1) / 2 * (ncols - 1)
    k0 = position.floor().long().clamp(0, ncols - 1)
    k1 = (k0 + 1) % ncols
    frac = (position - k0.to(position.dtype)).unsqueeze(-1)
    color = (1 - frac) * wheel[k0] + frac * wheel[k1]  # (B, H, W, 3)
    inside = (radius <= 1).unsqueeze(-1)
    # inside the unit circle: blend from white; outside: full colour, darkened
    color = torch.where(inside, 1 - radius.unsqueeze(-1) * (1 - color), color * 0.75)
    color = color * finite.unsqueeze(-1)
    image = color.permute(0, 3, 1, 2).to(torch.float32)
    if to_uint8:
        image = to_uint8_frames(image)
    return image[0] if squeeze else image
