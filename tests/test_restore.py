"""The ``restore`` command: round trips, fps, scores, bad input, interruption, the ``--export`` option.

A tiny untrained VSR restorer (8 channels, one residual block) is saved as a real restorer checkpoint;
frames are 16x24 LQ (64x96 output) so every run takes well under a second per frame.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from s2svr_lightning.data.media.image_io import read_image
from s2svr_lightning.data.media.video_io import VideoReader
from s2svr_lightning.metrics import psnr, quantize_8bit, ssim
from s2svr_lightning.restore import main, restore_video
from s2svr_lightning.restore.stream import StreamingRestorer


@pytest.fixture(autouse=True)
def _hardware_without_bf16(monkeypatch):
    """``--precision auto`` picks bf16 on CPUs with bf16 units: these tests compare with fp32 streaming,
    so they run as on a CPU without them (tests of the choice itself give their own Hardware)."""
    from s2svr_lightning.restore import options

    monkeypatch.setattr(options, "detect_hardware", lambda: options.Hardware())


def _hq_frames(n: int = 5) -> np.ndarray:
    """A real photograph panned by a few pixels per frame, uint8 (n, 64, 96, 3)."""
    from skimage import data

    photo = data.astronaut()
    return np.stack([photo[100 + 3 * t : 164 + 3 * t, 140 + 2 * t : 236 + 2 * t] for t in range(n)])


def _lq_frames(n: int = 5) -> np.ndarray:
    """Every 4th pixel of the HQ frames: uint8 (n, 16, 24, 3) LQ frames with real content."""
    return np.ascontiguousarray(_hq_frames(n)[:, ::4, ::4])


def _expected(restorer_net, frames: np.ndarray) -> np.ndarray:
    """What streaming gives on these uint8 frames, rounded to uint8 (H, W, 3) as the writers round."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    out = torch.stack(list(StreamingRestorer(restorer_net).restore(x)))
    return out.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_frame_folder_round_trip_equals_streaming_and_whole_sequence(
    tmp_path, restorer_ckpt, restorer_net, write_frames
):
    lq = _lq_frames(5)
    src = write_frames(tmp_path / "lq", lq)
    assert main(["--ckpt", str(restorer_ckpt), str(src), str(tmp_path / "out"), "--no-progress"]) == 0
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == [f"{i:08d}.png" for i in range(5)]
    got = np.stack([read_image(f) for f in files])
    assert got.shape == (5, 64, 96, 3)
    np.testing.assert_array_equal(got, _expected(restorer_net, lq))
    # and the stream equals one whole-sequence pass (up to the 8-bit rounding of a boundary value)
    with torch.inference_mode():
        whole = restorer_net(torch.from_numpy(lq).permute(0, 3, 1, 2).float().div(255).unsqueeze(0))[0]
    whole = whole.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(got.astype(int) - whole.astype(int)).max() <= 1
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_mp4_round_trip_keeps_exact_fps(tmp_path, restorer_ckpt, restorer_net, make_video):
    fps = Fraction(30000, 1001)
    lq = _lq_frames(6)
    src = make_video(
        tmp_path / "in.mp4", lq, fps=fps, codec="libx264", pix_fmt="yuv444p", options={"qp": "0"}
    )
    out = tmp_path / "out.mkv"
    assert main(["--ckpt", str(restorer_ckpt), str(src), str(out), "--no-progress", "--crf", "0"]) == 0
    reader = VideoReader(out)
    assert reader.fps == fps
    assert len(reader) == 6 and reader.size == (64, 96)
    # the content is the restoration of the decoded input: crf 0 keeps the luma (4:2:0 halves the chroma)
    decoded = np.stack(list(VideoReader(src).iter_frames()))
    want = torch.from_numpy(_expected(restorer_net, decoded)).permute(0, 3, 1, 2).float() / 255
    got = torch.from_numpy(np.stack(list(reader.iter_frames()))).permute(0, 3, 1, 2).float() / 255
    assert psnr(got, want, y_channel=True).min() > 40.0


def test_folder_to_video_uses_given_fps(tmp_path, restorer_ckpt, write_frames):
    src = write_frames(tmp_path / "lq", _lq_frames(3))
    out = tmp_path / "out.mp4"
    assert main(["--ckpt", str(restorer_ckpt), str(src), str(out), "--fps", "12", "--no-progress"]) == 0
    reader = VideoReader(out)
    assert reader.fps == 12 and len(reader) == 3


