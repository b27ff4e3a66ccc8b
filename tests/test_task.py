"""The Task: one definition of vsr / deblur / cve, its degradation (whole clip and streaming), baseline."""

from __future__ import annotations

import pytest
import torch

from s2svr_lightning.data.degradations import degrade
from s2svr_lightning.metrics import psnr, quantize_8bit
from s2svr_lightning.task import TASK_KINDS, Task, default_scale
from s2svr_lightning.utils import to_float_frames


def test_kinds_scales_and_storage_round_trip():
    assert TASK_KINDS == ("vsr", "deblur", "cve")
    assert [default_scale(k) for k in TASK_KINDS] == [4, 1, 1]
    task = Task.create("cve", degradation={"name": "hevc", "qp": 32}, metrics={"y_channel": True})
    assert task.degradation == {"qp": 32} and task.scale == 1 and task.y_channel
    assert Task.from_dict(task.to_dict()) == task
    assert Task(kind="vsr", degradation={"scale": 4}).degradation_kwargs == {"scale": 4}
    with pytest.raises(ValueError, match="expected scale 4 for the vsr task, got 2"):
        Task(kind="vsr", scale=2)
    with pytest.raises(ValueError, match=r"among \['qp'\], got \['blur_frames'\]"):
        Task(kind="cve", degradation={"blur_frames": 7})
    with pytest.raises(ValueError, match="expected a task kind"):
        Task(kind="denoise")


def test_frame_span_and_degraded_length_follow_the_blur_window():
    task = Task(kind="deblur", degradation={"blur_frames": 5, "blur_stride": 2})
    assert task.frame_span == (5, 2)
    assert [task.degraded_length(n) for n in (4, 5, 6, 7, 11)] == [0, 1, 1, 2, 4]
    assert task.degraded_length(11) == task.degrade(torch.rand(11, 3, 8, 8)).shape[0]
    assert Task(kind="deblur").frame_span == (7, 7)  # degrade's defaults
    assert Task(kind="vsr").frame_span == (1, 1) and Task(kind="vsr").degraded_length(9) == 9
    assert Task(kind="cve", degradation={"qp": 32}).degraded_length(9) == 9  # one LQ frame per frame


def test_baseline_is_bicubic_for_vsr_and_the_input_otherwise():
    lq = torch.rand(2, 3, 3, 8, 8)
    up = Task(kind="vsr").baseline(lq)
    want = torch.nn.functional.interpolate(lq.flatten(0, 1), scale_factor=4, mode="bicubic").clamp(0, 1)
    assert torch.allclose(up, want.view(2, 3, 3, 32, 32))
    assert Task(kind="deblur").baseline(lq) is lq


@pytest.mark.parametrize("k, stride", [(3, None), (3, 2), (2, 4)])
def test_degraded_stream_equals_degrading_the_whole_clip_for_deblurring(k, stride):
    hq = torch.rand(11, 3, 8, 8)
    task = Task(kind="deblur", scale=1, degradation={"blur_frames": k, "blur_stride": stride})
    pairs = list(task.degrade_stream(iter(hq)))
    lq, target = degrade("deblur", hq, blur_frames=k, blur_stride=stride, return_target=True)
    assert len(pairs) == lq.shape[0] > 0
    assert torch.allclose(torch.stack([p[0] for p in pairs]), quantize_8bit(lq))
    assert torch.equal(torch.stack([p[1] for p in pairs]), target)


def test_degraded_stream_compresses_in_chunks_for_compressed_video(moving_photo):
    hq = to_float_frames(moving_photo(5, 32, 32), channels_last=True)
    task = Task(kind="cve", scale=1, degradation={"qp": 37})
    whole = quantize_8bit(degrade("cve", hq, qp=37))
    streamed = torch.stack([lq for lq, _ in task.degrade_stream(iter(hq), chunk=8)])
    assert torch.equal(streamed, whole)  # one chunk: the same HEVC stream
    chunked = torch.stack([lq for lq, _ in task.degrade_stream(iter(hq), chunk=2)])
    assert chunked.shape == whole.shape and torch.equal(chunked[:2], whole[:2])
    assert psnr(chunked, hq).mean() < 45  # really compressed
