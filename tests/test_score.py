"""``s2svr-score``: the test stage's numbers from its saved PNGs (and from lossless video), task
conventions, temporal metrics as the library computes them, one-line errors naming the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from s2svr_lightning.flow_estimators import TVL1Flow
from s2svr_lightning.lit.evaluation import TestOutputWriter
from s2svr_lightning.lit.restorer import RestorerModule
from s2svr_lightning.score import main, metric_conventions
from s2svr_lightning.temporal import TemporalMetrics

TINY = {"channels": 8, "num_blocks": 1, "num_layers": 1}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _save(folder: Path, frames: torch.Tensor, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for frame, name in zip(frames, names):
        array = (frame.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"{name}.png")


def _uint8(folder: Path) -> np.ndarray:
    return np.stack([np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_scoring_the_saved_test_outputs_gives_the_test_stage_numbers(
    tmp_path, synthetic_datamodule, make_video, capsys
):
    torch.manual_seed(0)
    dm = synthetic_datamodule(dataset={"size": 64, "frames": 4, "test_sequences": 2})
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY, metrics={"y_channel": True, "border": 2})
    writer = TestOutputWriter(tmp_path / "test")
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[writer],
    )
    result = trainer.test(module, datamodule=dm, verbose=False)[0]
    source = dm.source("test")
    gt_root = tmp_path / "gt"
    for i in range(len(source)):
        _save(gt_root / source.key(i), source.load(i, 0, 4)["hq"], [f"{t:08d}" for t in range(4)])
    outputs = tmp_path / "test" / "outputs"
    # one predicted clip as a lossless RGB video instead of its PNG folder: matched by name all the same
    key = source.key(1)
    make_video(outputs / f"{key}.mkv", _uint8(outputs / key), codec="ffv1", pix_fmt="bgr0")
    for png in (outputs / key).glob("*.png"):
        png.unlink()
    (outputs / key).rmdir()

    args = [str(outputs), str(gt_root), "--channel", "y", "--border", "2", "--temporal", "warp"]
    assert main([*args, "--out", str(tmp_path / "scores")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert summary["psnr"] == pytest.approx(result["test/psnr"], abs=1e-5)  # logged as float32
    assert summary["ssim"] == pytest.approx(result["test/ssim"], abs=1e-6)
    assert f"{summary['psnr']:8.3f}" in printed
    stage = {(r["sequence"], r["frame"]): r for r in _rows(tmp_path / "test" / "per_frame.csv")}
    scored = _rows(tmp_path / "scores" / "per_frame.csv")
    assert len(scored) == len(stage) == 8
    for row in scored:
        theirs = stage[(row["sequence"], row["frame"])]
        assert float(row["psnr"]) == float(theirs["psnr"])  # the same accumulator on the same 8-bit frames
        assert float(row["ssim"]) == float(theirs["ssim"])
    plots = tmp_path / "scores" / "plots"
    assert sorted(p.relative_to(plots).as_posix() for p in plots.rglob("*.png")) == sorted(
        f"{source.key(i)}.png" for i in range(len(source))
    )

    # the warping error under TV-L1 flow on GT: what TemporalMetrics gives on the same frames
    expected = TemporalMetrics(y_channel=True, border=2, mode="warp", estimator=TVL1Flow())
    for i in range(len(source)):
        hq = source.load(i, 0, 4)["hq"]
        folder = outputs / source.key(i)
        out = torch.from_numpy(_uint8(folder) if folder.is_dir() else _uint8_video(outputs / f"{key}.mkv"))
        expected.update(out.permute(0, 3, 1, 2)[None].float() / 255.0, hq[None], source.key(i))
    by_frame = {(r["sequence"], int(r["frame"])): r["warp_error"] for r in scored}
    for row in expected.per_frame():
        assert float(by_frame[(row["sequence"], row["frame"])]) == pytest.approx(row["warp_error"], rel=1e-9)
    assert summary["warp_error"] == pytest.approx(expected.summary()["warp_error"], rel=1e-9)


def _uint8_video(path: Path) -> np.ndarray:
    from s2svr_lightning.data import VideoReader

    with VideoReader(path) as reader:
        return np.stack(list(reader.iter_frames()))


def test_task_conventions_come_from_the_task_config_and_options_override_them(tmp_path):
    assert metric_conventions("vsr_vimeo") == {"y_channel": True, "border": 0, "reduction": "sequence"}
    assert metric_conventions("vsr_reds4", channel="y", border=4, reduction="frame") == {
        "y_channel": True,
        "border": 4,
        "reduction": "frame",
    }
    assert metric_conventions()["y_channel"] is False
    with pytest.raises(ValueError, match="no such task config.*vsr_reds4"):
        metric_conventions("reds5")


@pytest.fixture
def clips(tmp_path):
    """GT and PRED folders of two clips of 3 frames (16x16)."""
    torch.manual_seed(0)
    for side in ("gt", "pred"):
        for clip in ("a", "b"):
            _save(tmp_path / side / clip, torch.rand(3, 3, 16, 16), ["f0", "f1", "f2"])
    return tmp_path / "pred", tmp_path / "gt"


def _error(capsys, *args) -> str:
    assert main([*map(str, args), "--temporal", "off"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("s2svr-score: error: ")
    return err


def test_mismatched_inputs_are_one_line_errors_naming_the_file(clips, capsys):
    pred, gt = clips
    assert main([str(pred), str(gt), "--temporal", "off"]) == 0
    capsys.readouterr()

    (pred / "b" / "f2.png").unlink()
    assert f"{pred / 'b'}: 2 frames, but GT {gt / 'b'} has 3" in _error(capsys, pred, gt)

    _save(pred / "b", torch.rand(1, 3, 16, 16), ["g2"])
    err = _error(capsys, pred, gt)
    assert f"{pred / 'b' / 'g2.png'}: frame 2 is named 'g2' but GT's is 'f2.png'" in err
    assert main([str(pred), str(gt), "--temporal", "off", "--match", "order"]) == 0
    capsys.readouterr()

    (pred / "b" / "g2.png").unlink()
    _save(pred / "b", torch.rand(1, 3, 16, 20), ["f2"])
    assert f"{pred / 'b' / 'f2.png'}: frame is 16x20, but GT {gt / 'b' / 'f2.png'} is 16x16" in _error(
        capsys, pred, gt
    )

    for png in (pred / "b").iterdir():
        png.unlink()
    (pred / "b").rmdir()
    assert f"{pred}: no clip named 'b' (GT has {gt / 'b'}" in _error(capsys, pred, gt)
    assert "is one clip but" in _error(capsys, pred / "a", gt)
    assert f"PRED {pred / 'nope'} does not exist" in _error(capsys, pred / "nope", gt)


def test_restore_temporal_scores_equal_s2svr_score_on_its_output(
    tmp_path, restorer_ckpt, write_frames, moving_photo
):
    from s2svr_lightning.restore import restore_video

    hq = write_frames(tmp_path / "hq", moving_photo(frames=4, height=64, width=96))
    summary = restore_video(
        restorer_ckpt, hq, tmp_path / "out", degrade=True, temporal="full", progress=False
    )
    restored = summary.metrics()
    assert len(restored["per_frame_warp_error"]) == 3 and restored["tof"] > 0
    assert main([str(tmp_path / "out"), str(hq), "--match", "order", "--out", str(tmp_path / "scores")]) == 0
    scored = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert scored["psnr"] == pytest.approx(restored["psnr"], abs=1e-9)
    assert scored["warp_error"] == pytest.approx(restored["warp_error"], rel=1e-9)
    assert scored["tof"] == pytest.approx(restored["tof"], rel=1e-6)
