"""What a source video carries besides its pixels survives a restore: the display matrix (a phone
video's rotation), the sample aspect ratio, the language and title tags; and a 10-bit source stays
10-bit."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from s2svr_lightning.data.media.metadata import read_metadata
from s2svr_lightning.restore import main


def _phone_video(path, frames: int = 3):
    """A 24x16 (portrait, stored sideways) H.264 mp4 with a 90 degree display matrix, SAR 4:3 and tags."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 24, 16, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(4, 3)
        stream.metadata["language"] = "fra"
        stream.metadata["handler_name"] = "Plage"
        container.metadata["title"] = "Vacances"
        stream.set_display_rotation(90)
        rng = np.random.default_rng(0)
        for _ in range(frames):
            image = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_rotation_aspect_ratio_and_tags_are_kept(tmp_path, restorer_ckpt, monkeypatch):
    from s2svr_lightning.restore import options

    monkeypatch.setattr(options, "detect_hardware", lambda: options.Hardware())
    source = _phone_video(tmp_path / "phone.mp4")
    before = read_metadata(source)
    assert before.display_matrix is not None and before.sample_aspect_ratio == Fraction(4, 3)
    out = tmp_path / "restored.mp4"
    assert main(["--ckpt", str(restorer_ckpt), str(source), str(out), "--no-progress"]) == 0
    after = read_metadata(out)
    assert after.display_matrix == before.display_matrix
    assert after.sample_aspect_ratio == Fraction(4, 3)  # x4 in both directions: the pixels keep their shape
    assert dict(after.stream_tags)["language"] == "fra"
    assert dict(after.stream_tags)["handler_name"] == "Plage"
    assert dict(after.container_tags)["title"] == "Vacances"
    import av

    with av.open(str(out)) as container:
        frame = next(container.decode(video=0))
        assert (frame.height, frame.width, frame.rotation) == (64, 96, 90)


def test_a_plain_video_gets_no_invented_metadata(tmp_path, make_video):
    source = make_video(tmp_path / "plain.mp4", np.zeros((2, 16, 24, 3), np.uint8))
    meta = read_metadata(source)
    assert meta.display_matrix is None and meta.sample_aspect_ratio is None
    assert "title" not in dict(meta.container_tags)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_each_rotation_is_read_and_written_back(tmp_path, rotation):
    import av

    path = tmp_path / f"r{rotation}.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        stream.set_display_rotation(rotation)
        container.mux(
            stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24"))
        )
        container.mux(stream.encode(None))
    from s2svr_lightning.data.media.video_writer import VideoWriter

    copy = tmp_path / f"c{rotation}.mp4"
    meta = read_metadata(path)
    assert meta.display_matrix is not None
    with VideoWriter(copy, 25, metadata=meta) as writer:
        writer.write(np.zeros((16, 16, 3), np.uint8))
    with av.open(str(copy)) as container:
        assert (next(container.decode(video=0)).rotation - rotation) % 360 == 0  # 270 reads as -90


# ---------------------------------------------------------------------------------------------- 10 bits
def _ten_bit_video(path, frames: int = 3, *, h: int = 16, w: int = 24):
    """A lossless 10-bit 4:4:4 H.264 video of smooth gradients (levels 1/1023 apart), tagged BT.709."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p10le"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        ctx = stream.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = 1, 1, 1, 1
        ramp = np.linspace(0.2, 0.8, h * w * 3).reshape(h, w, 3)
        for t in range(frames):
            image = np.round((ramp + 0.01 * t) * 65535).astype(np.uint16)
            frame = av.VideoFrame.from_ndarray(image, format="rgb48le").reformat(
                format="yuv444p10le", dst_colorspace=1
            )
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _off_8bit_grid(x: torch.Tensor) -> float:
    """How far values sit from the nearest 8-bit level, in 8-bit steps (0 for 8-bit data)."""
    return float((x * 255 - (x * 255).round()).abs().max())


def test_a_10_bit_source_is_decoded_restored_and_written_at_10_bits(tmp_path, restorer_ckpt, monkeypatch):
    import av

    from s2svr_lightning.data.media.frames import open_source
    from s2svr_lightning.data.media.video_io import VideoReader
    from s2svr_lightning.restore import options

    monkeypatch.setattr(options, "detect_hardware", lambda: options.Hardware())
    source = _ten_bit_video(tmp_path / "ten.mkv")
    frames = list(open_source(source).frames)
    assert _off_8bit_grid(frames[0]) > 0.2  # decoded at 16 bits: the 10-bit levels between 8-bit ones
    out = tmp_path / "restored.mkv"
    assert main(["--ckpt", str(restorer_ckpt), str(source), str(out), "--no-progress"]) == 0
    with av.open(str(out)) as container:
        ctx = container.streams.video[0].codec_context
        assert ctx.pix_fmt == "yuv420p10le"
        assert (ctx.colorspace, ctx.color_primaries, ctx.color_trc) == (1, 1, 1)
    reader = VideoReader(out)
    assert reader.bit_depth == 10
    restored = [
        torch.from_numpy(f.astype(np.float32) / 65535) for f, _ in reader.iter_timed_frames(deep=True)
    ]
    assert len(restored) == 3 and restored[0].shape == (64, 96, 3)
    assert _off_8bit_grid(torch.stack(restored)) > 0.2


def test_float_frames_round_trip_at_10_bits_closer_than_8_bits_can(tmp_path):
    from s2svr_lightning.data.media.frames import open_source
    from s2svr_lightning.data.media.video_writer import VideoWriter

    # a smooth ramp, where 8-bit banding shows (on noise, swscale's RGB -> 10-bit YUV path is no closer)
    frames = torch.linspace(0.2, 0.8, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    path = tmp_path / "f.mkv"
    with VideoWriter(path, 25, pix_fmt="yuv444p10le", crf=0, options={"preset": "ultrafast"}) as writer:
        for frame in frames:
            writer.write(frame)
    back = torch.stack(list(open_source(path).frames))
    error = (back - frames).abs().mean().item()
    eight_bit = (frames * 255).round().div(255).sub(frames).abs().mean().item()  # rounding to 8 bits alone
    assert error < eight_bit / 2


def test_16_bit_png_frames_stay_16_bits(tmp_path, restorer_ckpt, monkeypatch):
    from PIL import Image

    from s2svr_lightning.data.media.frames import open_source
    from s2svr_lightning.data.media.image_io import png_bit_depth, read_image16, write_png16
    from s2svr_lightning.restore import options

    monkeypatch.setattr(options, "detect_hardware", lambda: options.Hardware())
    ramp = np.linspace(0.2, 0.8, 16 * 24 * 3).reshape(16, 24, 3)
    src = tmp_path / "lq"
    src.mkdir()
    for t in range(3):
        write_png16(src / f"{t:04d}.png", np.round((ramp + 0.01 * t) * 65535).astype(np.uint16))
    assert png_bit_depth(src / "0000.png") == 16 and Image.open(src / "0000.png").size == (24, 16)
    frames = list(open_source(src).frames)
    assert _off_8bit_grid(frames[0]) > 0.2
    assert torch.allclose(frames[0], torch.from_numpy(ramp).permute(2, 0, 1).float(), atol=1e-5)
    out = tmp_path / "out"
    assert main(["--ckpt", str(restorer_ckpt), str(src), str(out), "--no-progress"]) == 0
    files = sorted(out.iterdir())
    assert len(files) == 3 and all(png_bit_depth(f) == 16 for f in files)
    restored = read_image16(files[0])
    assert restored.shape == (64, 96, 3) and _off_8bit_grid(torch.from_numpy(restored / 65535.0)) > 0.2
