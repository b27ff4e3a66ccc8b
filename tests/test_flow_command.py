"""``s2svr-flow``: the colour-coded flow of a video or two images, with its key, by TV-L1 or a checkpoint."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from s2svr_lightning.flow import colour_key, main, read_flo, render_flow, write_flo
from s2svr_lightning.flow_viz import flow_to_color

H, W = 96, 128


def _hue(rgb) -> float:
    """Hue in degrees of an RGB colour in [0, 255]."""
    r, g, b = (float(v) / 255 for v in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360


def _hue_gap(a: float, b: float) -> float:
    return min(abs(a - b), 360 - abs(a - b))


def _centre(image: np.ndarray) -> np.ndarray:
    """The middle of a flow image, far from the key (bottom right) and the borders."""
    h, w = image.shape[:2]
    return image[h // 3 : 2 * h // 3, w // 4 : w // 2].reshape(-1, 3)


def _expected_hue(u: float, v: float) -> float:
    flow = torch.zeros(2, 8, 8)
    flow[0], flow[1] = u, v
    colour = flow_to_color(flow, max_norm=abs(u) + abs(v), to_uint8=True)[:, 4, 4]
    return _hue(colour.numpy())


def _save(path, frame):
    Image.fromarray(frame).save(path)
    return path


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_a_pan_gives_the_colour_of_a_uniform_flow(tmp_path, moving_photo):
    # the camera pans 3 px right per frame: the content moves 3 px left (flow -3, 0: cyan)
    frames = moving_photo(frames=2, height=H, width=W, step=(0, 3))
    a, b = _save(tmp_path / "a.png", frames[0]), _save(tmp_path / "b.png", frames[1])
    assert main(["--pair", str(a), str(b), "-o", str(tmp_path / "flow.png")]) == 0
    image = _read(tmp_path / "flow.png")
    assert image.shape == (H, W, 3)
    median = np.median(_centre(image), axis=0)
    assert _hue_gap(_hue(median), _expected_hue(-3.0, 0.0)) < 12
    assert _hue_gap(_hue(median), _expected_hue(3.0, 0.0)) > 90  # not the opposite direction
    assert median.min() < 100  # saturated: the scale is the pan's own magnitude


def test_a_video_gives_one_image_per_pair_with_a_key_and_raw_flows(
    tmp_path, moving_photo, make_video, capsys
):
    frames = moving_photo(frames=5, height=H, width=W, step=(0, 3))
    video = make_video(tmp_path / "pan.mp4", frames)
    out, flo = tmp_path / "flows", tmp_path / "raw"
    assert main([str(video), "-o", str(out), "--flo", str(flo)]) == 0
    assert "99th percentile of the video" in capsys.readouterr().out
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:08d}.png" for i in range(4)]
    image = _read(pngs[0])
    key = colour_key(max(16, round(min(H, W) / 4)), 3.0)
    corner = image[H - key.shape[0] - 2 : H - 2, W - key.shape[1] - 2 : W - 2].reshape(-1, 3)
    centre = np.median(_centre(image), axis=0)
    # the key: many colours (the wheel) and the dark box, unlike the flow's near-uniform cyan
    assert np.abs(corner.astype(float) - centre).sum(1).mean() > 100
    assert len({tuple(c) for c in corner // 32}) > 10
    raw = sorted(flo.glob("*.flo"))
    assert len(raw) == 4
    flow = read_flo(raw[0])
    assert flow.shape == (2, H, W)
    assert flow[0, H // 4 : -H // 4, W // 4 : -W // 4].median() == pytest.approx(-3.0, abs=0.5)
    assert not list(tmp_path.glob(".*partial*"))  # atomic: nothing left behind


def test_video_output_side_by_side_and_a_fixed_scale(tmp_path, moving_photo, make_video, capsys):
    from s2svr_lightning.data.media.video_io import VideoReader

    video = make_video(tmp_path / "pan.mp4", moving_photo(frames=4, height=H, width=W, step=(0, 3)))
    out = tmp_path / "flow.mp4"
    assert main([str(video), "-o", str(out), "--side-by-side", "--max-flow", "12"]) == 0
    assert "12 px at full saturation (--max-flow)" in capsys.readouterr().out
    with VideoReader(out) as reader:
        assert len(reader) == 3
        first = next(iter(reader.iter_frames()))
    assert first.shape == (H, 2 * W, 3)
    # a 3 px flow on a 12 px scale: pale (near white), the frame at the left untouched in size
    assert np.median(_centre(first[:, W:]), axis=0).min() > 140


def test_the_scale_per_frame_and_on_the_whole_video(tmp_path, write_frames, moving_photo, capsys):
    slow = moving_photo(frames=2, height=H, width=W, step=(0, 1))
    fast = moving_photo(frames=2, height=H, width=W, step=(0, 4))
    folder = write_frames(tmp_path / "clip", np.stack([slow[0], slow[1], fast[0], fast[1]]))
    assert main([str(folder), "-o", str(tmp_path / "frame"), "--max-flow", "frame"]) == 0
    assert "each image's own" in capsys.readouterr().out
    assert main([str(folder), "-o", str(tmp_path / "video")]) == 0
    per_frame = _read(tmp_path / "frame" / "0000.png")
    per_video = _read(tmp_path / "video" / "0000.png")
    # the slow pair on the video's scale (set by the fast pair) is paler than on its own
    assert np.median(_centre(per_video), axis=0).min() > np.median(_centre(per_frame), axis=0).min() + 40


def test_render_and_flo_round_trip(tmp_path):
    flow = torch.randn(2, 20, 30)
    write_flo(tmp_path / "f.flo", flow)
    raw = (tmp_path / "f.flo").read_bytes()
    assert raw[:4] == b"PIEH" and np.frombuffer(raw[:4], "<f4")[0] == 202021.25
    assert np.frombuffer(raw[4:12], "<i4").tolist() == [30, 20]
    assert torch.equal(read_flo(tmp_path / "f.flo"), flow)
    image = render_flow(flow, 2.0, frame=torch.rand(3, 20, 30), even=True)
    assert image.shape == (20, 60, 3) and image.dtype == np.uint8
    assert render_flow(torch.zeros(2, 21, 31), 1.0, key=False, even=True).shape == (22, 32, 3)


def _student_ckpt(path) -> str:
    from s2svr_lightning.lit import StudentFlowModule

    torch.manual_seed(0)
    student = StudentFlowModule(w_dis=0.0, init_from_teacher=False, scale=4)
    checkpoint = {"state_dict": student.state_dict(), "hyper_parameters": dict(student.hparams)}
    student.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return str(path)


def test_a_student_checkpoint_end_to_end_through_its_rule(tmp_path, moving_photo, write_frames, capsys):
    ckpt = _student_ckpt(tmp_path / "student.ckpt")
    lq = moving_photo(frames=3, height=24, width=32, step=(0, 1))
    folder = write_frames(tmp_path / "lq", lq)
    out = tmp_path / "flow"
    assert main([str(folder), "-o", str(out), "--flow", ckpt, "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert "reading the frames as its LQ frames, flow-input rule x4 (HQ size)" in said
    images = sorted(out.glob("*.png"))
    assert len(images) == 2 and _read(images[0]).shape == (24, 32, 3)  # the flow on the frames' grid
    assert main([str(folder), "-o", str(tmp_path / "n"), "--flow", ckpt, "--native", "--no-key"]) == 0
    assert "native size (--native)" in capsys.readouterr().out


def test_a_restorer_checkpoint_end_to_end(tmp_path, restorer_ckpt, moving_photo, capsys):
    frames = moving_photo(frames=2, height=24, width=32, step=(0, 1))
    a, b = _save(tmp_path / "a.png", frames[0]), _save(tmp_path / "b.png", frames[1])
    args = ["--pair", str(a), str(b), "-o", str(tmp_path / "f.png"), "--flow", str(restorer_ckpt)]
    assert main(args) == 0
    assert "LQ frames" in capsys.readouterr().out
    assert _read(tmp_path / "f.png").shape == (24, 32, 3)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2svr-flow: error: ") and err.count("\n") == 1, err
    return err


def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path, moving_photo, capsys):
    frames = moving_photo(frames=2, height=H, width=W, step=(0, 3))
    a, b = _save(tmp_path / "a.png", frames[0]), _save(tmp_path / "b.png", frames[1])
    small = _save(tmp_path / "small.png", frames[1][:64, :64])
    out = str(tmp_path / "f.png")
    assert str(tmp_path / "missing.mp4") in _error(
        capsys, [str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o")]
    )
    assert "missing.png" in _error(capsys, ["--pair", str(a), str(tmp_path / "missing.png"), "-o", out])
    assert "small.png: image is 64x64" in _error(capsys, ["--pair", str(a), str(small), "-o", out])
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert str(bad) in _error(capsys, ["--pair", str(a), str(b), "-o", out, "--flow", str(bad)])
    assert "no.ckpt" in _error(
        capsys, ["--pair", str(a), str(b), "-o", out, "--flow", str(tmp_path / "no.ckpt")]
    )
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    assert str(broken) in _error(capsys, [str(broken), "-o", str(tmp_path / "o")])
    assert "a.png is one image" in _error(capsys, [str(a), "-o", str(tmp_path / "o")])
    assert "--max-flow" in _error(capsys, ["--pair", str(a), str(b), "-o", out, "--max-flow", "-1"])
    assert main(["--pair", str(a), str(b), "-o", out]) == 0
    capsys.readouterr()
    assert "--overwrite" in _error(capsys, ["--pair", str(a), str(b), "-o", out])
    assert main(["--pair", str(a), str(b), "-o", out, "--overwrite"]) == 0
