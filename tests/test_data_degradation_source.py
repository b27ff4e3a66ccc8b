"""One source of how LQ is made: the task's ``degradation`` node reaches the dataset's LQ, the restorer
checkpoint records the same, ``restore --degrade`` reads it back, and a dataset option of the old kind
(``dataset.blur_frames``) is refused naming the new key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import s2svr_lightning
from s2svr_lightning.conf import ConfigError
from s2svr_lightning.data import VideoRestorationDataModule
from s2svr_lightning.data.datasets import build_dataset
from s2svr_lightning.task import Task

CONF = Path(s2svr_lightning.__file__).parent / "conf"
SMALL = {"name": "synthetic", "size": 32, "frames": 3, "train_sequences": 1, "val_sequences": 1}


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _test_clip(task: str, degradation: dict) -> dict:
    dm = VideoRestorationDataModule(
        dataset={**SMALL, "test_sequences": 1, "cache_size": 0}, task=task, degradation=degradation
    )
    return dm.source("test").load(0, 0, 3)


def test_the_task_degradation_reaches_the_synthetic_lq():
    three, nine = _test_clip("deblur", {"blur_frames": 3}), _test_clip("deblur", {"blur_frames": 9})
    assert torch.equal(three["hq"], nine["hq"])  # the same scene, blurred from 3 or 9 sub-frames
    assert not torch.equal(three["lq"], nine["lq"])
    low, high = _test_clip("cve", {"qp": 22}), _test_clip("cve", {"qp": 42})
    assert torch.equal(low["hq"], high["hq"])
    assert (low["lq"] - low["hq"]).abs().mean() < (high["lq"] - high["hq"]).abs().mean()
    assert torch.equal(_test_clip("cve", {})["lq"], _test_clip("cve", {"qp": 37})["lq"])  # the default


def test_the_task_degradation_reaches_video_folder_and_mfqe(tmp_path, make_video, moving_photo):
    make_video(tmp_path / "clips" / "walk.mkv", moving_photo(frames=9, height=16, width=16), codec="ffv1")
    lengths = {}
    for blur in (3, 9):
        dm = VideoRestorationDataModule(
            dataset={"name": "video_folder", "root": str(tmp_path / "clips")},
            task="deblur",
            degradation={"blur_frames": blur},
        )
        with pytest.warns(UserWarning, match="no held-out footage"):
            lengths[blur] = dm.source("test").length(0)
    assert lengths == {3: 3, 9: 1}
    mfqe = build_dataset(
        {"name": "mfqe", "root": str(tmp_path)}, task=Task.create("cve", degradation={"qp": 32})
    )
    assert mfqe.lq_folder == "HM16.5_LDP/QP32"
    assert build_dataset({"name": "mfqe"}, task=Task.create("cve")).lq_folder == "HM16.5_LDP/QP37"


@pytest.mark.parametrize(
    ("options", "key"),
    [({"blur_frames": 3}, "degradation.blur_frames=3"), ({"qp": 32}, "degradation.qp=32")],
)
def test_a_dataset_option_of_the_old_kind_names_the_new_key(options, key):
    with pytest.raises(ValueError, match=rf"moved to the task's degradation: set {key}"):
        VideoRestorationDataModule(
            dataset={**SMALL, **options}, task="deblur" if "blur_frames" in options else "cve"
        )
    from s2svr_lightning.pipeline import validate_config

    task = "demo_deblur" if "blur_frames" in options else "demo_cve"
    ((name, value),) = options.items()
    with pytest.raises(ConfigError, match=rf"set {key}"):
        validate_config(_compose(f"+task={task}", f"+dataset.{name}={value}", "paths.output_dir=/tmp/unused"))


# the LQ each task's data has always been made with (demo_deblur's data rendered 13 sub-frames)
EXPECTED = {
    "demo": {},
    "demo_deblur": {"blur_frames": 13},
    "demo_cve": {"qp": 37},
    "deblur_gopro": {"blur_frames": 7},
    "cve_mfqe": {"qp": 37},
    "vsr_reds4": {},
    "vsr_vimeo": {},
}


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_the_data_and_the_checkpoint_read_the_one_degradation_node(task, tmp_path):
    from s2svr_lightning.checkpoint import restorer_task
    from s2svr_lightning.pipeline.build import build_datamodule

    cfg = _compose(f"+task={task}", f"paths.output_dir={tmp_path}")
    dm = build_datamodule(cfg)
    module = OmegaConf.to_container(cfg.restorer.module, resolve=False)
    hparams = {k: OmegaConf.select(cfg, f"restorer.module.{k}") for k in ("kind", "scale", "degradation")}
    hparams["degradation"] = OmegaConf.to_container(hparams["degradation"])
    assert module["degradation"] == "${degradation}"  # the same node as the data's
    assert dm.spec == restorer_task(hparams)
    assert dict(dm.spec.degradation) == EXPECTED[task]
    if dm.dataset_options["name"] == "synthetic" and dm.task == "deblur":
        assert dm.dataset.config.blur_frames == 13
    if dm.dataset_options["name"] == "mfqe":
        assert dm.dataset.lq_folder == "HM16.5_LDP/QP37"


def test_restore_degrade_uses_the_checkpoint_degradation(tmp_path, write_frames, moving_photo):
    from conftest import TINY_RESTORER, save_checkpoint

    from s2svr_lightning.lit.restorer import RestorerModule
    from s2svr_lightning.restore import main

    torch.manual_seed(0)
    frames = {}
    for blur in (3, 9):
        module = RestorerModule(
            model="s2svr_deblur",
            model_overrides=TINY_RESTORER,
            kind="deblur",
            scale=1,
            degradation={"blur_frames": blur},
            total_steps=1,
        )
        ckpt = save_checkpoint(module, tmp_path / f"deblur{blur}.ckpt")
        src = tmp_path / "hq"
        if not src.exists():
            write_frames(src, moving_photo(frames=9, height=16, width=16))
        report = tmp_path / f"m{blur}.json"
        args = ["--ckpt", str(ckpt), str(src), str(tmp_path / f"out{blur}"), "--degrade"]
        assert main([*args, "--metrics-json", str(report), "--no-progress"]) == 0
        frames[blur] = json.loads(report.read_text())["frames"]
    assert frames == {3: 3, 9: 1}  # 9 sub-frames blurred 3 or 9 at a time, as each checkpoint says
