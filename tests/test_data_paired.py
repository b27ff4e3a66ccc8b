"""The ``paired`` dataset: the user's own LQ/HQ footage trains and tests like a benchmark, and bad pairs
are refused before training with the file named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

import s2svr_lightning
from s2svr_lightning.data import DatasetError, VideoRestorationDataModule, bicubic_downsample
from s2svr_lightning.metrics import quantize_8bit
from s2svr_lightning.pipeline import read_results, run
from s2svr_lightning.restore import main as restore_main
from s2svr_lightning.task import Task

CONF = Path(s2svr_lightning.__file__).parent / "conf"
TINY_MODEL = "++model.overrides={channels: 8, num_blocks: 1, num_layers: 1}"


def _save_frames(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:04d}.png")


def _u8(x: torch.Tensor) -> np.ndarray:
    return (quantize_8bit(x) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _paired_tree(root: Path, moving_photo, make_video, kind: str, clips=("a", "b", "c")) -> tuple[Path, Path]:
    """``root/lq`` and ``root/hq`` with one clip per name: frame folders, the last clip's LQ as a video."""
    task = Task(kind)
    for i, name in enumerate(clips):
        hq = moving_photo(frames=5, height=64, width=64, step=(1 + i, 2))
        hq_t = torch.from_numpy(hq).permute(0, 3, 1, 2).float() / 255
        # a made-up "real" LQ: the task's degradation stands in for a camera or an encoder
        lq = bicubic_downsample(hq_t, 4) if kind == "vsr" else task.degrade(hq_t) if kind == "cve" else hq_t
        if kind == "deblur":
            lq = (hq_t + hq_t.roll(1, dims=-1) + hq_t.roll(2, dims=-1)) / 3  # a horizontal smear
        _save_frames(root / "hq" / name, hq)
        if i == len(clips) - 1:
            (root / "lq").mkdir(parents=True, exist_ok=True)
            make_video(root / "lq" / f"{name}.mkv", _u8(lq), codec="ffv1", pix_fmt="bgr0")
        else:
            _save_frames(root / "lq" / name, _u8(lq))
    return root / "lq", root / "hq"


