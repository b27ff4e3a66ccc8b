"""Losses of the unsupervised flow stages (Eq. 11-17) and the Charbonnier loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from s2svr_lightning.losses import (
    CharbonnierLoss,
    UnsupervisedFlowLoss,
    census_distance,
    charbonnier_loss,
    distillation_loss,
    forward_backward_occlusion,
    photometric_loss,
    smoothness_loss,
    ssim_distance,
)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """The astronaut photograph, (1, 3, 128, 128) in [0, 1]."""
    image = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    return F.interpolate(image, size=(128, 128), mode="area")


def _shifted_pair(photo: torch.Tensor, dx: int, dy: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two crops of the photograph: content at p in frame 1 is at p + (dx, dy) in frame 2."""
    y0, x0 = 32, 32
    im1 = photo[..., y0 : y0 + size, x0 : x0 + size]
    im2 = photo[..., y0 - dy : y0 - dy + size, x0 - dx : x0 - dx + size]
    return im1.contiguous(), im2.contiguous()


def _constant_flow(dx: float, dy: float, size: int, batch: int = 1) -> torch.Tensor:
    return torch.tensor([float(dx), float(dy)]).view(1, 2, 1, 1).expand(batch, 2, size, size).clone()


def test_photometric_loss_is_zero_for_true_flow_and_larger_for_wrong_flows(photo):
    im1, im2 = _shifted_pair(photo, 3, -2)
    true12, true21 = _constant_flow(3, -2, 64), _constant_flow(-3, 2, 64)
    occ = forward_backward_occlusion(true12, true21)
    assert photometric_loss(im1, im2, true12, occlusion=occ).item() < 1e-6
    # unmasked, only the pixels whose match left the frame contribute
    assert photometric_loss(im1, im2, true12).item() < 0.02
    for wrong in (_constant_flow(0, 0, 64), _constant_flow(4, -2, 64), _constant_flow(3, -1, 64)):
        assert photometric_loss(im1, im2, wrong).item() > 0.01
    # all photometric terms agree on the ranking
    for kwargs in ({"w_l1": 0.0, "w_ssim": 1.0}, {"w_l1": 0.0, "w_census": 1.0}):
        good = photometric_loss(im1, im2, true12, occlusion=occ, **kwargs).item()
        bad = photometric_loss(im1, im2, _constant_flow(0, 0, 64), **kwargs).item()
        assert good < 0.1 * bad  # SSIM/census windows straddle the masked border: small, not 0


def test_photometric_loss_gradient_points_towards_the_true_flow(photo):
    im1, im2 = _shifted_pair(photo, 3, -2)
    flow = _constant_flow(2.5, -1.5, 64).requires_grad_(True)
    photometric_loss(im1, im2, flow).backward()
    mean_grad = flow.grad.mean(dim=(0, 2, 3))
    assert mean_grad[0] < 0 < mean_grad[1]  # descent increases x (towards 3) and decreases y (towards -2)


def test_photometric_loss_is_finite_when_every_pixel_is_occluded(photo):
    im1, im2 = _shifted_pair(photo, 0, 0)
    flow = _constant_flow(1, 1, 64).requires_grad_(True)
    loss = photometric_loss(im1, im2, flow, occlusion=torch.ones(1, 1, 64, 64))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(flow.grad).all()


def test_occlusion_flags_pixels_leaving_the_frame():
    occ = forward_backward_occlusion(_constant_flow(5, 0, 32), _constant_flow(-5, 0, 32))
    assert occ.shape == (1, 1, 32, 32)
    assert torch.equal(occ[0, 0].sum(0), torch.tensor([0.0] * 27 + [32.0] * 5))


def test_occlusion_flags_the_region_a_moving_sprite_covers_and_uncovers():
    size, top, left, side, shift = 32, 8, 6, 10, 5
    rows = slice(top, top + side)
    flow12 = torch.zeros(1, 2, size, size)
    flow12[0, 0, rows, left : left + side] = shift  # the sprite moves 5 px right, the background stays
    flow21 = torch.zeros(1, 2, size, size)
    flow21[0, 0, rows, left + shift : left + shift + side] = -shift
    occ1 = forward_backward_occlusion(flow12, flow21)[0, 0]
    occ2 = forward_backward_occlusion(flow21, flow12)[0, 0]
    expected1 = torch.zeros(size, size)
    expected1[rows, left + side : left + side + shift] = 1  # background of frame 1 the sprite covers
    expected2 = torch.zeros(size, size)
    expected2[rows, left : left + shift] = 1  # background of frame 2 the sprite uncovered
    assert torch.equal(occ1, expected1)
    assert torch.equal(occ2, expected2)


