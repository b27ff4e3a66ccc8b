"""Degradations: MATLAB-exact bicubic, temporal blur, HEVC low-delay P at QP 37, YCbCr conversions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from s2svr_lightning.color import rgb_to_y, rgb_to_ycbcr, rgb_to_yuv420, ycbcr_to_rgb, yuv420_to_rgb
from s2svr_lightning.data import DatasetError  # noqa: F401  (public API import check)
from s2svr_lightning.data.degradations import bicubic_downsample, degrade, hevc_compress, temporal_blur


# -- a float64 reference of MATLAB's imresize(x, 1/s, 'bicubic'), written from its documented algorithm --
def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return np.where(
        ax <= 1,
        1.5 * ax**3 - 2.5 * ax**2 + 1,
        np.where(ax <= 2, -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2, 0.0),
    )


def _matlab_matrix(n_in: int, scale: int) -> np.ndarray:
    """Row i holds the weights of output sample i over the n_in inputs (symmetric borders folded in)."""
    s = 1.0 / scale
    width = 4.0 / s  # the kernel is widened by 1/s when shrinking (antialiasing)
    n_out = n_in // scale
    m = np.zeros((n_out, n_in))
    for i in range(1, n_out + 1):  # MATLAB's 1-based coordinates
        u = i / s + 0.5 * (1 - 1 / s)
        left = math.floor(u - width / 2)
        idx = left + np.arange(math.ceil(width) + 2)
        w = s * _cubic(s * (u - idx))
        w = w / w.sum()
        folded = np.concatenate([np.arange(1, n_in + 1), np.arange(n_in, 0, -1)])
        cols = folded[np.mod(idx - 1, 2 * n_in)] - 1
        np.add.at(m[i - 1], cols, w)
    return m


def _matlab_bicubic(x: np.ndarray, scale: int) -> np.ndarray:
    mh, mw = _matlab_matrix(x.shape[-2], scale), _matlab_matrix(x.shape[-1], scale)
    return np.einsum("oh,...hw,pw->...op", mh, x, mw)


@pytest.mark.parametrize(
    "scale, shape", [(4, (2, 3, 32, 48)), (4, (3, 20, 8)), (2, (1, 3, 14, 10)), (3, (3, 9, 12))]
)
def test_bicubic_matches_matlab_reference(scale, shape):
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = bicubic_downsample(x, scale)
    ref = _matlab_bicubic(x.numpy(), scale)
    assert ours.shape == ref.shape
    assert np.abs(ours.numpy() - ref).max() < 1e-5


def test_bicubic_on_photo_in_float32_and_not_plain_interpolate(moving_photo):
    hq = torch.from_numpy(moving_photo(2)).permute(0, 3, 1, 2).float() / 255
    ours = bicubic_downsample(hq)
    ref = _matlab_bicubic(hq.double().numpy(), 4)
    assert np.abs(ours.double().numpy() - ref).max() < 1e-5
    # the symmetric padding matters: without it the border columns differ from MATLAB
    plain = torch.nn.functional.interpolate(hq, scale_factor=0.25, mode="bicubic", antialias=True)
    assert np.abs(plain.double().numpy() - ref).max() > 1e-3


def test_bicubic_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible by scale 4"):
        bicubic_downsample(torch.rand(3, 10, 8))
    with pytest.raises(ValueError, match="floating point"):
        bicubic_downsample(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="scale"):
        bicubic_downsample(torch.rand(3, 8, 8), scale=0)


def test_temporal_blur_averages_windows():
    sub = torch.arange(14, dtype=torch.float32).view(14, 1, 1, 1).expand(14, 3, 2, 2)
    out = temporal_blur(sub, 7)
    assert out.shape == (2, 3, 2, 2)
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([3.0, 10.0]))
    sliding = temporal_blur(sub, 3, stride=1)
    assert sliding.shape[0] == 12 and torch.allclose(sliding[:, 0, 0, 0], torch.arange(1.0, 13.0))
    with pytest.raises(ValueError, match="at least k=7"):
        temporal_blur(sub[:5], 7)


def test_degrade_dispatch_and_targets():
    hq = torch.rand(9, 3, 16, 16)
    lq, target = degrade("vsr", hq, return_target=True)
    assert lq.shape == (9, 3, 4, 4) and target is hq
    lq, target = degrade("deblur", hq, blur_frames=3, return_target=True)
    assert lq.shape == (3, 3, 16, 16)
    assert torch.allclose(lq[1], hq[3:6].mean(0)) and torch.equal(target[1], hq[4])
    with pytest.raises(ValueError, match="expected task"):
        degrade("denoise", hq)


def test_ycbcr_round_trip_and_bt601_values():
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-12)
    white, black = torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1)
    assert rgb_to_y(white).item() == pytest.approx(235 / 255, abs=1e-6)
    assert rgb_to_y(black).item() == pytest.approx(16 / 255, abs=1e-6)
    # YUV 4:2:0 planes back to RGB keep the luma exactly (where RGB is not clipped)
    rng = np.random.default_rng(0)
    y = rng.integers(60, 190, (2, 6, 10), dtype=np.uint8)
    u, v = (rng.integers(110, 146, (2, 3, 5), dtype=np.uint8) for _ in range(2))
    rgb = yuv420_to_rgb(y, u, v)
    assert torch.allclose(rgb_to_y(rgb)[:, 0] * 255, torch.from_numpy(y).float(), atol=2e-3)
    y2, u2, v2 = rgb_to_yuv420(rgb)
    assert (
        np.array_equal(y2, y)
        and np.abs(u2.astype(int) - u).max() <= 1
        and np.abs(v2.astype(int) - v).max() <= 1
    )


def _psnr_y(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((rgb_to_y(a) - rgb_to_y(b)) ** 2).mean().item()
    return 10 * math.log10(1.0 / mse)


def test_hevc_low_delay_p_at_qp37_on_photo(moving_photo):
    frames = torch.from_numpy(moving_photo(6)).permute(0, 3, 1, 2).float() / 255
    out, stats = hevc_compress(frames, 37, return_stats=True)
    assert out.shape == frames.shape and out.dtype == frames.dtype
    assert [s["type"] for s in stats] == ["I"] + ["P"] * 5  # one intra frame, then only P frames
    assert all(s["qp"] == 37.0 for s in stats)  # the I frame too (ipratio=1)
    p37 = _psnr_y(out, frames)
    p22 = _psnr_y(hevc_compress(frames, 22), frames)
    assert 22.0 < p37 < 40.0 and p22 > p37 + 4.0  # a real quality drop, monotonic in QP


def test_hevc_handles_odd_and_tiny_sizes_and_rejects_bad_qp():
    frames = torch.rand(2, 3, 9, 13)
    out = hevc_compress(frames, 30)
    assert out.shape == frames.shape and 0.0 <= out.min() and out.max() <= 1.0
    with pytest.raises(ValueError, match="qp"):
        hevc_compress(frames, 60)
    with pytest.raises(ValueError, match=r"\(T, 3, H, W\)"):
        hevc_compress(torch.rand(3, 8, 8))


def test_hevc_is_deterministic_on_small_frames():
    # x265 alone gives run-to-run different P frames on pictures one CTU (64 px) wide; the synthetic data
    # relies on (seed, index) determinism, so hevc_compress pads such frames.
    texture = torch.rand(1, 3, 50, 50, generator=torch.Generator().manual_seed(0))
    texture = torch.nn.functional.interpolate(texture, scale_factor=2, mode="bilinear")[0]
    x = torch.stack([texture[:, 3 * t : 3 * t + 64, 2 * t : 2 * t + 64] for t in range(5)])  # 64 px wide
    first = hevc_compress(x)
    assert all(torch.equal(hevc_compress(x), first) for _ in range(6))


def test_hevc_on_yuv_planes_streams_and_pads_small_odd_frames_deterministically():
    # the YUV core of hevc_compress (prepare mfqe feeds it a memory-mapped file a frame at a time)
    from s2svr_lightning.data.degradations import hevc_ldp_yuv420

    texture = torch.rand(1, 3, 50, 50, generator=torch.Generator().manual_seed(1))
    texture = torch.nn.functional.interpolate(texture, scale_factor=2, mode="bilinear")[0]
    x = torch.stack([texture[:, 2 * t : 2 * t + 63, t : t + 45] for t in range(4)])  # odd, under one CTU
    y, u, v = rgb_to_yuv420(x)
    assert u.shape == (4, 32, 23)
    runs = [list(hevc_ldp_yuv420(iter(zip(y, u, v)), 37)) for _ in range(4)]
    first = runs[0]
    assert len(first) == 4 and [p.shape for p in first[0]] == [(63, 45), (32, 23), (32, 23)]
    assert all(all(np.array_equal(a, b) for fa, fb in zip(r, first) for a, b in zip(fa, fb)) for r in runs)
    mse = np.mean([(f[0].astype(float) - y[i]) ** 2 for i, f in enumerate(first)])
    assert 25.0 < 10 * math.log10(255.0**2 / mse) < 50.0  # lossy, not garbage
    with pytest.raises(ValueError, match="like the first frame"):
        list(hevc_ldp_yuv420(iter([(y[0], u[0], v[0]), (y[0][:-1], u[0], v[0])]), 37))
    with pytest.raises(ValueError, match="at least one frame"):
        list(hevc_ldp_yuv420(iter([]), 37))