def test_reference_scores_match_the_metrics_module(tmp_path, restorer_ckpt, restorer_net, write_frames):
    lq, hq = _lq_frames(4), _hq_frames(4)
    src = write_frames(tmp_path / "lq", lq)
    ref = write_frames(tmp_path / "hq", hq)
    report = tmp_path / "m.json"
    args = ["--ckpt", str(restorer_ckpt), str(src), str(tmp_path / "out"), "--reference", str(ref)]
    assert main([*args, "--metrics-json", str(report), "--no-progress"]) == 0
    m = json.loads(report.read_text())
    assert {"psnr", "ssim", "baseline_psnr", "baseline_ssim", "frames", "fps"} <= set(m)
    assert m["frames"] == 4 and m["fps"] > 0
    out = torch.from_numpy(_expected(restorer_net, lq)).permute(0, 3, 1, 2).float() / 255
    target = torch.from_numpy(hq).permute(0, 3, 1, 2).float() / 255
    assert m["psnr"] == pytest.approx(float(psnr(out, target).mean()), abs=1e-6)
    assert m["ssim"] == pytest.approx(float(ssim(out, target).mean()), abs=1e-6)
    lq_t = torch.from_numpy(lq).permute(0, 3, 1, 2).float() / 255
    bicubic = torch.nn.functional.interpolate(lq_t, scale_factor=4, mode="bicubic", align_corners=False)
    assert m["baseline_psnr"] == pytest.approx(float(psnr(bicubic.clamp(0, 1), target).mean()), abs=1e-6)
    assert m["baseline_psnr"] != pytest.approx(m["psnr"], abs=1e-3)


def test_degrade_makes_lq_from_the_hq_input_and_scores_against_it(
    tmp_path, restorer_ckpt, restorer_net, write_frames
):
    from s2svr_lightning.data.degradations import degrade

    hq = _hq_frames(4)
    src = write_frames(tmp_path / "hq", hq)
    report = tmp_path / "m.json"
    args = [
        "--ckpt",
        str(restorer_ckpt),
        str(src),
        str(tmp_path / "out"),
        "--degrade",
        "--metrics-json",
        str(report),
    ]
    assert main([*args, "--no-progress"]) == 0
    m = json.loads(report.read_text())
    target = torch.from_numpy(hq).permute(0, 3, 1, 2).float() / 255
    lq = quantize_8bit(degrade("vsr", target, scale=4))
    restored = torch.stack(list(StreamingRestorer(restorer_net).restore(lq)))
    assert m["frames"] == 4
    assert m["psnr"] == pytest.approx(float(psnr(restored, target).mean()), abs=1e-6)
    bicubic = torch.nn.functional.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False).clamp(
        0, 1
    )
    assert m["baseline_psnr"] == pytest.approx(float(psnr(bicubic, target).mean()), abs=1e-6)