def test_occlusion_mask_carries_no_gradient():
    flow12 = _constant_flow(1, 0, 16).requires_grad_(True)
    occ = forward_backward_occlusion(flow12, _constant_flow(2, 0, 16))
    assert not occ.requires_grad and occ.mean().item() == 1.0


def test_smoothness_is_zero_for_constant_flow_and_edge_aware(photo):
    image = photo[..., :32, :32]
    assert smoothness_loss(_constant_flow(4.0, -3.0, 32), image).item() == 0.0
    # a motion boundary: cheaper where the image has an edge at the same place
    flow = torch.zeros(1, 2, 32, 32)
    flow[..., 16:] = 3.0
    flat = torch.full((1, 3, 32, 32), 0.5)
    edge = flat.clone()
    edge[..., 16:] = 1.0
    on_flat = smoothness_loss(flow, flat, edge_alpha=10.0)
    on_edge = smoothness_loss(flow, edge, edge_alpha=10.0)
    # flow / min(H, W), one jump in 31 columns, ARFlow's 1/4
    assert on_flat.item() == pytest.approx(3.0 / 32 / 31 / 4, rel=1e-5)
    assert on_edge.item() == pytest.approx(on_flat.item() * torch.exp(torch.tensor(-5.0)).item(), rel=1e-5)
    assert smoothness_loss(flow, flat, normalize=False).item() == pytest.approx(on_flat.item() * 32, rel=1e-5)


def test_distillation_scales_student_flow_by_four_to_the_teacher_size():
    student = _constant_flow(1.0, -0.5, 16).requires_grad_(True)
    teacher = _constant_flow(4.0, -2.0, 64)
    assert distillation_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-6)
    # the loss is in HQ pixels: a 1 LQ-pixel error in x is 4 HQ pixels
    off = _constant_flow(2.0, -0.5, 16)
    assert distillation_loss(off, teacher).item() == pytest.approx(4.0, rel=1e-6)
    teacher = teacher.clone().requires_grad_(True)
    distillation_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ValueError, match="expected teacher_flow"):
        distillation_loss(student, torch.zeros(2, 2, 64, 64))


