"""``s2svr-restore --workers N``: time segments restored in N processes and joined into one output.

Every frame once, in order, at the source's timestamps, with the sound; with a warm-up reaching back to
frame 0 the output is one stream's, bit for bit; without one the joins differ, more than with some.
Clips: 12 or 24 frames of 16x24 LQ with a sine track (``test_restore_batch._make_video``), the tiny
restorer of ``conftest.py``; outputs lossless (FFV1) where frames are compared. Each run with workers
starts 2 processes (a few seconds each).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_restore_batch import N_FRAMES, _audio, _frame_times, _make_video

from s2svr_lightning.data.media.image_io import read_image
from s2svr_lightning.data.media.video_io import VideoReader
from s2svr_lightning.restore import main
from s2svr_lightning.restore.loop import Span
from s2svr_lightning.restore.segments import plan_segments, segment_device


@pytest.fixture(autouse=True)
def _hardware_without_bf16(monkeypatch):
    """fp32 everywhere (``--precision auto`` is resolved once, here, before the workers start)."""
    from s2svr_lightning.restore import options

    monkeypatch.setattr(options, "detect_hardware", lambda: options.Hardware())


def _restore(ckpt, *args) -> int:
    return main(["--ckpt", str(ckpt), *map(str, args), "--no-progress"])


def _frames(path) -> np.ndarray:
    reader = VideoReader(path)
    return reader.get_frames(range(len(reader)))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_plan_segments_cover_every_frame_once_with_warmup_from_frame_zero_at_most():
    spans = plan_segments(10, 3, 2)
    assert spans == [Span(0, 0, 3), Span(1, 3, 7), Span(5, 7, 10)]
    assert plan_segments(10, 3, 100) == [Span(0, 0, 3), Span(0, 3, 7), Span(0, 7, 10)]
    assert plan_segments(2, 4, 1) == [Span(0, 0, 1), Span(0, 1, 2)]  # not more segments than frames
    for total, workers in ((1, 1), (7, 2), (100, 7), (1601, 4)):
        spans = plan_segments(total, workers, 5)
        covered = [i for s in spans for i in range(s.start, s.stop)]
        assert covered == list(range(total))
    with pytest.raises(ValueError, match="workers >= 1"):
        plan_segments(10, 0, 2)
    with pytest.raises(ValueError, match="first <= start < stop"):
        Span(3, 2, 5)


@pytest.mark.parametrize(
    ("kind", "degradation", "first"),
    [
        ("vsr", {}, 5),
        ("deblur", {"blur_frames": 3}, 2),  # LQ i blurs HQ 3i .. 3i + 2
        ("deblur", {"blur_frames": 3, "blur_stride": 2}, 3),  # overlapping windows
        ("cve", {"qp": 37}, 5),  # HEVC streams of 4 frames: frame 5 is in the stream of frames 4-7
    ],
)
def test_degraded_offset_makes_a_segment_the_lq_frames_of_the_whole_video(kind, degradation, first):
    from itertools import islice

    from s2svr_lightning.restore.loop import degraded_offset
    from s2svr_lightning.task import Task

    task = Task.create(kind, degradation=degradation)
    torch.manual_seed(0)
    hq = list(torch.rand(20, 3, 16, 16))
    whole = [lq for lq, _ in task.degrade_stream(hq, chunk=4)]
    hq_skip, lq_skip = degraded_offset(task, first, 4)
    part = [lq for lq, _ in islice(task.degrade_stream(hq[hq_skip:], chunk=4), lq_skip, None)]
    assert len(part) == len(whole) - first > 0
    for a, b in zip(part, whole[first:]):
        assert torch.equal(a, b)


def test_segment_device_spreads_segments_over_cuda_devices_only_when_none_is_named():
    cuda = torch.device("cuda")
    assert [segment_device(cuda, i, 2) for i in range(3)] == [torch.device("cuda", i) for i in (0, 1, 0)]
    assert segment_device(cuda, 3, 1) == cuda
    assert segment_device(torch.device("cuda", 1), 0, 4) == torch.device("cuda", 1)
    assert segment_device(torch.device("cpu"), 1, 4) == torch.device("cpu")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "expected --workers >= 1, got 0"),
        (["--workers", "2", "--warmup-frames", "-1"], "expected --warmup-frames >= 0, got -1"),
    ],
)
def test_bad_workers_or_warmup_is_one_clear_line(tmp_path, restorer_ckpt, capsys, args, message):
    src = _make_video(tmp_path / "in.mp4", audio=None)
    assert _restore(restorer_ckpt, src, tmp_path / "out.mp4", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"s2svr-restore: error: {message}"
    assert not (tmp_path / "out.mp4").exists()


def test_argparse_refuses_a_workers_count_that_is_no_integer(restorer_ckpt, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--ckpt", str(restorer_ckpt), "in.mp4", "out.mp4", "--workers", "two"])
    assert exit_.value.code == 2
    assert "argument --workers: invalid int value: 'two'" in capsys.readouterr().err


@pytest.mark.slow
def test_two_workers_with_full_warmup_equal_one_stream_frames_timing_and_sound(tmp_path, restorer_ckpt):
    src = _make_video(tmp_path / "in.mkv")  # 12 frames: segments 0-5 and 6-11; K = 6 reaches frame 0
    one, two = tmp_path / "one.mkv", tmp_path / "two.mkv"
    assert _restore(restorer_ckpt, src, one, "--codec", "ffv1") == 0
    assert _restore(restorer_ckpt, src, two, "--codec", "ffv1", "--workers", "2", "--warmup-frames", "6") == 0
    assert len(VideoReader(two)) == N_FRAMES
    np.testing.assert_array_equal(_frames(two), _frames(one))
    assert _frame_times(two) == _frame_times(one)
    ((codec, rate, span, frame),) = _audio(two)
    assert (codec, rate, span) == _audio(one)[0][:3] and abs(span - _audio(src)[0][2]) <= frame
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no segment left behind


@pytest.mark.slow
def test_warmup_brings_segments_closer_to_one_stream_and_scores_merge_in_order(
    tmp_path, restorer_ckpt, make_video, moving_photo
):
    # 24 HQ frames of 64x96 degraded to 16x24 LQ, 2 workers: the second segment starts at frame 12
    clip = moving_photo(frames=24, height=64, width=96, step=(2, 3))
    src = make_video(tmp_path / "in.mkv", clip, pix_fmt="yuv444p", options={"qp": "0"})
    outs, scores = {}, {}
    for name, args in (("one", []), ("k0", ["--warmup-frames", "0"]), ("k4", ["--warmup-frames", "4"])):
        outs[name] = tmp_path / f"{name}.mkv"
        workers = ["--workers", "2"] if args else []
        metrics = tmp_path / f"{name}.json"
        argv = ["--degrade", "--codec", "ffv1", "--metrics-json", metrics, *workers, *args]
        assert _restore(restorer_ckpt, src, outs[name], *argv) == 0
        scores[name] = json.loads(metrics.read_text())
    one = _frames(outs["one"])
    k0, k4 = _frames(outs["k0"]), _frames(outs["k4"])
    assert len(one) == len(k0) == len(k4) == 24
    # the first segment is one stream's in every case; the second differs most at its start
    np.testing.assert_array_equal(k0[:12], one[:12])
    np.testing.assert_array_equal(k4[:12], one[:12])
    assert not np.array_equal(k0[12], one[12])
    psnr_k0, psnr_k4 = _psnr(k0[12:], one[12:]), _psnr(k4[12:], one[12:])
    # this untrained tiny net's recurrence forgets a join's missing past by about 2.7 dB a frame (K = 0:
    # 51.3 dB at the join, 58.8 over the segment; K = 4: 61.5 and 69.1, identical from frame 21 on)
    assert psnr_k4 > 65 and psnr_k4 > psnr_k0 + 5
    assert _psnr(k0[12], one[12]) < _psnr(k0[16], one[16]) < _psnr(k0[20], one[20])
    # per-frame scores arrive in frame order: the first segment's equal one stream's
    assert scores["k4"]["frames"] == 24 and len(scores["k4"]["per_frame_psnr"]) == 24
    assert scores["k4"]["per_frame_psnr"][:12] == scores["one"]["per_frame_psnr"][:12]


@pytest.mark.slow
def test_a_failing_segment_fails_the_run_with_its_error_and_leaves_nothing(
    tmp_path, restorer_ckpt, capsys, make_video, moving_photo
):
    src = _make_video(tmp_path / "in.mp4", audio=None)
    # a reference of 8 frames for 12: the second segment (frames 6-11) runs out of it
    short = make_video(tmp_path / "ref.mp4", moving_photo(frames=8, height=64, width=96))
    out = tmp_path / "out.mp4"
    assert _restore(restorer_ckpt, src, out, "--reference", short, "--workers", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    expected = f"expected the reference {short} to have as many frames as the input, got only 8"
    assert err == f"s2svr-restore: error: {expected}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "ref.mp4"]


@pytest.mark.slow
def test_frame_folder_output_is_numbered_on_across_segments(tmp_path, restorer_ckpt):
    src = _make_video(tmp_path / "in.mp4", audio=None)
    assert _restore(restorer_ckpt, src, tmp_path / "one", "--workers", "1") == 0
    assert _restore(restorer_ckpt, src, tmp_path / "two", "--workers", "2", "--warmup-frames", "6") == 0
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == [f"{i:08d}.png" for i in range(N_FRAMES)]
    for name in names:
        np.testing.assert_array_equal(
            read_image(tmp_path / "two" / name), read_image(tmp_path / "one" / name)
        )


@pytest.mark.slow
def test_a_10_bit_source_stays_10_bit_through_the_segments(tmp_path, restorer_ckpt):
    from test_restore_metadata import _ten_bit_video

    src = _ten_bit_video(tmp_path / "ten.mkv", frames=6)
    one, two = tmp_path / "one.mkv", tmp_path / "two.mkv"
    assert _restore(restorer_ckpt, src, one) == 0
    assert _restore(restorer_ckpt, src, two, "--workers", "2", "--warmup-frames", "3") == 0
    readers = VideoReader(one), VideoReader(two)
    assert [r.bit_depth for r in readers] == [10, 10]
    deep = [np.stack([f for f, _ in r.iter_timed_frames(deep=True)]) for r in readers]
    assert deep[0].dtype == np.uint16 and deep[0].shape == (6, 64, 96, 3)
    np.testing.assert_array_equal(deep[1], deep[0])  # the segments kept 16 bits until the one encode
