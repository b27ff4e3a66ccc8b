"""``s2svr-restore`` on real videos: sound, timing and colour kept; codecs; many inputs into one folder.

Sources are made with PyAV: 12 frames of 16x24 LQ (restored to 64x96 by the tiny checkpoint of
``conftest.py``) with a stereo 440 Hz sine track.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from s2svr_lightning.data.media.image_io import read_image
from s2svr_lightning.data.media.video_io import VideoReader
from s2svr_lightning.restore import main


@pytest.fixture(autouse=True)
def _hardware_without_bf16(monkeypatch):
    """``--precision auto`` picks bf16 on CPUs with bf16 units: these tests compare with fp32 streaming,
    so they run as on a CPU without them (tests of the choice itself give their own Hardware)."""
    from s2svr_lightning.restore import options

    monkeypatch.setattr(options, "detect_hardware", lambda: options.Hardware())


N_FRAMES = 12
RATE = 44100


def _frames(n: int = N_FRAMES) -> np.ndarray:
    """A photograph panned by a pixel per frame, uint8 (n, 16, 24, 3)."""
    from skimage import data

    photo = data.astronaut()[::4, ::4]
    return np.ascontiguousarray(np.stack([photo[30 + t : 46 + t, 40 + t : 64 + t] for t in range(n)]))


def _make_video(
    path: Path,
    *,
    fps: Fraction = Fraction(25),
    pts_ms: list[int] | None = None,
    audio: str | None = "aac",
    seconds: float | None = None,
    color: dict | None = None,
    frames: int = N_FRAMES,
) -> Path:
    """Write ``frames`` frames with libx264 (4:4:4, lossless) and, unless ``audio`` is None, a sine track of
    ``seconds`` (default: the video's length) in that codec. ``pts_ms``: variable-rate timestamps."""
    import av

    count = frames
    frames = _frames(count)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        video.options = {"qp": "0"}
        time_base = Fraction(1, 1000) if pts_ms is not None else 1 / fps
        video.time_base = video.codec_context.time_base = time_base
        for key, value in (color or {}).items():
            setattr(video.codec_context, key, value)
        sound = None
        if audio is not None:
            sound = out.add_stream(audio, rate=RATE)
            sound.layout = "stereo"
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv444p")
            for key, value in (color or {}).items():
                setattr(vf, key, value)
            vf.pts, vf.time_base = (pts_ms[i] if pts_ms is not None else i), time_base
            out.mux(video.encode(vf))
        out.mux(video.encode(None))
        if sound is not None:
            total = int((seconds or count / float(fps)) * RATE)
            wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / RATE)).astype(np.float32)
            step = sound.codec_context.frame_size or 1024
            for start in range(0, total, step):
                chunk = wave[start : start + step]
                af = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
                af.sample_rate, af.pts, af.time_base = RATE, start, Fraction(1, RATE)
                out.mux(sound.encode(af))
            out.mux(sound.encode(None))
    return path


def _audio(path: Path) -> list[tuple[str, int, float, float]]:
    """Per audio stream: codec, sample rate, span in seconds (first pts to last pts + duration), frame
    duration in seconds (one packet)."""
    import av

    out = []
    with av.open(str(path)) as container:
        for stream in container.streams.audio:
            packets = [p for p in container.demux(stream) if p.size]
            container.seek(0)
            tb = stream.time_base
            start = max(0, min(p.pts for p in packets))  # negative: the encoder's priming, not played
            end = max(p.pts + p.duration for p in packets)
            frame = float(packets[0].duration * tb)
            out.append(
                (
                    stream.codec_context.name,
                    stream.codec_context.sample_rate,
                    float((end - start) * tb),
                    frame,
                )
            )
    return out


def _frame_times(path: Path) -> list[float]:
    import av

    with av.open(str(path)) as container:
        return [float(f.pts * f.time_base) for f in container.decode(video=0)]


def _restore(ckpt, *args: str) -> int:
    return main(["--ckpt", str(ckpt), *map(str, args), "--no-progress"])


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_audio_copied_with_same_duration_rate_frames_and_fps(tmp_path, restorer_ckpt, suffix):
    src = _make_video(tmp_path / f"in{suffix}", fps=Fraction(30000, 1001))
    out = tmp_path / f"out{suffix}"
    assert _restore(restorer_ckpt, src, out) == 0
    ((codec, rate, span, frame),) = _audio(out)
    ((src_codec, src_rate, src_span, _),) = _audio(src)
    assert codec == src_codec == "aac" and rate == src_rate == RATE
    assert abs(span - src_span) <= frame  # within one audio frame
    reader, source = VideoReader(out), VideoReader(src)
    assert len(reader) == len(source) == N_FRAMES
    assert reader.fps == source.fps == Fraction(30000, 1001)
    assert reader.size == (64, 96)
    assert _frame_times(out) == pytest.approx(_frame_times(src), abs=1e-3)


