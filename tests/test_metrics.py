"""Metrics against a float64 numpy reference of the BasicSR / MATLAB conventions on real photographs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from skimage import data as skdata
from skimage.metrics import structural_similarity

from s2svr_lightning.metrics import PSNR_MAX, VideoMetrics, endpoint_error, psnr, rgb_to_y, ssim


def _photo_pair(name: str, size=(72, 88), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An 8-bit crop of a photograph and a float 'restoration' of it (blurred, noisy, out of [0, 1])."""
    img = getattr(skdata, name)()[100 : 100 + size[0], 120 : 120 + size[1]].astype(np.float64) / 255.0
    rng = np.random.default_rng(seed)
    blurred = (img + np.roll(img, 1, axis=0) + np.roll(img, 1, axis=1)) / 3.0
    pred = blurred + rng.normal(0.0, 0.03, img.shape)  # some values leave [0, 1]: clamping matters
    return img, pred


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float()  # (3, H, W), float32 as a network would give


def _ref_prepare(img: np.ndarray, y_channel: bool, border: int) -> np.ndarray:
    """uint8 rounding (as saving a PNG), then BT.601 Y on the 0-255 scale, then crop: (H, W, C) float64."""
    u8 = np.round(np.clip(img.astype(np.float32), 0, 1) * 255.0).astype(np.uint8)
    x = u8.astype(np.float64)
    if y_channel:
        x = (16.0 + x @ np.array([65.481, 128.553, 24.966]) / 255.0)[..., None]
    if border:
        x = x[border:-border, border:-border]
    return x


def _ref_psnr(a: np.ndarray, b: np.ndarray, y_channel=False, border=0) -> float:
    a, b = _ref_prepare(a, y_channel, border), _ref_prepare(b, y_channel, border)
    return 10.0 * math.log10(255.0**2 / np.mean((a - b) ** 2))


