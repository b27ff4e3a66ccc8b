"""RGB <-> YCbCr (ITU-R BT.601, limited range) and planar YUV 4:2:0.

The same matrix as MATLAB's ``rgb2ycbcr`` and BasicSR's ``rgb2ycbcr``: for RGB in [0, 1],
``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` on the 0-255 scale (16-235). Benchmarks score compressed
video on this Y, so reading a YUV file into RGB with the exact inverse of this matrix and converting
back gives the file's Y again (up to float rounding where RGB is not clipped).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .utils import expect_shape

__all__ = [
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
    "rgb_to_y",
    "rgb_to_yuv420",
    "yuv420_to_rgb",
]

# rows: Y, Cb, Cr; columns: R, G, B (RGB in [0, 1], output on the 0-255 scale)
_RGB2YCBCR = np.array(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=np.float64
)
_OFFSET = np.array([16.0, 128.0, 128.0], dtype=np.float64)
_YCBCR2RGB = np.linalg.inv(_RGB2YCBCR)


def _check_rgb(x: torch.Tensor, name: str) -> None:
    expect_shape(x, "(..., 3, H, W)", name)
    if not x.is_floating_point():
        raise ValueError(f"expected a floating point {name} in [0, 1], got dtype {x.dtype}")


def _apply(x: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    # Element-wise sums in a fixed order, not einsum/matmul: the result must not depend on the thread count,
    # or 8-bit rounding (and then HEVC's decisions) would change with it.
    r, g, b = x[..., 0, :, :], x[..., 1, :, :], x[..., 2, :, :]
    rows = [float(m[0]) * r + float(m[1]) * g + float(m[2]) * b for m in matrix]
    return torch.stack(rows, dim=-3)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """RGB ``(..., 3, H, W)`` in [0, 1] -> YCbCr ``(..., 3, H, W)`` (Y in 16/255..235/255)."""
    _check_rgb(x, "rgb")
    off = torch.as_tensor(_OFFSET, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (_apply(x, _RGB2YCBCR) + off) / 255.0


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`rgb_to_ycbcr` (not clipped: callers clamp where they need [0, 1])."""
    _check_rgb(x, "ycbcr")
    off = torch.as_tensor(_OFFSET, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return _apply(x * 255.0 - off, _YCBCR2RGB)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """Luma ``(..., 1, H, W)`` of RGB ``(..., 3, H, W)`` in [0, 1]: BT.601 limited range, [0, 1] scale."""
    return rgb_to_ycbcr(x)[..., :1, :, :]


def rgb_to_yuv420(frames: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB frames ``(T, 3, H, W)`` in [0, 1] -> 8-bit planes Y ``(T, H, W)``, U and V ``(T, H/2, W/2)``.

    Chroma is the mean of each 2x2 block (an odd last row/column is repeated first). H and W may be odd:
    the chroma planes then have ``ceil(H/2) x ceil(W/2)`` samples, as in YUV files.
    """
    _check_rgb(frames, "frames")
    expect_shape(frames, "(T, 3, H, W)", "frames")
    ycc = rgb_to_ycbcr(frames.detach().to("cpu", torch.float64).clamp(0.0, 1.0)) * 255.0
    h, w = ycc.shape[-2:]
    chroma = ycc[:, 1:]
    if h % 2 or w % 2:
        chroma = F.pad(chroma, (0, w % 2, 0, h % 2), mode="replicate")
    chroma = F.avg_pool2d(chroma, 2)
    y = ycc[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    uv = chroma.round().clamp(0, 255).to(torch.uint8).numpy()
    return y, uv[:, 0], uv[:, 1]


def yuv420_to_rgb(
    y: np.ndarray | torch.Tensor, u: np.ndarray | torch.Tensor, v: np.ndarray | torch.Tensor
) -> torch.Tensor:
    """8-bit planes Y ``(T, H, W)``, U, V ``(T, ceil(H/2), ceil(W/2))`` -> RGB ``(T, 3, H, W)`` in [0, 1].

    Chroma is upsampled by repeating each sample over its 2x2 block (the exact inverse of the block mean
    used by :func:`rgb_to_yuv420` for flat chroma), then the BT.601 limited-range matrix is inverted.
    """
    y, u, v = (torch.as_tensor(np.asarray(p)) for p in (y, u, v))
    if y.dim() != 3 or u.shape != v.shape or u.dim() != 3:
        raise ValueError(
            f"expected planes Y (T, H, W) and U, V (T, H/2, W/2), got {tuple(y.shape)}, {tuple(u.shape)}, "
            f"{tuple(v.shape)}"
        )
    t, h, w = y.shape
    if u.shape != (t, (h + 1) // 2, (w + 1) // 2):
        raise ValueError(
            f"expected chroma planes of shape {(t, (h + 1) // 2, (w + 1) // 2)}, got {tuple(u.shape)}"
        )
    uv = torch.stack((u, v), dim=1).to(torch.float32)
    uv = uv.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :h, :w]
    ycc = torch.cat((y.to(torch.float32).unsqueeze(1), uv), dim=1) / 255.0
    return ycbcr_to_rgb(ycc).clamp_(0.0, 1.0)
