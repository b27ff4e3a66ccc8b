"""The pipeline end to end: stage=all on a tiny REDS tree, resume after a kill, a multirun sweep."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

import s2svr_lightning
from s2svr_lightning.checkpoint import read_checkpoint, sub_state_dict
from s2svr_lightning.data import bicubic_downsample
from s2svr_lightning.lit.callbacks import AtomicCheckpointIO
from s2svr_lightning.pipeline import read_results, run

CONF = Path(s2svr_lightning.__file__).parent / "conf"
TINY_MODEL = ["++model.overrides={channels: 8, num_blocks: 1, num_layers: 1}"]


def _reds_tree(root: Path, moving_photo) -> Path:
    """REDS layout with REDS4 clips (000, 011, 015, 020) and two training clips, 4 frames of 64x64."""
    for i, clip in enumerate(("000", "001", "002", "011", "015", "020")):
        hq = moving_photo(frames=4, height=64, width=64, step=(1 + i % 3, 2))
        lq = bicubic_downsample(torch.from_numpy(hq).permute(0, 3, 1, 2).float() / 255.0, scale=4)
        lq = (lq.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for name, frames in (("train_sharp", hq), ("train_sharp_bicubic/X4", lq)):
            folder = root / name / clip
            folder.mkdir(parents=True)
            for t, frame in enumerate(frames):
                Image.fromarray(frame).save(folder / f"{t:08d}.png")
    return root


@pytest.mark.slow
def test_stage_all_on_a_reds_tree_hands_checkpoints_on_and_skips_when_done(tmp_path, moving_photo):
    root = _reds_tree(tmp_path / "REDS", moving_photo)
    out = tmp_path / "run"
    overrides = [
        "+task=vsr_reds4",
        f"dataset.root={root}",
        f"paths.output_dir={out}",
        f"paths.log_dir={tmp_path}",
        "debug=fast",
        "test.limit_batches=null",  # the test stage scores all of REDS4
        "data.crop_size=64",
        "data.num_frames=3",
        "student.data.crop_size=64",
        "teacher.data.batch_size=2",
        "student.data.batch_size=2",
        "callbacks.progress_bar=false",
        *TINY_MODEL,
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    returned = run(cfg)

    results = read_results(out)
    assert {"teacher", "student", "restorer", "test", "checkpoints", "timings"} <= set(results)
    test = results["test"]
    for key in ("psnr", "ssim", "baseline_psnr", "baseline_ssim", "delta_psnr", "delta_ssim"):
        assert isinstance(test[key], float)
    assert test["num_sequences"] == 4  # REDS4, whole sequences
    assert len(test["per_sequence"]) == 4 and all("psnr" in r for r in test["per_sequence"].values())
    assert returned == pytest.approx(test["psnr"])
    assert results["restorer"]["steps"] == 2

    ckpts = {stage: Path(results["checkpoints"][stage]) for stage in ("teacher", "student", "restorer")}
    teacher, student, restorer = (
        read_checkpoint(ckpts[s], kind=s) for s in ("teacher", "student", "restorer")
    )
    # teacher -> student: the frozen teacher inside the student is the teacher stage's flow net
    t_flow, s_teacher = sub_state_dict(teacher, "flownet."), sub_state_dict(student, "teacher.")
    assert t_flow.keys() == s_teacher.keys() and all(torch.equal(t_flow[k], s_teacher[k]) for k in t_flow)
    # student -> restorer: the flow net is still frozen after 2 steps (freeze 10k), so it is the student's
    s_flow, r_flow = sub_state_dict(student, "flownet."), sub_state_dict(restorer, "net.flownet.")
    assert s_flow.keys() == r_flow.keys() and all(torch.equal(s_flow[k], r_flow[k]) for k in s_flow)
    assert restorer["hyper_parameters"]["kind"] == "vsr" and restorer["hyper_parameters"]["scale"] == 4

    # a second run in the same output dir skips every finished stage and reports the same results
    mtimes = {s: p.stat().st_mtime_ns for s, p in ckpts.items()}
    assert run(cfg) == pytest.approx(returned)
    assert {s: p.stat().st_mtime_ns for s, p in ckpts.items()} == mtimes
    assert read_results(out)["test"]["psnr"] == test["psnr"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "s2svr_lightning", *args]


def _demo_teacher_args(run_dir: Path, log_dir: Path) -> list[str]:
    return [
        "+task=demo",
        "stage=teacher",
        f"hydra.run.dir={run_dir}",
        f"paths.log_dir={log_dir}",
        "teacher.max_steps=24",
        "teacher.data.batch_size=2",
        "dataset.train_sequences=4",
        "dataset.val_sequences=1",
        "dataset.frames=4",
        "callbacks.checkpoint_every_n_steps=1000",  # no periodic checkpoint: only the interrupt saves
        "callbacks.log_every_n_steps=1",
        "callbacks.progress_bar=false",
        "logger.flush_logs_every_n_steps=1",
    ]


def _train_steps(metrics_csv: Path) -> list[int]:
    with open(metrics_csv) as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
def test_resume_after_sigterm_loses_no_step(tmp_path):
    run_dir = tmp_path / "run"
    args = _demo_teacher_args(run_dir, tmp_path)
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_csv = run_dir / "teacher" / "logs" / "version_0" / "metrics.csv"
    deadline = time.monotonic() + 900  # a safety net for very slow machines, not a speed target
    while time.monotonic() < deadline and proc.poll() is None:
        if first_csv.is_file() and len(_train_steps(first_csv)) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "run the same command again to resume" in output

    last = run_dir / "teacher" / "checkpoints" / "last.ckpt"
    killed_at = read_checkpoint(last)["global_step"]
    assert 3 <= killed_at < 24
    assert not (run_dir / "teacher" / "checkpoints" / "final.ckpt").exists()

    rerun = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming from" in rerun.stdout + rerun.stderr
    assert read_checkpoint(run_dir / "teacher" / "checkpoints" / "final.ckpt")["global_step"] == 24
    steps_before = _train_steps(first_csv)
    steps_after = _train_steps(run_dir / "teacher" / "logs" / "version_1" / "metrics.csv")
    # the step count continues: the second process trained exactly the steps the first had not
    assert min(steps_after) == killed_at and max(steps_after) == 23
    assert max(steps_before) == killed_at - 1
    assert read_results(run_dir)["teacher"]["steps"] == 24


def test_atomic_checkpoint_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails half-way through the write
        io.save_checkpoint({"global_step": 2, "bad": lambda: None}, path)
    assert read_checkpoint(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


@pytest.mark.slow
def test_multirun_sweep_of_two_values_with_offline_wandb(tmp_path):
    sweep_dir = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_SILENT="true")  # no netrc, no API key: offline
    args = [
        "-m",
        "+task=demo",
        "stage.run=[restorer,test]",
        "restorer.flow_from_student=false",
        "restorer.module.lr=0.001,0.002",
        "debug=fast",
        "logger=wandb",
        "dataset.train_sequences=2",
        "dataset.test_sequences=1",
        "dataset.val_sequences=1",
        "dataset.frames=4",
        "data.num_frames=3",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.log_dir={tmp_path}",
        *TINY_MODEL,
    ]
    proc = subprocess.run(_cli(*args), capture_output=True, text=True, env=env, timeout=1200)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    lrs = []
    for job in ("0", "1"):
        results = json.loads((sweep_dir / job / "results.json").read_text())
        assert isinstance(results["test"]["psnr"], float)
        lrs.append(read_checkpoint(results["checkpoints"]["restorer"])["hyper_parameters"]["lr"])
    assert lrs == [0.001, 0.002]
    # one offline wandb run per job, and the user is told how to upload them
    runs = [sorted((sweep_dir / job / "wandb").glob("offline-run-*")) for job in ("0", "1")]
    assert [len(r) for r in runs] == [1, 1]
    assert runs[0][0].name.split("-")[-1] != runs[1][0].name.split("-")[-1]  # distinct run ids
    assert output.count("wandb sync") == 2
