"""The Middlebury colour coding of flow fields."""

from __future__ import annotations

import pytest
import torch

from s2svr_lightning.flow_viz import flow_to_color, make_colorwheel


def _flow(u: float, v: float) -> torch.Tensor:
    return torch.tensor([u, v]).view(1, 2, 1, 1)


def test_colorwheel_has_the_55_standard_colours():
    wheel = make_colorwheel()
    assert wheel.shape == (55, 3)
    # segment starts: red, yellow, green, cyan, blue, magenta (RY 15, YG 6, GC 4, CB 11, BM 13, MR 6)
    starts = {
        0: (255, 0, 0),
        15: (255, 255, 0),
        21: (0, 255, 0),
        25: (0, 255, 255),
        36: (0, 0, 255),
        49: (255, 0, 255),
    }
    for index, rgb in starts.items():
        assert tuple(wheel[index].tolist()) == rgb
    assert tuple(wheel[14].tolist()) == (255, 238, 0)  # floor(255 * 14 / 15)


def test_directions_have_the_standard_hues():
    def rgb(u, v):
        return tuple(flow_to_color(_flow(u, v), max_norm=1.0, to_uint8=True)[0, :, 0, 0].tolist())

    assert rgb(0.0, 0.0) == (255, 255, 255)  # no motion: white
    assert rgb(1.0, 0.0) == (255, 0, 0)  # right: red
    assert rgb(-1.0, 0.0) == (0, 209, 255)  # left: cyan-blue
    r, g, b = rgb(0.0, 1.0)  # down: yellow-orange
    assert r == 255 and 150 < g < 255 and b == 0
    r, g, b = rgb(0.0, -1.0)  # up: blue-violet
    assert b == 255 and r < 128 and g == 0


def test_magnitude_sets_saturation_and_overflow_is_darkened():
    half = flow_to_color(_flow(-0.5, 0.0), max_norm=1.0)[0, :, 0, 0]
    full = flow_to_color(_flow(-1.0, 0.0), max_norm=1.0)[0, :, 0, 0]
    over = flow_to_color(_flow(-2.0, 0.0), max_norm=1.0)[0, :, 0, 0]
    assert torch.allclose(half, 1 - 0.5 * (1 - full))
    assert torch.allclose(over, 0.75 * full)
    # max_norm=None scales each image by its own largest vector
    batch = torch.stack(
        [torch.tensor([[[-1.0, -0.5]], [[0.0, 0.0]]]), torch.tensor([[[-10.0, -5.0]], [[0.0, 0.0]]])]
    )
    auto = flow_to_color(batch)
    assert auto.shape == (2, 3, 1, 2) and auto.dtype == torch.float32
    assert torch.allclose(auto[0], auto[1]) and torch.allclose(auto[0, :, 0, 0], full)


def test_shapes_dtypes_nonfinite_and_errors():
    flow = torch.randn(2, 5, 7)
    image = flow_to_color(flow, to_uint8=True)
    assert image.shape == (3, 5, 7) and image.dtype == torch.uint8
    flow[0, 0, 0] = float("nan")
    image = flow_to_color(flow)
    assert torch.equal(image[:, 0, 0], torch.zeros(3)) and torch.isfinite(image).all()
    per_image = flow_to_color(torch.randn(3, 2, 4, 4), max_norm=torch.tensor([1.0, 2.0, 3.0]))
    assert per_image.shape == (3, 3, 4, 4)
    with pytest.raises(ValueError, match="expected flow"):
        flow_to_color(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="expected max_norm"):
        flow_to_color(torch.zeros(2, 2, 4, 4), max_norm=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="floating-point"):
        flow_to_color(torch.zeros(2, 4, 4, dtype=torch.long))
