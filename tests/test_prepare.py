"""``python -m s2svr_lightning.prepare``: tiny trees in the real layouts are prepared into what the loaders
read, a second run does nothing, and ``--check`` lists every problem of a tree in one pass."""

from __future__ import annotations

import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from s2svr_lightning.color import rgb_to_yuv420
from s2svr_lightning.data import VideoRestorationDataModule, bicubic_downsample, hevc_compress
from s2svr_lightning.prepare import main


def _frames(moving_photo, n, h, w, step) -> torch.Tensor:
    return torch.from_numpy(moving_photo(frames=n, height=h, width=w, step=step)).permute(0, 3, 1, 2) / 255.0


def _save(folder: Path, frames: torch.Tensor, names) -> None:
    folder.mkdir(parents=True)
    u8 = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for name, frame in zip(names, u8):
        Image.fromarray(frame).save(folder / f"{name}.png")


def _mtimes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()
    }


# -- mfqe --------------------------------------------------------------------------------------------
def _yuv_tree(root: Path, moving_photo) -> dict[str, torch.Tensor]:
    """Two raw 128x128 videos of 5 frames, one per split, as 8-bit 4:2:0 ``<Name>_<W>x<H>_<N>.yuv`` (128 px:
    the size x265 gets without padding, so the encode can be compared with ``hevc_compress``'s)."""
    truth = {}
    for split, step in (("train_108", (1, 2)), ("test_18", (2, 1))):
        rgb = _frames(moving_photo, 5, 128, 128, step)
        y, u, v = rgb_to_yuv420(rgb)
        path = root / split / "raw" / f"Clip{step[0]}_128x128_5.yuv"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"".join(p[i].tobytes() for i in range(5) for p in (y, u, v)))
        truth[split] = rgb
    return truth


def test_prepare_mfqe_writes_qp37_ldp_encodes_the_loader_reads_and_is_idempotent(
    tmp_path, moving_photo, capsys
):
    root = tmp_path / "MFQEv2"
    truth = _yuv_tree(root, moving_photo)
    assert main(["mfqe", str(root)]) == 0
    qp37 = root / "test_18" / "HM16.5_LDP" / "QP37"
    assert sorted(p.name for p in qp37.iterdir()) == ["Clip2_128x128_5.yuv", "ENCODER.txt", "hevc"]
    note = (qp37 / "ENCODER.txt").read_text()
    assert "libx265" in note and "NOT HM16.5" in note and "qp=37" in note and "bframes=0" in note

    dm = VideoRestorationDataModule(dataset={"name": "mfqe", "root": str(root)}, task="cve", num_frames=3)
    dm.setup("test")
    clip = dm.test_dataset()[0]
    # the streamed encode of the memory-mapped YUV is exactly the library's HEVC QP37 degradation of the
    # frames the YUV file was made from
    assert torch.equal(clip["lq"], hevc_compress(truth["test_18"], 37))
    mse = ((clip["lq"] - clip["hq"]) ** 2).mean().item()
    assert 25.0 < -10 * np.log10(mse) < 45.0  # a real QP37 loss, not a copy

    # the bitstream decodes to the stored frames, one I frame then P frames only
    with av.open(str(qp37 / "hevc" / "Clip2_128x128_5.hevc")) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert [p.is_keyframe for p in packets] == [True, False, False, False, False]
    decoder = av.CodecContext.create("hevc", "r")
    planes = [f.to_ndarray(format="yuv420p") for p in [*packets, None] for f in decoder.decode(p)]
    stored = np.fromfile(qp37 / "Clip2_128x128_5.yuv", dtype=np.uint8).reshape(5, -1)
    assert len(planes) == 5 and all(np.array_equal(pl.reshape(-1), stored[i]) for i, pl in enumerate(planes))

    # a second run does nothing; a deleted encode is redone alone; nothing temporary is left
    before = _mtimes(root)
    capsys.readouterr()
    assert main(["mfqe", str(root)]) == 0
    assert "nothing to do, all 2 videos" in capsys.readouterr().err
    assert _mtimes(root) == before
    (qp37 / "Clip2_128x128_5.yuv").unlink()
    assert main(["mfqe", str(root)]) == 0
    after = _mtimes(root)
    assert after.keys() == before.keys() and not [p for p in after if ".tmp" in p]
    assert {k for k in after if after[k] != before[k]} == {
        "test_18/HM16.5_LDP/QP37/Clip2_128x128_5.yuv",
        "test_18/HM16.5_LDP/QP37/hevc/Clip2_128x128_5.hevc",
    }
    assert main(["--check", "mfqe", str(root)]) == 0
    capsys.readouterr()
    assert main(["mfqe", str(root), "--preset", "ultrafast"]) == 1  # would mix two encoders' outputs
    assert "holds encodes made with other settings (x265 settings: preset=medium" in capsys.readouterr().err


