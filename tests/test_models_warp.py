import pytest
import torch

from s2svr_lightning.models import flow_warp, resize_flow


def test_zero_flow_is_identity():
    x = torch.rand(2, 5, 13, 17)
    out = flow_warp(x, torch.zeros(2, 2, 13, 17))
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("dx, dy", [(2, 0), (0, -3), (1, 2)])
def test_integer_shift_moves_content(dx, dy):
    # flow 1->2 = (dx, dy): frame 1 at p equals frame 2 at p + (dx, dy)
    frame2 = torch.rand(1, 3, 20, 24)
    flow = torch.zeros(1, 2, 20, 24)
    flow[:, 0], flow[:, 1] = dx, dy
    frame1 = flow_warp(frame2, flow)
    ys = slice(max(0, -dy), 20 - max(0, dy))
    xs = slice(max(0, -dx), 24 - max(0, dx))
    expected = frame2[..., ys.start + dy : ys.stop + dy, xs.start + dx : xs.stop + dx]
    assert torch.allclose(frame1[..., ys, xs], expected, atol=1e-5)
    # outside the frame, zeros padding gives zeros
    if dx > 0:
        assert frame1[..., -dx:].abs().max() < 1e-6


def test_resize_flow_scales_values_per_axis():
    flow = torch.ones(1, 2, 8, 10)
    out = resize_flow(flow, (16, 40))
    assert out.shape == (1, 2, 16, 40)
    assert torch.allclose(out[:, 0], torch.full((1, 16, 40), 4.0))
    assert torch.allclose(out[:, 1], torch.full((1, 16, 40), 2.0))


def test_flow_warp_bad_shapes():
    with pytest.raises(ValueError, match="expected x"):
        flow_warp(torch.rand(1, 3, 8, 8), torch.zeros(1, 2, 8, 9))