def test_audio_the_container_refuses_is_reencoded(tmp_path, restorer_ckpt):
    # FLAC in MOV: refused by the mov muxer, so the audio becomes AAC at the same rate and length
    src = _make_video(tmp_path / "in.mkv", audio="flac")
    out = tmp_path / "out.mov"
    assert _restore(restorer_ckpt, src, out) == 0
    ((codec, rate, span, frame),) = _audio(out)
    ((_, _, src_span, _),) = _audio(src)
    assert codec == "aac" and rate == RATE
    assert abs(span - src_span) <= frame
    assert len(VideoReader(out)) == N_FRAMES


def test_no_audio_drops_the_sound(tmp_path, restorer_ckpt):
    src = _make_video(tmp_path / "in.mp4")
    out = tmp_path / "out.mp4"
    assert _restore(restorer_ckpt, src, out, "--no-audio") == 0
    assert _audio(out) == []
    assert len(VideoReader(out)) == N_FRAMES
    # and --audio-codec re-encodes a stream the container would take as it is
    assert _restore(restorer_ckpt, src, tmp_path / "flac.mkv", "--audio-codec", "flac") == 0
    ((codec, rate, span, frame),) = _audio(tmp_path / "flac.mkv")
    assert codec == "flac" and rate == RATE and abs(span - _audio(src)[0][2]) <= frame


def test_max_frames_cuts_the_audio_with_the_video(tmp_path, restorer_ckpt):
    src = _make_video(tmp_path / "in.mkv", seconds=2.0)
    out = tmp_path / "out.mkv"
    assert _restore(restorer_ckpt, src, out, "--max-frames", "5") == 0
    ((_, _, span, frame),) = _audio(out)
    assert len(VideoReader(out)) == 5
    assert abs(span - 5 / 25) <= 2 * frame  # whole packets up to the end of frame 5, not 2 s


def test_variable_frame_rate_keeps_each_frame_time(tmp_path, restorer_ckpt):
    pts_ms = [0, 40, 80, 200, 240, 280, 500, 540, 580, 620, 660, 700]
    src = _make_video(tmp_path / "in.mp4", pts_ms=pts_ms)
    out = tmp_path / "out.mp4"
    assert _restore(restorer_ckpt, src, out) == 0
    assert _frame_times(src) == pytest.approx([t / 1000 for t in pts_ms], abs=1e-6)
    assert _frame_times(out) == pytest.approx([t / 1000 for t in pts_ms], abs=1e-6)


def test_colour_description_is_kept(tmp_path, restorer_ckpt):
    # BT.709 matrix, primaries and transfer, limited range (the codes FFmpeg and H.264's VUI use)
    bt709 = {"colorspace": 1, "color_primaries": 1, "color_trc": 1, "color_range": 1}
    src = _make_video(tmp_path / "in.mp4", color=bt709, audio=None)
    out = tmp_path / "out.mp4"
    assert _restore(restorer_ckpt, src, out) == 0
    source, restored = VideoReader(src).color, VideoReader(out).color
    assert (source.colorspace, source.color_primaries, source.color_trc, source.color_range) == (1, 1, 1, 1)
    assert restored == source
    # and the YUV numbers were made with the BT.709 matrix they are tagged with: decoding them as the tag
    # says gives the restored RGB frames back, up to 8-bit YUV rounding (about 52 dB here in 4:4:4 at
    # crf 0; BT.601 numbers under a BT.709 tag give 38 dB)
    lossless = tmp_path / "lossless.mp4"
    assert _restore(restorer_ckpt, src, lossless, "--crf", "0", "--pix-fmt", "yuv444p") == 0
    assert _restore(restorer_ckpt, src, tmp_path / "frames") == 0
    assert _psnr_vs_frames(lossless, tmp_path / "frames", y_channel=False) > 48.0


def test_ffv1_is_lossless_and_png_frames_on_request(tmp_path, restorer_ckpt):
    src = _make_video(tmp_path / "in.mp4", audio=None)
    assert _restore(restorer_ckpt, src, tmp_path / "out.mkv", "--codec", "ffv1") == 0
    assert _restore(restorer_ckpt, src, tmp_path / "frames") == 0
    reader = VideoReader(tmp_path / "out.mkv")
    assert reader.codec == "ffv1" and len(reader) == N_FRAMES
    png = np.stack([read_image(f) for f in sorted((tmp_path / "frames").iterdir())])
    np.testing.assert_array_equal(np.stack(list(reader.iter_frames())), png)


def _psnr_vs_frames(video: Path, folder: Path, *, y_channel: bool = True) -> float:
    """The lowest per-frame Y PSNR of a video's frames against a folder of PNG frames."""
    from s2svr_lightning.metrics import psnr
    from s2svr_lightning.utils import to_float_frames

    got = np.stack(list(VideoReader(video).iter_frames()))
    want = np.stack([read_image(f) for f in sorted(folder.iterdir())])
    as_float = lambda a: to_float_frames(a, channels_last=True)  # noqa: E731
    return float(psnr(as_float(got), as_float(want), y_channel=y_channel).min())