# -- reds ----------------------------------------------------------------------------------------------
def _reds_download(root: Path, moving_photo) -> None:
    """REDS as downloaded: train_sharp (+ X4) with the REDS4 clips and one more, val_sharp with two clips."""
    for i, (split, clip) in enumerate(
        [("train", c) for c in ("000", "001", "011", "015", "020")] + [("val", "000"), ("val", "001")]
    ):
        hq = _frames(moving_photo, 3, 32, 32, (1 + i % 3, 1 + i // 3))
        names = [f"{t:08d}" for t in range(3)]
        _save(root / f"{split}_sharp" / clip, hq, names)
        _save(root / f"{split}_sharp_bicubic" / "X4" / clip, bicubic_downsample(hq, 4), names)


def _reds_dm(root: Path) -> VideoRestorationDataModule:
    return VideoRestorationDataModule(dataset={"name": "reds", "root": str(root)}, task="vsr", num_frames=2)


def test_prepare_reds_regroups_the_validation_clips_as_240_on(tmp_path, moving_photo, capsys):
    root = tmp_path / "REDS"
    _reds_download(root, moving_photo)
    val_frame = (root / "val_sharp" / "001" / "00000002.png").read_bytes()
    with pytest.warns(UserWarning, match=r"training uses 1 clips .*s2svr_lightning.prepare reds"):
        _reds_dm(root).source("train")  # as downloaded: said, not silent

    assert main(["reds", str(root)]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["train_sharp", "train_sharp_bicubic"]
    clips = ["000", "001", "011", "015", "020", "240", "241"]
    assert sorted(p.name for p in (root / "train_sharp").iterdir()) == clips
    assert sorted(p.name for p in (root / "train_sharp_bicubic" / "X4").iterdir()) == clips
    assert (root / "train_sharp" / "241" / "00000002.png").read_bytes() == val_frame
    dm = _reds_dm(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # regrouped: no warning
        train = dm.source("train")
    assert [train.key(i) for i in range(len(train))] == ["reds/001", "reds/240", "reds/241"]
    test = dm.source("test")
    assert [test.key(i) for i in range(len(test))] == ["reds/000", "reds/011", "reds/015", "reds/020"]

    before = _mtimes(root)
    capsys.readouterr()
    assert main(["reds", str(root)]) == 0
    assert "already regrouped: nothing to do" in capsys.readouterr().err
    assert _mtimes(root) == before
    assert main(["--check", "reds", str(root)]) == 0


def test_prepare_reds_refuses_a_clip_that_is_already_there(tmp_path, moving_photo):
    root = tmp_path / "REDS"
    _reds_download(root, moving_photo)
    (root / "train_sharp" / "240").mkdir()
    assert main(["reds", str(root)]) == 1
    assert (root / "val_sharp" / "000").is_dir()  # nothing moved


def test_check_reports_a_truncated_png_and_a_missing_frame_in_one_pass(tmp_path, moving_photo, capsys):
    root = tmp_path / "REDS"
    _reds_download(root, moving_photo)
    assert main(["reds", str(root)]) == 0
    truncated = root / "train_sharp" / "011" / "00000001.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    missing = root / "train_sharp_bicubic" / "X4" / "240" / "00000001.png"
    missing.unlink()
    (root / "train_sharp_bicubic" / "X4" / "241" / "00000000.png").write_bytes(
        (root / "train_sharp" / "241" / "00000000.png").read_bytes()  # a frame of the wrong size
    )
    capsys.readouterr()
    assert main(["--check", "reds", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"{truncated}: truncated PNG" in out
    assert f"{missing}: missing LQ frame (its HQ partner" in out
    assert "X4/241/00000000.png: LQ frame is 32x32, expected 8x8" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    # REDS4 (test): 4 clips, 24 files, 1 problem; train: 3 clips, 17 files (one missing), 2 problems
    assert lines["REDS4"][2:] == ["4", "sequences", "24", "files", "1", "problems"]
    assert lines["train"][1:] == ["3", "sequences", "17", "files", "2", "problems"]
    assert "3 problem(s) found" in out


# -- vimeo ---------------------------------------------------------------------------------------------
def _vimeo_tree(root: Path, moving_photo) -> None:
    entries = ["00001/0001", "00001/0002", "00002/0001"]
    for i, entry in enumerate(entries):
        _save(
            root / "sequences" / entry,
            _frames(moving_photo, 7, 32, 48, (1, i + 1)),
            [f"im{k}" for k in range(1, 8)],
        )
    (root / "sep_trainlist.txt").write_text("00001/0001\n00002/0001\n")
    (root / "sep_testlist.txt").write_text("00001/0002\n")


def test_prepare_vimeo_validates_the_lists_and_makes_bicubic_lq(tmp_path, moving_photo, capsys):
    root = tmp_path / "vimeo_septuplet"
    _vimeo_tree(root, moving_photo)
    assert main(["vimeo", str(root), "--make-lq"]) == 0
    lq = root / "BIx4"
    assert Image.open(lq / "00001" / "0002" / "im4.png").size == (12, 8)
    on_the_fly = VideoRestorationDataModule(dataset={"name": "vimeo", "root": str(root)}, task="vsr")
    stored = VideoRestorationDataModule(
        dataset={"name": "vimeo", "root": str(root), "lq_root": str(lq)}, task="vsr"
    )
    a, b = on_the_fly.source("test").load(0, 0, 7), stored.source("test").load(0, 0, 7)
    assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["hq"], b["hq"])  # the same BIx4

    before = _mtimes(root)
    capsys.readouterr()
    assert main(["vimeo", str(root), "--make-lq"]) == 0
    assert "nothing to do, the BIx4 frames of all 3 septuplets" in capsys.readouterr().err
    assert _mtimes(root) == before
    assert main(["--check", "vimeo", str(root)]) == 0

    (root / "sep_testlist.txt").unlink()
    assert main(["vimeo", str(root)]) == 1
    assert "sep_testlist.txt: test list not found" in capsys.readouterr().err


# -- gopro ---------------------------------------------------------------------------------------------
def test_prepare_gopro_checks_names_and_sizes(tmp_path, moving_photo, capsys):
    base = tmp_path / "GOPRO_Large"
    for split in ("train", "test"):
        sharp = _frames(moving_photo, 3, 16, 16, (1, 1))
        names = [f"{4001 + t:06d}" for t in range(3)]
        for folder in ("sharp", "blur", "blur_gamma"):
            _save(base / split / "GOPR0001_11_00" / folder, sharp, names)
    assert main(["gopro", str(tmp_path)]) == 0
    (base / "test" / "GOPR0001_11_00" / "blur" / "004002.png").unlink()
    capsys.readouterr()
    assert main(["gopro", str(tmp_path)]) == 1
    assert "blur/004002.png: missing LQ frame" in capsys.readouterr().out


def test_an_interrupted_mfqe_encode_leaves_nothing_partial_and_resumes(tmp_path, moving_photo, monkeypatch):
    import s2svr_lightning.data.prepare.mfqe as mfqe

    root = tmp_path / "MFQEv2"
    _yuv_tree(root, moving_photo)
    real = mfqe.hevc_ldp_yuv420

    def interrupted(*args, **kwargs):
        for i, planes in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the first video
            yield planes

    monkeypatch.setattr(mfqe, "hevc_ldp_yuv420", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["mfqe", str(root)])
    written = [p.relative_to(root) for p in root.rglob("*") if p.is_file() and "HM16.5_LDP" in str(p)]
    assert sorted(p.name for p in written) == ["ENCODER.txt", "ENCODER.txt"]  # no partial or temporary file
    monkeypatch.setattr(mfqe, "hevc_ldp_yuv420", real)
    assert main(["mfqe", str(root)]) == 0
    assert main(["--check", "mfqe", str(root)]) == 0
