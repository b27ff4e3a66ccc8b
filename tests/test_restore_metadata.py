"""What a source video carries besides its pixels survives a restore: the display matrix (a phone
video's rotation), the sample aspect ratio, and the language and title tags."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from s2svr_lightning.data.media.video_io import read_metadata
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
