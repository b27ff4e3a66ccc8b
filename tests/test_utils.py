"""Shape guard, 8-bit frame conversion and OmegaConf to plain data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from s2svr_lightning.metrics import quantize_8bit
from s2svr_lightning.utils import expect_shape, to_float_frames, to_plain, to_uint8_frames


def test_expect_shape_checks_dims_and_fixed_sizes_with_the_house_message():
    x = torch.zeros(2, 5, 3, 8, 8)
    assert expect_shape(x, "(B, T, 3, H, W)", "lq") is x
    assert expect_shape(x, "(..., 3, H, W)", "lq") is x
    with pytest.raises(ValueError, match=r"^expected lq of shape \(B, T, 3, H, W\), got \(2, 5, 8, 8\)$"):
        expect_shape(torch.zeros(2, 5, 8, 8), "(B, T, 3, H, W)", "lq")
    with pytest.raises(ValueError, match=r"got \(2, 5, 4, 8, 8\)"):
        expect_shape(torch.zeros(2, 5, 4, 8, 8), "(B, T, 3, H, W)", "lq")
    with pytest.raises(ValueError, match=r"expected flow of shape \(B, 2, H, W\), got ndarray"):
        expect_shape(np.zeros((1, 2, 4, 4)), "(B, 2, H, W)", "flow")


def test_frame_conversion_round_trips_8_bit_frames_and_rounds_as_the_metrics():
    u8 = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)
    x = to_float_frames(u8.numpy(), channels_last=True)
    assert x.shape == (2, 3, 5, 6) and x.dtype == torch.float32
    assert torch.equal(to_uint8_frames(x, channels_last=True), u8)
    noisy = torch.rand(2, 3, 5, 6) * 1.2 - 0.1
    assert torch.equal(to_uint8_frames(noisy).float() / 255, quantize_8bit(noisy))
    assert to_uint8_frames(torch.full((3, 2, 2), float("nan"))).max() == 0
    with pytest.raises(ValueError, match="expected uint8 or float frames"):
        to_float_frames(torch.zeros(3, 4, 4, dtype=torch.int32))


def test_to_plain_turns_configs_and_tuples_into_dicts_and_lists():
    cfg = OmegaConf.create({"a": {"b": [1, 2]}, "c": "${a.b}"})
    assert to_plain(cfg) == {"a": {"b": [1, 2]}, "c": [1, 2]}
    assert to_plain({"x": (1, (2, 3)), 4: cfg.a}) == {"x": [1, [2, 3]], "4": {"b": [1, 2]}}
    assert type(to_plain({"x": (1,)})["x"]) is list