def _ref_ssim(a: np.ndarray, b: np.ndarray, y_channel=False, border=0) -> float:
    """MATLAB ssim_index: 11x11 Gaussian (sigma 1.5) 'valid' filtering, 0-255 constants, per channel."""
    a, b = _ref_prepare(a, y_channel, border), _ref_prepare(b, y_channel, border)
    ax = np.arange(11) - 5.0
    g = np.exp(-(ax**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(x):
        return np.einsum("ijkl,kl->ij", sliding_window_view(x, (11, 11)), window)

    scores = []
    for c in range(a.shape[-1]):
        x, y = a[..., c], b[..., c]
        mx, my = filt(x), filt(y)
        sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
        smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
        scores.append(smap.mean())
    return float(np.mean(scores))


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
@pytest.mark.parametrize("y_channel,border", [(False, 0), (True, 0), (False, 4)])
def test_psnr_ssim_match_float64_reference(name, y_channel, border):
    hq, pred = _photo_pair(name)
    p, t = _to_tensor(pred), _to_tensor(hq)
    got_psnr = psnr(p, t, y_channel=y_channel, border=border)
    got_ssim = ssim(p, t, y_channel=y_channel, border=border)
    assert got_psnr.shape == (1,) and got_psnr.dtype == torch.float64
    # float32 network output rounds to the same 8-bit levels, so agreement is to float64 precision
    assert got_psnr.item() == pytest.approx(_ref_psnr(pred, hq, y_channel, border), abs=1e-9)
    assert got_ssim.item() == pytest.approx(_ref_ssim(pred, hq, y_channel, border), abs=1e-9)


def test_ssim_matches_skimage_gaussian_ssim():
    """An independent implementation (scipy filtering, reflect borders cropped by skimage) agrees too."""
    hq, pred = _photo_pair("astronaut", seed=3)
    ref = structural_similarity(
        _ref_prepare(pred, False, 0),
        _ref_prepare(hq, False, 0),
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
    )
    assert ssim(_to_tensor(pred), _to_tensor(hq)).item() == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("y_channel", [False, True])
def test_ssim_equals_torchmetrics_2d_gaussian_ssim_on_the_valid_region(y_channel):
    """The separable filter is the 2-D window's: the same map as torchmetrics' (which the library used, and
    whose float64 convolution took about 1 GB for one 512x384 frame), 5 px cropped from each side."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    from s2svr_lightning.metrics import crop_border, prepare

    torch.manual_seed(0)
    pred, target = torch.rand(3, 3, 40, 52), torch.rand(3, 3, 40, 52)
    target[1] = (pred[1] + 0.05 * target[1]).clamp(0, 1)  # one pair close, SSIM near 1
    p, t = prepare(pred, y_channel=y_channel), prepare(target, y_channel=y_channel)
    _, full = structural_similarity_index_measure(
        p, t, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, k1=0.01, k2=0.03,
        reduction="none", return_full_image=True,
    )  # fmt: skip
    expected = crop_border(full, 5).mean(dim=(1, 2, 3))
    got = ssim(pred, target, y_channel=y_channel)
    assert got[1] > 0.9 > got[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_rounding_and_channel_conventions_change_the_score():
    hq, pred = _photo_pair("coffee", seed=1)
    p, t = _to_tensor(pred), _to_tensor(hq)
    rgb, y = psnr(p, t).item(), psnr(p, t, y_channel=True).item()
    assert abs(rgb - y) > 0.1  # Y and RGB are different benchmarks
    unrounded = psnr(p, t, quantize=False).item()
    assert unrounded != pytest.approx(rgb, abs=1e-6)
    # limited range: white maps to 235, black to 16
    ends = rgb_to_y(torch.tensor([[[[1.0]], [[1.0]], [[1.0]]], [[[0.0]], [[0.0]], [[0.0]]]]))
    assert ends.flatten().mul(255).tolist() == pytest.approx([235.0, 16.0], abs=1e-4)


def test_per_frame_scores_for_video_batches():
    hq, pred = _photo_pair("chelsea", seed=2)
    t, p = _to_tensor(hq), _to_tensor(pred)
    video_hq = torch.stack([t, t, t]).unsqueeze(0)  # (1, 3, 3, H, W)
    video_pred = torch.stack([t, p, p.flip(-1)]).unsqueeze(0)
    scores = psnr(video_pred, video_hq)
    assert scores.shape == (3,)
    assert scores[0].item() == PSNR_MAX  # identical frames: the documented cap, not inf
    assert scores[1].item() == pytest.approx(_ref_psnr(pred, hq), abs=1e-9)


def _video(seed: int, frames: int, noise: float, size=(24, 24)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hq = torch.rand(1, frames, 3, *size, generator=g)
    pred = hq + noise * torch.randn(hq.shape, generator=g)
    return pred, hq


def test_video_metrics_mean_per_sequence_then_over_sequences():
    (p1, t1), (p2, t2) = _video(0, 2, 0.01), _video(1, 6, 0.1)
    m = VideoMetrics()
    m.update(p1, t1, ["a"])
    m.update(p2[:, :3], t2[:, :3], "b")  # the second sequence arrives in two chunks
    m.update(p2[:, 3:], t2[:, 3:], "b")
    out = m.compute()
    seq_a, seq_b = psnr(p1, t1).mean(), psnr(p2, t2).mean()
    assert out["psnr"].item() == pytest.approx(((seq_a + seq_b) / 2).item(), abs=1e-12)
    assert out["num_sequences"].item() == 2 and out["num_frames"].item() == 8
    pooled = VideoMetrics(reduction="frame")
    pooled.update(p1, t1, ["a"])
    pooled.update(p2, t2, ["b"])
    frames = torch.cat([psnr(p1, t1), psnr(p2, t2)]).mean()
    assert pooled.compute()["psnr"].item() == pytest.approx(frames.item(), abs=1e-12)
    assert abs(frames.item() - out["psnr"].item()) > 1.0  # the two conventions really differ here
    assert set(m.per_sequence()) == {"a", "b"}


def test_video_metrics_overlapping_chunks_count_each_frame_once():
    p, t = _video(2, 5, 0.05)
    m = VideoMetrics()
    m.update(p[:, :3], t[:, :3], ["s"], frame_index=torch.arange(3))
    m.update(p[:, 2:], t[:, 2:], ["s"], frame_index=torch.arange(2, 5))  # frame 2 twice
    out = m.compute()
    assert out["num_frames"].item() == 5
    assert out["psnr"].item() == pytest.approx(psnr(p, t).mean().item(), abs=1e-12)


def test_video_metrics_baseline_and_deltas():
    p, t = _video(3, 3, 0.02)
    base = t + 0.1 * torch.randn(t.shape, generator=torch.Generator().manual_seed(9))
    m = VideoMetrics(y_channel=True)
    m.update(p, t, ["x"], baseline=base)
    out = m.compute()
    assert out["baseline_psnr"].item() == pytest.approx(
        psnr(base, t, y_channel=True).mean().item(), abs=1e-12
    )
    assert out["delta_psnr"].item() == pytest.approx((out["psnr"] - out["baseline_psnr"]).item(), abs=1e-12)
    assert out["delta_psnr"].item() > 5.0
    assert out["delta_ssim"].item() > 0.0


def test_video_metrics_errors_are_clear():
    m = VideoMetrics()
    with pytest.raises(ValueError, match="at least one scored frame"):
        m.compute()
    p, t = _video(4, 2, 0.1)
    with pytest.raises(ValueError, match="expected 1 keys"):
        m.update(p, t, ["a", "b"])
    with pytest.raises(ValueError, match="same shape"):
        psnr(p, t[..., :-1])
    with pytest.raises(ValueError, match="reduction"):
        VideoMetrics(reduction="pixel")
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(p[..., :8, :8], t[..., :8, :8])


def test_endpoint_error_values_and_mask():
    gt = torch.zeros(1, 2, 4, 4)
    pred = torch.zeros(1, 2, 4, 4)
    pred[:, 0] = 3.0
    pred[:, 1] = 4.0  # EPE 5 everywhere
    pred[..., 0, 0] = 0.0  # except one exact pixel
    assert endpoint_error(pred, gt).item() == pytest.approx((15 * 5.0) / 16)
    valid = torch.ones(1, 1, 4, 4)
    valid[..., 0, 0] = 0
    assert endpoint_error(pred, gt, valid).item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="all-zero"):
        endpoint_error(pred, gt, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        endpoint_error(pred[:, :1], gt[:, :1])


def test_video_metrics_mask_scores_only_selected_frames():
    p, t = _video(5, 4, 0.05)
    m = VideoMetrics()
    m.update(p, t, ["s"], mask=torch.tensor([False, True, False, True]), frame_index=torch.arange(4))
    out = m.compute()
    assert out["num_frames"].item() == 2
    assert out["psnr"].item() == pytest.approx(psnr(p[:, [1, 3]], t[:, [1, 3]]).mean().item(), abs=1e-12)
