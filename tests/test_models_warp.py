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


def test_flow_warp_keeps_the_memory_layout():
    x = torch.rand(2, 5, 13, 17)
    flow = torch.randn(2, 2, 13, 17) * 3
    expected = flow_warp(x, flow)
    out = flow_warp(x.contiguous(memory_format=torch.channels_last), flow)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert torch.allclose(out, expected, atol=1e-6)
    assert flow_warp(x, flow).is_contiguous()


@pytest.mark.parametrize("autocast", [False, True])
def test_bfloat16_input_is_sampled_at_float32_coordinates(autocast):
    # a wide frame: in bfloat16 the normalised x coordinate near the right edge is off by ~1 px
    x = torch.rand(1, 4, 8, 320)
    flow = torch.zeros(1, 2, 8, 320)
    flow[:, 0] = -0.37
    expected = flow_warp(x.bfloat16().float(), flow)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = flow_warp(x.bfloat16(), flow)
    assert out.dtype == torch.bfloat16  # the input's dtype, also under autocast
    # only the output's rounding to bfloat16 remains (values in [0, 1]: < 2^-8)
    assert (out.float() - expected).abs().max() < 4e-3