def test_default_is_visually_lossless_h264_420(tmp_path, restorer_ckpt):
    import av

    src = _make_video(tmp_path / "in.mp4", audio=None)
    assert _restore(restorer_ckpt, src, tmp_path / "out.mp4") == 0
    assert _restore(restorer_ckpt, src, tmp_path / "frames") == 0
    with av.open(str(tmp_path / "out.mp4")) as c:
        ctx = c.streams.video[0].codec_context
        assert (ctx.name, ctx.pix_fmt) == ("h264", "yuv420p")
    assert _psnr_vs_frames(tmp_path / "out.mp4", tmp_path / "frames") > 38.0


def test_folder_of_videos_goes_on_past_a_corrupt_one_then_skips_and_overwrites(
    tmp_path, restorer_ckpt, capsys
):
    vids = tmp_path / "vids"
    vids.mkdir()
    _make_video(vids / "a.mp4")
    _make_video(vids / "c.ts", audio="libmp3lame")
    (vids / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    out = tmp_path / "out"
    assert _restore(restorer_ckpt, vids, "-o", out) == 1
    captured = capsys.readouterr()
    assert "1 of 3 inputs failed" in captured.err and str(vids / "b.mp4") in captured.err
    assert "Traceback" not in captured.err
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:4]}
    assert f" {N_FRAMES} " in rows[str(vids / "a.mp4")] and rows[str(vids / "a.mp4")].rstrip().endswith(
        "done"
    )
    assert "failed: " in rows[str(vids / "b.mp4")]
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "c.mkv"]  # .ts becomes .mkv
    assert len(VideoReader(out / "c.mkv")) == N_FRAMES and _audio(out / "c.mkv")[0][0].startswith("mp3")

    # a second run skips what is done (the corrupt one fails again); the files are not touched
    before = {p.name: p.stat().st_ino for p in out.iterdir()}
    (vids / "b.mp4").unlink()
    assert _restore(restorer_ckpt, vids, out) == 0  # VIDEOS OUTDIR: the folder form of a batch
    captured = capsys.readouterr()
    assert captured.out.count("skipped") >= 2 and "0 restored, 2 skipped" in captured.out
    assert {p.name: p.stat().st_ino for p in out.iterdir()} == before

    # --overwrite redoes them (new files moved into place)
    assert _restore(restorer_ckpt, vids, "-o", out, "--overwrite") == 0
    assert "2 restored, 0 skipped" in capsys.readouterr().out
    after = {p.name: p.stat().st_ino for p in out.iterdir()}
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in after)
    assert not [p for p in out.iterdir() if "partial" in p.name]


def test_several_inputs_with_reference_scores_each(tmp_path, restorer_ckpt, write_frames, capsys):
    import json

    lq = _frames(4)
    hq = np.repeat(np.repeat(lq, 4, axis=1), 4, axis=2)  # a nearest-neighbour "HQ"
    clip = write_frames(tmp_path / "lq" / "clip", lq)
    write_frames(tmp_path / "hq" / "clip", hq)
    single = tmp_path / "single.json"
    assert (
        _restore(
            restorer_ckpt,
            clip,
            tmp_path / "one",
            "--reference",
            tmp_path / "hq" / "clip",
            "--metrics-json",
            single,
        )
        == 0
    )
    capsys.readouterr()
    report = tmp_path / "batch.json"
    args = [clip, tmp_path / "missing.mp4", "-o", tmp_path / "out", "--reference", tmp_path / "hq"]
    assert _restore(restorer_ckpt, *args, "--metrics-json", report) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["file", "frames", "fps", "seconds", "PSNR", "status"]
    scores = json.loads(report.read_text())
    want = json.loads(single.read_text())["psnr"]
    assert scores[str(clip)]["psnr"] == pytest.approx(want, abs=1e-9)
    assert f"{want:.2f}" in out
    assert scores[str(tmp_path / "missing.mp4")]["status"] == "failed"
    assert len(VideoReader(tmp_path / "out" / "clip.mp4")) == 4  # a frame folder becomes <name>.mp4
    # --format png: a frame folder per input, the same frames as the single form's
    assert _restore(restorer_ckpt, clip, "-o", tmp_path / "png", "--format", "png") == 0
    assert sorted(p.name for p in (tmp_path / "png" / "clip").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def test_batch_refuses_a_bad_form_clearly(tmp_path, restorer_ckpt, capsys):
    src = _make_video(tmp_path / "in.mp4", audio=None)
    assert _restore(restorer_ckpt, src, src, tmp_path / "x.mp4") == 2
    assert "add -o OUTDIR" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert _restore(restorer_ckpt, src, "-o", tmp_path / "file") == 2
    assert "expected -o/--output-dir a folder" in capsys.readouterr().err
    # restoring a folder into itself would replace each input with its output: refused, input kept
    size = src.stat().st_size
    assert _restore(restorer_ckpt, src, "-o", tmp_path) == 1
    assert "its output would replace it" in capsys.readouterr().out
    assert src.stat().st_size == size