def test_max_frames(tmp_path, restorer_ckpt, write_frames):
    src = write_frames(tmp_path / "lq", _lq_frames(5))
    assert (
        main(
            [
                "--ckpt",
                str(restorer_ckpt),
                str(src),
                str(tmp_path / "out"),
                "--max-frames",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "out").iterdir())) == 2


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_input", "does not exist"),
        ("corrupt_video", "corrupt"),
        ("flow_checkpoint", "teacher optical-flow checkpoint"),
        ("corrupt_checkpoint", "cannot read checkpoint"),
        ("output_exists", "already exists; pass --overwrite"),
        ("bad_output_suffix", "expected OUTPUT a video file"),
    ],
)
def test_bad_input_fails_with_a_clear_message(
    tmp_path, restorer_ckpt, capsys, case, message, write_frames, save_checkpoint
):
    from s2svr_lightning.lit import TeacherFlowModule

    src = write_frames(tmp_path / "lq", _lq_frames(2))
    out = tmp_path / "out.mp4"
    use_ckpt = restorer_ckpt
    if case == "missing_input":
        src = tmp_path / "nope.mp4"
    elif case == "corrupt_video":
        src = tmp_path / "broken.mp4"
        src.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    elif case == "flow_checkpoint":
        use_ckpt = save_checkpoint(TeacherFlowModule(), tmp_path / "teacher.ckpt")
    elif case == "corrupt_checkpoint":
        use_ckpt = tmp_path / "bad.ckpt"
        use_ckpt.write_bytes(Path(restorer_ckpt).read_bytes()[:5000])
    elif case == "output_exists":
        out.write_bytes(b"precious")
    elif case == "bad_output_suffix":
        out = tmp_path / "out.txt"
    code = main(["--ckpt", str(use_ckpt), str(src), str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    if case == "output_exists":
        assert out.read_bytes() == b"precious"
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_overwrite_replaces_an_existing_output(tmp_path, restorer_ckpt, write_frames):
    src = write_frames(tmp_path / "lq", _lq_frames(2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    assert main(["--ckpt", str(restorer_ckpt), str(src), str(out), "--overwrite", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000000.png", "00000001.png"]


def test_interrupted_run_leaves_no_output(tmp_path, restorer_ckpt, monkeypatch, capsys, write_frames):
    src = write_frames(tmp_path / "lq", _lq_frames(5))
    out = tmp_path / "out"
    calls = []
    original = StreamingRestorer.push

    def push(self, frame):
        calls.append(1)
        if len(calls) == 4:
            # by now two frames were written into the temporary folder
            (partial,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
            assert len(list(partial.iterdir())) == 2
            raise KeyboardInterrupt
        return original(self, frame)

    monkeypatch.setattr(StreamingRestorer, "push", push)
    assert main(["--ckpt", str(restorer_ckpt), str(src), str(out), "--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lq"]


def test_sigterm_from_outside_removes_the_partial_output(tmp_path, restorer_ckpt, write_frames):
    """A real process, stopped by a signal while it writes: no file at OUTPUT, no partial left."""
    src = write_frames(tmp_path / "lq", np.repeat(_lq_frames(2), 100, axis=0))
    out = tmp_path / "out.mp4"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "s2svr_lightning.restore",
        "--ckpt",
        str(restorer_ckpt),
        str(src),
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]:
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "restore never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lq"]


def test_restore_video_api_returns_a_summary(tmp_path, restorer_ckpt, write_frames):
    src = write_frames(tmp_path / "lq", _lq_frames(3))
    summary = restore_video(restorer_ckpt, src, tmp_path / "out", progress=False)
    assert summary.frames == 3 and summary.seconds > 0 and summary.metrics()["psnr"] is None


def test_tiled_restore_stays_close_to_untiled(tmp_path, restorer_ckpt, write_frames):
    src = write_frames(tmp_path / "lq", _lq_frames(3))
    assert main(["--ckpt", str(restorer_ckpt), str(src), str(tmp_path / "whole"), "--no-progress"]) == 0
    args = [
        "--ckpt",
        str(restorer_ckpt),
        str(src),
        str(tmp_path / "tiled"),
        "--tile",
        "16",
        "--tile-overlap",
        "4",
    ]
    assert main([*args, "--no-progress"]) == 0
    whole = np.stack([read_image(f) for f in sorted((tmp_path / "whole").iterdir())])
    tiled = np.stack([read_image(f) for f in sorted((tmp_path / "tiled").iterdir())])
    assert tiled.shape == whole.shape == (3, 64, 96, 3)
    as_float = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    assert psnr(as_float(tiled), as_float(whole)).min() > 35.0


def test_compile_flag_restores_the_same_frames(
    tmp_path, restorer_ckpt, restorer_net, write_frames, monkeypatch
):
    from torch._dynamo.utils import counters

    real = torch.compile
    # aot_eager: the graphs inductor would compile, run with eager kernels (inductor takes minutes here)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": "aot_eager"}))
    torch._dynamo.reset()
    counters.clear()
    lq = _lq_frames(4)
    src = write_frames(tmp_path / "lq", lq)
    argv = ["--ckpt", str(restorer_ckpt), str(src), str(tmp_path / "out"), "--no-progress", "--compile"]
    assert main(argv) == 0
    assert counters["stats"]["unique_graphs"] >= 1  # the streaming steps ran compiled
    got = np.stack([read_image(f) for f in sorted((tmp_path / "out").iterdir())])
    assert np.abs(got.astype(int) - _expected(restorer_net, lq).astype(int)).max() <= 1


def test_compile_flag_falls_back_to_eager_with_one_line(
    tmp_path, restorer_ckpt, restorer_net, write_frames, monkeypatch, capsys
):
    def unavailable(*args, **kwargs):
        raise RuntimeError("Windows not yet supported for torch.compile")

    monkeypatch.setattr(torch, "compile", unavailable)
    lq = _lq_frames(3)
    src = write_frames(tmp_path / "lq", lq)
    argv = ["--ckpt", str(restorer_ckpt), str(src), str(tmp_path / "out"), "--no-progress", "--compile"]
    assert main(argv) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "torch.compile" in line]
    assert err == [
        "s2svr-lightning: torch.compile is not available here (RuntimeError: Windows not yet supported for "
        "torch.compile); running eagerly"
    ]
    got = np.stack([read_image(f) for f in sorted((tmp_path / "out").iterdir())])
    np.testing.assert_array_equal(got, _expected(restorer_net, lq))
