"""Evaluation outputs: saved test frames re-score to the reported PSNR, CSVs, frame names, predict_step."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from s2svr_lightning.data import VideoRestorationDataModule
from s2svr_lightning.data.datasets.clips import EvalSequenceDataset
from s2svr_lightning.lit.evaluation import TestOutputWriter
from s2svr_lightning.lit.restorer import RestorerModule
from s2svr_lightning.metrics import PSNR_MAX, VideoMetrics, psnr, ssim

TINY = {"channels": 8, "num_blocks": 1, "num_layers": 1}


_QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}


def _trainer(devices: int = 1, **kw) -> L.Trainer:
    strategy = "ddp_spawn" if devices > 1 else "auto"
    return L.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, enable_model_summary=False, **_QUIET, **kw
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _read_png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1).double() / 255.0


def test_saved_frames_rescore_to_the_reported_psnr_once_per_frame_despite_overlapping_chunks(
    tmp_path, synthetic_datamodule
):
    torch.manual_seed(0)
    # 2 sequences of 6 frames in chunks of 4 overlapping by 2: frames 2-3 are in two chunks each
    dm = synthetic_datamodule(dataset={"size": 64, "frames": 6}, test_chunk=4, test_overlap=2)
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY)
    writer = TestOutputWriter(tmp_path / "test")
    result = _trainer(callbacks=[writer]).test(module, datamodule=dm, verbose=False)[0]

    source = dm.source("test")
    pngs = sorted((tmp_path / "test" / "outputs").rglob("*.png"))
    # synthetic frames have no names: 8-digit indices, one file per scored frame, each written once
    assert [p.relative_to(tmp_path / "test" / "outputs").as_posix() for p in pngs] == [
        f"{source.key(i)}/{t:08d}.png" for i in range(len(source)) for t in range(6)
    ]
    assert not list((tmp_path / "test").rglob("*.tmp"))

    frame_rows = _rows(tmp_path / "test" / "per_frame.csv")
    assert len(frame_rows) == 12
    assert list(frame_rows[0]) == [
        "sequence",
        "frame",
        "name",
        "psnr",
        "ssim",
        "baseline_psnr",
        "baseline_ssim",
        "warp_error",  # the synthetic test data has exact flow: test.temporal=auto scores it
    ]
    assert [r["warp_error"] == "" for r in frame_rows] == [int(r["frame"]) == 0 for r in frame_rows]
    rescored: dict[str, list[float]] = {}
    for row in frame_rows:
        index, t = [source.key(i) for i in range(len(source))].index(row["sequence"]), int(row["frame"])
        hq = source.load(index, t, t + 1)["hq"][0]
        out = _read_png(writer.image_path(row["sequence"], row["name"]))
        value = float(psnr(out, hq)[0])
        assert value == pytest.approx(float(row["psnr"]), abs=1e-9)  # lossless 8-bit, same rounding
        assert float(ssim(out, hq)[0]) == pytest.approx(float(row["ssim"]), abs=1e-9)
        rescored.setdefault(row["sequence"], []).append(value)

    seq_rows = _rows(tmp_path / "test" / "per_sequence.csv")
    assert [r["sequence"] for r in seq_rows] == sorted(rescored)
    for row in seq_rows:
        assert int(row["frames"]) == 6
        assert float(row["psnr"]) == pytest.approx(np.mean(rescored[row["sequence"]]), abs=1e-9)
        assert float(row["psnr"]) == pytest.approx(
            module.test_per_sequence[row["sequence"]]["psnr"], abs=1e-9
        )
    # the headline number (mean over sequences) from the PNGs; logged as float32
    headline = np.mean([np.mean(v) for v in rescored.values()])
    assert result["test/psnr"] == pytest.approx(headline, abs=1e-5)
    assert result["test/num_frames"] == 12


def test_save_images_false_writes_only_the_csvs(tmp_path, synthetic_datamodule):
    dm = synthetic_datamodule(dataset={"size": 64, "frames": 3, "test_sequences": 1})
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY)
    _trainer(callbacks=[TestOutputWriter(tmp_path, save_images=False)]).test(
        module, datamodule=dm, verbose=False
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_frame.csv", "per_sequence.csv"]
    assert [r["frame"] for r in _rows(tmp_path / "per_frame.csv")] == ["0", "1", "2"]


def _vimeo_tree(root: Path, moving_photo, entries=("00001/0001", "00001/0002")) -> Path:
    for i, entry in enumerate(entries):
        folder = root / "sequences" / entry
        folder.mkdir(parents=True)
        for t, frame in enumerate(moving_photo(frames=7, height=64, width=64, step=(1 + i, 1))):
            Image.fromarray(frame).save(folder / f"im{t + 1}.png")
    (root / "sep_testlist.txt").write_text("\n".join(entries) + "\n")
    (root / "sep_trainlist.txt").write_text("\n".join(entries) + "\n")
    return root


def test_vimeo_outputs_keep_the_dataset_frame_names_and_only_the_scored_centre_frame(tmp_path, moving_photo):
    root = _vimeo_tree(tmp_path / "vimeo", moving_photo)
    dm = VideoRestorationDataModule(dataset={"name": "vimeo", "root": str(root)}, task="vsr", num_frames=3)
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY)
    writer = TestOutputWriter(tmp_path / "test")
    _trainer(callbacks=[writer]).test(module, datamodule=dm, verbose=False)
    pngs = sorted(p.relative_to(writer.images_dir).as_posix() for p in writer.images_dir.rglob("*.png"))
    assert pngs == ["vimeo/00001/0001/im4.png", "vimeo/00001/0002/im4.png"]
    rows = _rows(tmp_path / "test" / "per_frame.csv")
    assert [(r["sequence"], r["frame"], r["name"]) for r in rows] == [
        ("vimeo/00001/0001", "3", "im4"),
        ("vimeo/00001/0002", "3", "im4"),
    ]


def test_frame_names_of_paired_degraded_and_synthetic_sources(tmp_path, moving_photo, synthetic_datamodule):
    # a frame folder whose numbering starts at 47 (as GoPro's does), deblurred 3 frames at a time
    folder = tmp_path / "clips" / "walk"
    folder.mkdir(parents=True)
    for t, frame in enumerate(moving_photo(frames=7, height=16, width=16)):
        Image.fromarray(frame).save(folder / f"{47 + t:06d}.png")
    dm = VideoRestorationDataModule(
        dataset={"name": "video_folder", "root": str(tmp_path / "clips")},
        task="deblur",
        degradation={"blur_frames": 3},
        num_frames=2,
    )
    with pytest.warns(UserWarning, match="no held-out footage"):
        source = dm.source("test")
    # the sharp target of blurred frame i is stored frame 3 i + 1 (the middle of its window)
    assert source.frame_names(0) == ["000048", "000051"]
    assert EvalSequenceDataset(source, chunk=1)[1]["frame_names"] == ["000051"]

    vsr = VideoRestorationDataModule(
        dataset={"name": "video_folder", "root": str(tmp_path / "clips")}, task="vsr", num_frames=2
    )
    with pytest.warns(UserWarning):
        assert vsr.source("test").frame_names(0) == [f"{47 + t:06d}" for t in range(7)]

    vimeo = _vimeo_tree(tmp_path / "vimeo", moving_photo, entries=("00002/0001",))
    lq = tmp_path / "vimeo_lq" / "00002" / "0001"  # stored x4 LQ (the task's scale)
    lq.mkdir(parents=True)
    for png in (vimeo / "sequences" / "00002" / "0001").glob("*.png"):
        Image.open(png).resize((16, 16), Image.BICUBIC).save(lq / png.name)
    paired = VideoRestorationDataModule(
        dataset={"name": "vimeo", "root": str(vimeo), "lq_root": str(tmp_path / "vimeo_lq")},
        task="vsr",
        num_frames=3,
    ).source("test")
    assert paired.frame_names(0) == [f"im{t}" for t in range(1, 8)]

    synthetic = synthetic_datamodule(dataset={"size": 64, "frames": 3}).source("test")
    assert synthetic.frame_names(0) is None
    assert "frame_names" not in EvalSequenceDataset(synthetic)[0]


def test_writer_refuses_a_test_step_without_outputs_and_keys_that_escape(tmp_path):
    writer = TestOutputWriter(tmp_path)
    with pytest.raises(ValueError, match="expected test_step to return a dict with 'output' and 'key'"):
        writer.on_test_batch_end(None, None, None, {}, 0)
    with pytest.raises(ValueError, match="without '.' or '..' parts"):
        writer.image_path("../elsewhere", "00000000")
    with pytest.raises(ValueError, match="VideoMetrics test_metrics"):
        writer.on_test_start(None, L.LightningModule())


def test_per_frame_keeps_the_first_score_of_a_frame_and_sorts_rows():
    metrics = VideoMetrics()
    g = torch.Generator().manual_seed(0)
    hq = torch.rand(1, 3, 3, 16, 16, generator=g)
    noisy = (hq + 0.05 * torch.randn(1, 3, 3, 16, 16, generator=g)).clamp(0, 1)
    metrics.update(noisy[:, 1:], hq[:, 1:], "b", frame_index=torch.tensor([1, 2]))
    metrics.update(noisy, hq, "b", frame_index=torch.tensor([0, 1, 2]))  # frames 1, 2 again
    metrics.update(hq[:, :1], hq[:, :1], "a", frame_index=torch.tensor([5]))
    rows = metrics.per_frame()
    assert [(r["sequence"], r["frame"]) for r in rows] == [("a", 5), ("b", 0), ("b", 1), ("b", 2)]
    assert rows[0]["psnr"] == PSNR_MAX  # identical frames: the documented cap, not inf
    expected = psnr(noisy[0], hq[0])
    assert [r["psnr"] for r in rows[1:]] == pytest.approx(expected.tolist(), abs=1e-12)
    assert "baseline_psnr" not in rows[0]
    assert np.mean([r["psnr"] for r in rows[1:]]) == pytest.approx(metrics.per_sequence()["b"]["psnr"])


def test_predict_returns_the_restored_frames_of_the_eval_batches(synthetic_datamodule):
    torch.manual_seed(0)
    dm = synthetic_datamodule(dataset={"size": 64, "frames": 4}, test_chunk=3, test_overlap=1)
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY)
    predictions = _trainer().predict(module, datamodule=dm)
    dataset = dm.test_dataset()
    assert len(predictions) == len(dataset) == 4  # 2 sequences x 2 chunks
    module.eval()
    for pred, item in zip(predictions, (dataset[i] for i in range(len(dataset)))):
        assert pred["key"] == [item["key"]]
        assert torch.equal(pred["frames"][0], item["frames"])
        assert torch.equal(pred["score"][0], item["score"])
        with torch.no_grad():
            expected = module(item["lq"][None]).clamp(0, 1)
        assert pred["output"].shape == (1, 3, 3, 64, 64)
        torch.testing.assert_close(pred["output"], expected)
    # a bare LQ tensor works too; a batch without LQ is refused in one line
    with torch.no_grad():
        bare = module.predict_step(dataset[0]["lq"][None], 0)
    assert bare["key"] == ["predict_0_0"] and bare["output"].shape == (1, 3, 3, 64, 64)
    with pytest.raises(ValueError, match=r"expected a predict batch with an 'lq' tensor .* got \['hq'\]"):
        module.predict_step({"hq": dataset[0]["hq"][None]}, 0)


@pytest.mark.slow
def test_under_ddp_each_rank_writes_its_sequences_and_rank_zero_the_csvs_of_all(tmp_path):
    dataset = {"name": "synthetic", "size": 64, "frames": 3, "train_sequences": 1, "test_sequences": 3}
    torch.manual_seed(0)
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY)
    per_frame = {}
    for devices in (1, 2):
        dm = VideoRestorationDataModule(dataset=dataset, task="vsr", num_frames=3, crop_size=64)
        writer = TestOutputWriter(tmp_path / f"devices{devices}")
        trainer = _trainer(devices, callbacks=[writer])
        trainer.test(module, datamodule=dm, verbose=False)
        # 3 sequences sharded 2 + 1 over the ranks: all 9 frames saved once, all 9 rows in the CSV
        assert len(list(writer.images_dir.rglob("*.png"))) == 9
        per_frame[devices] = _rows(writer.output_dir / "per_frame.csv")
        assert len(_rows(writer.output_dir / "per_sequence.csv")) == 3
    assert len(per_frame[2]) == 9
    for one, two in zip(per_frame[1], per_frame[2]):
        assert (one["sequence"], one["frame"]) == (two["sequence"], two["frame"])
        assert float(one["psnr"]) == pytest.approx(float(two["psnr"]), abs=1e-9)