@pytest.mark.parametrize("task", ["demo", "demo_deblur", "demo_cve"])
def test_a_paired_tree_trains_and_tests_through_the_pipeline(tmp_path, moving_photo, make_video, task):
    kind = {"demo": "vsr", "demo_deblur": "deblur", "demo_cve": "cve"}[task]
    lq, hq = _paired_tree(tmp_path / "data", moving_photo, make_video, kind)
    out = tmp_path / "run"
    overrides = [
        f"+task={task}",
        "dataset=paired",
        f"dataset.lq={lq}",
        f"dataset.hq={hq}",
        "dataset.test=[c]",  # the clip whose LQ is a video file is held out (val falls back to it)
        "stage.run=[restorer,test]",
        "restorer.flow_from_student=false",
        "debug=fast",
        "test.limit_batches=null",
        "data.num_frames=3",
        "data.crop_size=64",  # the network needs LQ frames of 16 px at least
        f"paths.output_dir={out}",
        f"paths.log_dir={tmp_path}",
        "callbacks.progress_bar=false",
        TINY_MODEL,
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    run(cfg)
    results = read_results(out)
    assert results["restorer"]["steps"] == 2
    test = results["test"]
    assert list(test["per_sequence"]) == ["paired/c"]  # only the held-out clip, whole
    assert np.isfinite(test["psnr"]) and np.isfinite(test["baseline_psnr"])
    if kind == "vsr":  # `restore --reference` scores the same held-out pair as the test stage did
        report = tmp_path / "restore.json"
        ckpt = results["checkpoints"]["restorer"]
        args = ["--ckpt", ckpt, str(lq / "c.mkv"), str(tmp_path / "restored"), "--reference", str(hq / "c")]
        args += ["--precision", "fp32"]  # as the test stage ran (auto is bf16 on CPUs with bf16 units)
        assert restore_main([*args, "--metrics-json", str(report), "--no-progress"]) == 0
        scores = json.loads(report.read_text())
        assert scores["frames"] == 5
        assert scores["baseline_psnr"] == pytest.approx(
            test["per_sequence"]["paired/c"]["baseline_psnr"], abs=1e-4
        )
        assert scores["psnr"] == pytest.approx(test["per_sequence"]["paired/c"]["psnr"], abs=1e-4)


def _dm(lq, hq, kind="vsr", **options) -> VideoRestorationDataModule:
    dataset = {"name": "paired", "lq": str(lq), "hq": str(hq), **options}
    return VideoRestorationDataModule(dataset=dataset, task=kind, num_frames=3, crop_size=32, batch_size=1)


def test_splits_by_name_and_by_folder(tmp_path, moving_photo, make_video):
    lq, hq = _paired_tree(tmp_path / "data", moving_photo, make_video, "vsr")
    dm = _dm(lq, hq, val="b", test=["c"])
    dm.setup()
    keys = {split: [dm.source(split).key(i) for i in range(len(dm.source(split)))] for split in dm._sources}
    assert keys == {"train": ["paired/a"], "val": ["paired/b"], "test": ["paired/c"]}
    assert dm.source("test").length(0) == 5 and dm.source("test").size(0) == (64, 64)
    sample = dm.train_dataset()[0]
    assert sample["lq"].shape == (3, 3, 8, 8) and sample["hq"].shape == (3, 3, 32, 32)

    held_lq, held_hq = _paired_tree(tmp_path / "held", moving_photo, make_video, "vsr", clips=("x",))
    dm = _dm(lq, hq, test_lq=held_lq, test_hq=held_hq)
    assert [dm.source("val").key(0), len(dm.source("val"))] == ["paired/x", 1]  # val falls back to test
    assert len(dm.source("train")) == 3
    with pytest.warns(UserWarning, match="no held-out clips for test"):
        assert len(_dm(lq, hq).source("test")) == 3  # nothing held out: said, then the training clips
    with pytest.raises(DatasetError, match=r"held-out clip\(s\) \['zz'\] not found"):
        _dm(lq, hq, test=["zz"]).check()
    with pytest.raises(ValueError, match="val_hq"):
        _dm(lq, hq, val_lq=held_lq)


def test_an_lq_clip_without_its_hq_partner_is_refused_by_name(tmp_path, moving_photo, make_video):
    lq, hq = _paired_tree(tmp_path, moving_photo, make_video, "vsr")
    (hq / "b").rename(hq / "b_sharp")
    with pytest.raises(DatasetError, match=rf"LQ clip {lq / 'b'} has no HQ partner named 'b'"):
        _dm(lq, hq).check()  # the cheap check: the pipeline's first step, before any stage


def test_mismatched_pairs_are_refused_before_training_with_the_file_named(tmp_path, moving_photo, make_video):
    lq, hq = _paired_tree(tmp_path, moving_photo, make_video, "vsr")
    (lq / "a" / "0004.png").unlink()  # one frame short
    with pytest.raises(DatasetError, match=rf"4 LQ frames in {lq / 'a'} but 5 HQ frames in {hq / 'a'}"):
        _dm(lq, hq).setup("fit")
    # sizes that do not fit the task's scale: the vsr LQ used as the HQ of a deblurring pair
    with pytest.raises(DatasetError, match=rf"LQ frames in {lq / 'b'} are 16x16 but HQ frames in .* 64x64"):
        _dm(lq, hq, "deblur", val="b").setup("validate")
    # an unreadable frame is named
    bad = hq / "b" / "0002.png"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DatasetError, match=rf"{bad}: truncated PNG"):
        _dm(lq, hq, val="b").setup("validate")


def test_workers_of_a_dataset_with_video_start_fresh_and_read_what_the_parent_decoded(
    tmp_path, moving_photo, make_video
):
    # Workers forked from a process that has decoded inherit decoder and scaler state whose threads stayed
    # behind (freeing it hung PyAV 18.1.1): datasets that decode video start their workers by forkserver
    lq, hq = _paired_tree(tmp_path / "data", moving_photo, make_video, "vsr")
    dm = VideoRestorationDataModule(
        dataset={"name": "paired", "lq": str(lq), "hq": str(hq)}, task="vsr", num_frames=5, crop_size=None,
        batch_size=1, num_workers=1, verify="full",
    )  # fmt: skip
    dm.setup("test")  # the parent decodes every frame (verify="full")
    loader = dm.test_dataloader()
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    expected = {item["key"][0]: item["lq"] for item in dm.with_overrides(num_workers=0).test_dataloader()}
    got = {}
    for item in loader:
        got[item["key"][0]] = item["lq"]
    assert sorted(got) == sorted(expected) and len(got) == 3
    for key, lq_frames in got.items():
        assert torch.equal(lq_frames, expected[key])
    # the synthetic data keeps the platform's default; the option wins when given
    synthetic = VideoRestorationDataModule(dataset={"name": "synthetic", "size": 32}, num_workers=1)
    assert synthetic.test_dataloader().multiprocessing_context is None
    forked = dm.with_overrides(worker_start="fork").test_dataloader()
    assert forked.multiprocessing_context.get_start_method() == "fork"
    with pytest.raises(ValueError, match="worker_start"):
        VideoRestorationDataModule(dataset={"name": "synthetic"}, worker_start="thread")