def test_unsupervised_loss_combines_eq14_with_the_paper_and_arflow_weights(photo):
    im1, im2 = _shifted_pair(photo, 2, 1, size=32)
    flow12 = _constant_flow(2, 1, 32) + 0.3 * torch.randn(
        1, 2, 32, 32, generator=torch.Generator().manual_seed(0)
    )
    flow21 = _constant_flow(-2, -1, 32)
    criterion = UnsupervisedFlowLoss()
    out = criterion(im1, im2, flow12, flow21)
    occ1, occ2 = criterion.occlusion(flow12, flow21)
    # w_ph = 0.15 on l1 (Eq. 14) with ARFlow's SSIM at 0.85, w_sm = 50
    weights = {"w_l1": 0.15, "w_ssim": 0.85}
    photo_ref = 0.5 * (
        photometric_loss(im1, im2, flow12, occlusion=occ1, **weights)
        + photometric_loss(im2, im1, flow21, occlusion=occ2, **weights)
    )
    smooth_ref = 0.5 * (smoothness_loss(flow12, im1) + smoothness_loss(flow21, im2))
    assert out["photometric"].item() == pytest.approx(photo_ref.item(), rel=1e-6)
    assert out["smoothness"].item() == pytest.approx(smooth_ref.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(photo_ref.item() + 50 * smooth_ref.item(), rel=1e-6)
    assert 0 < out["occlusion"].item() < 1
    # Eq. 14 to the letter: l1 only
    l1_only = UnsupervisedFlowLoss(w_ssim=0.0)(im1, im2, flow12, flow21)
    l1_ref = 0.5 * (
        photometric_loss(im1, im2, flow12, occlusion=occ1)
        + photometric_loss(im2, im1, flow21, occlusion=occ2)
    )
    assert l1_only["loss"].item() == pytest.approx(0.15 * l1_ref.item() + 50 * smooth_ref.item(), rel=1e-6)
    # without the mask (warm-up) every pixel counts
    unmasked = criterion(im1, im2, flow12, flow21, use_occlusion=False)
    ref = 0.5 * (
        photometric_loss(im1, im2, flow12, **weights) + photometric_loss(im2, im1, flow21, **weights)
    )
    assert unmasked["photometric"].item() == pytest.approx(ref.item(), rel=1e-6)


def test_unsupervised_loss_multiscale_reads_the_pyramid(photo):
    im1, im2 = _shifted_pair(photo, 2, 0, size=32)
    # a correct finest level and a wrong (zero) coarse level
    pyr12 = [_constant_flow(2, 0, 32), _constant_flow(0, 0, 16)]
    pyr21 = [_constant_flow(-2, 0, 32), _constant_flow(0, 0, 16)]
    single = UnsupervisedFlowLoss()(im1, im2, pyr12, pyr21)
    multi = UnsupervisedFlowLoss(scale_weights=(1.0, 0.5))(im1, im2, pyr12, pyr21)
    occ1, occ2 = UnsupervisedFlowLoss().occlusion(pyr12[0], pyr21[0])
    small1, small2 = F.adaptive_avg_pool2d(im1, 16), F.adaptive_avg_pool2d(im2, 16)
    weights = {"w_l1": 0.15, "w_ssim": 0.85}
    coarse = 0.5 * (
        photometric_loss(
            small1, small2, pyr12[1], occlusion=F.interpolate(occ1, size=16, mode="nearest"), **weights
        )
        + photometric_loss(
            small2, small1, pyr21[1], occlusion=F.interpolate(occ2, size=16, mode="nearest"), **weights
        )
    )
    # SSIM windows straddle the occluded border columns, so the correct level is near 0, not exactly 0
    assert single["photometric"].item() < 0.1 * coarse.item()
    assert multi["photometric"].item() == pytest.approx(
        single["photometric"].item() + 0.5 * coarse.item(), rel=1e-5
    )
    assert multi["smoothness"].item() == single["smoothness"].item()  # smoothness at the finest level only
    with pytest.raises(ValueError, match="expected flow pyramids"):
        UnsupervisedFlowLoss(scale_weights=(1.0, 0.5, 0.5))(im1, im2, pyr12, pyr21)


def test_ssim_and_census_distances(photo):
    image = photo[..., :32, :32]
    assert ssim_distance(image, image).abs().max().item() < 1e-6
    assert ssim_distance(image, image.flip(-1)).mean().item() > 0.05
    # census compares local orderings: an additive brightness change leaves it at 0
    brighter = (image * 0.8 + 0.1).clamp(0, 1)
    assert census_distance(image * 0.8, brighter).abs().max().item() < 1e-4
    assert census_distance(image, image.flip(-1)).mean().item() > 0.1
    with pytest.raises(ValueError, match="expected RGB"):
        census_distance(image[:, :1], image[:, :1])


def test_charbonnier_matches_its_formula():
    pred = torch.tensor([0.0, 0.5, -2.0])
    target = torch.zeros(3)
    assert charbonnier_loss(pred, target).item() == pytest.approx((1e-6 + 0.5 + 2.0) / 3, rel=1e-5)
    assert CharbonnierLoss(eps=1.0)(pred, target).item() == pytest.approx(
        (1.0 + 5**0.5 / 2 + 5**0.5) / 3, rel=1e-6
    )
    with pytest.raises(ValueError, match="expected pred and target"):
        charbonnier_loss(pred, torch.zeros(4))


def test_bad_inputs_raise_clear_errors(photo):
    image = photo[..., :16, :16]
    with pytest.raises(ValueError, match="expected flow12 and flow21"):
        forward_backward_occlusion(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match="expected im1 and im2"):
        photometric_loss(image, image[..., :8], torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="expected flow12"):
        photometric_loss(image, image, torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="expected occlusion"):
        photometric_loss(image, image, torch.zeros(1, 2, 16, 16), occlusion=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="expected image"):
        smoothness_loss(torch.zeros(1, 2, 16, 16), image[..., :8, :8])
    with pytest.raises(ValueError, match="expected non-negative"):
        photometric_loss(image, image, torch.zeros(1, 2, 16, 16), w_l1=-1.0)
