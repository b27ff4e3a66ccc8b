"""The researcher's workflow around the pipeline: best checkpoints, test outputs, predict, named runs that
resume, dashboards (CSV and offline wandb at once)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import types
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from PIL import Image

from s2svr_lightning.conf import CONF_DIR, ConfigError
from s2svr_lightning.pipeline import read_results, run
from s2svr_lightning.pipeline.stages import _saved_score, choose_test_checkpoint

TINY = [
    "++model.overrides={channels: 8, num_blocks: 1, num_layers: 1}",
    "dataset.train_sequences=2",
    "dataset.val_sequences=1",
    "dataset.test_sequences=1",
    "dataset.frames=4",
    "data.num_frames=3",
]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _ckpt(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(
        os.environ, HYDRA_FULL_ERROR="0", PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    return subprocess.run(
        [sys.executable, "-m", "s2svr_lightning", *args], capture_output=True, text=True, env=env, **kwargs
    )


# ------------------------------------------------------------------------------------- best checkpoints
class ScriptedRestorer(L.LightningModule):
    """A stand-in for the restorer whose validation score follows a script: the test decides which
    validation is the best."""

    SCORES = (1.0, 3.0, 2.0)

    def __init__(self, **kwargs) -> None:  # takes (and ignores) the restorer's config options
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.validations = 0

    def training_step(self, batch, batch_idx):
        return (self.weight - batch["lq"].mean()).square().sum()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.log("val/score", self.SCORES[min(self.validations, len(self.SCORES) - 1)])
        self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_best_checkpoints_follow_the_monitored_metric_and_the_test_stage_picks_them(tmp_path):
    overrides = [
        "+task=demo",
        "stage=restorer",
        f"paths.output_dir={tmp_path}",
        f"paths.log_dir={tmp_path}",  # the synthetic video's cache
        "restorer.flow_from_student=false",
        f"restorer.module._target_={__name__}.ScriptedRestorer",
        "restorer.max_steps=6",
        "restorer.val_every_n_steps=2",  # validations at steps 2, 4, 6 score 1, 3, 2
        "restorer.limit_val_batches=1",
        "restorer.best.monitor=val/score",
        "restorer.best.mode=max",
        "restorer.best.save_top_k=2",
        "logger=none",
        "callbacks.progress_bar=false",
        *TINY,
    ]
    run(_compose(*overrides))
    restorer = read_results(tmp_path)["restorer"]
    best = restorer["best"]
    assert (best["monitor"], best["mode"]) == ("val/score", "max")
    assert [Path(c["path"]).name for c in best["checkpoints"]] == [
        "best-step0000004.ckpt",
        "best-step0000006.ckpt",
    ]
    assert [c["score"] for c in best["checkpoints"]] == [3.0, 2.0]
    assert _ckpt(best["checkpoints"][0]["path"])["global_step"] == 4
    # where the callback's state is not at hand (ddp_spawn), each file's own record gives its score
    assert [_saved_score(Path(c["path"]), "val/score") for c in best["checkpoints"]] == [3.0, 2.0]
    assert not (
        tmp_path / "restorer" / "checkpoints" / "best-step0000002.ckpt"
    ).exists()  # fell out of the top 2
    assert restorer["score"] == 2.0  # the closing metrics are those of the last step

    chosen = {
        c: choose_test_checkpoint(_compose(*overrides, f"test.ckpt={c}"), tmp_path)
        for c in ("best", "last", "final")
    }
    assert chosen["best"] == (Path(best["checkpoints"][0]["path"]), "best", 3.0)
    assert chosen["last"][0].name == "last.ckpt" and chosen["final"][0].name == "final.ckpt"
    assert _ckpt(chosen["final"][0])["global_step"] == 6
    with pytest.raises(ConfigError, match=r"test.ckpt must be one of best, last, final"):
        choose_test_checkpoint(_compose(*overrides, "test.ckpt=newest"), tmp_path)


# ------------------------------------------------------------------------------ dashboards, test outputs
class _RecordingWriter(Callback):
    """Stands in for ``s2svr_lightning.lit.evaluation.TestOutputWriter``: records how the pipeline made it."""

    made: list = []

    def __init__(self, output_dir: str, save_images: bool = True) -> None:
        self.made.append({"output_dir": output_dir, "save_images": save_images, "batches": 0})

    def on_test_batch_end(self, trainer, pl_module, *args) -> None:
        self.made[-1]["batches"] += 1


def _wandb_records(path: Path):
    """The protobuf records of an offline run's ``run-*.wandb`` file (a LevelDB-style log of 32 KiB
    blocks, 7-byte chunk headers: crc, length, type FULL 1 / FIRST 2 / MIDDLE 3 / LAST 4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """restorer + test with logger=many (CSV and wandb, no API key: offline), log_model, save_outputs."""
    root = tmp_path_factory.mktemp("logged")
    out = root / "run"
    evaluation = types.ModuleType("s2svr_lightning.lit.evaluation")
    evaluation.TestOutputWriter = _RecordingWriter
    _RecordingWriter.made = []
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("WANDB_")]:
            mp.delenv(var)
        mp.setenv("HOME", str(root))  # no netrc, no API key: mode auto logs offline
        mp.setenv("WANDB_SILENT", "true")
        mp.setitem(sys.modules, "s2svr_lightning.lit.evaluation", evaluation)
        returned = run(
            _compose(
                "+task=demo",
                "stage.run=[restorer,test]",
                f"paths.output_dir={out}",
                f"paths.log_dir={root}",
                "restorer.flow_from_student=false",
                "debug=fast",
                "callbacks.log_every_n_steps=1",
                "logger=many",
                "logger.wandb.log_model=true",
                "test.save_outputs=true",
                "test.save_images=false",
                *TINY,
            )
        )
    return out, returned, list(_RecordingWriter.made)


def test_offline_wandb_run_has_one_prefix_per_key_a_table_and_model_artifacts(logged_run):
    out, _, _ = logged_run
    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    # wandb's service writes the run file on its own thread and can still be writing after wandb.finish()
    # returns (seen under load: no history record yet, all of them there a moment later); its last record
    # is the run's exit, so wait for that before reading
    deadline = time.monotonic() + 60
    while True:
        try:  # a record still being written reads as truncated
            records = list(_wandb_records(run_file))
        except Exception:
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() < deadline, f"{run_file}: no exit record after 60 s"
        time.sleep(0.5)
    keys, artifacts = set(), []
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "artifact":
            artifacts.append((record.artifact.type, record.artifact.name))
    assert {"restorer/train/loss", "restorer/val/psnr", "test/psnr", "test/ssim"} <= keys
    assert not [k for k in keys if k.startswith(("test/test", "restorer-", "test-"))]
    assert "test/per_sequence/_type" in keys  # the per-sequence wandb.Table
    assert ("run_table", next(n for t, n in artifacts if t == "run_table")) in artifacts
    assert any(t == "model" and "restorer" in n for t, n in artifacts)  # log_model: checkpoints as artifacts
    media = run_file.parent / "files" / "media"
    assert list(media.glob("images/restorer/val/lq_output_hq_0_*.png")) and list(
        media.glob("images/restorer/val/flow_0_*.png")
    )
    (table,) = media.glob("table/test/per_sequence_*.table.json")
    assert len(json.loads(table.read_text())["data"]) == 1  # one test sequence


def test_csv_logs_beside_wandb_and_results_record_the_test_checkpoint(logged_run):
    out, returned, _ = logged_run
    header = (out / "restorer" / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "val/psnr" in header.split(",") and "train/loss" in header.split(",")
    results = read_results(out)
    best = results["restorer"]["best"]["checkpoints"][0]
    assert results["test"]["checkpoint"] == best["path"] and results["test"]["checkpoint_choice"] == "best"
    assert results["test"]["checkpoint_score"] == pytest.approx(results["restorer"]["psnr"])
    assert returned == pytest.approx(results["test"]["psnr"])


def test_save_outputs_adds_the_evaluation_writer_to_the_test_stage(logged_run):
    out, _, made = logged_run
    assert made == [{"output_dir": str(out / "test"), "save_images": False, "batches": 1}]


def test_a_finished_test_runs_again_only_for_another_checkpoint(logged_run, tmp_path):
    out, _, _ = logged_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("wandb"))
    before = read_results(copy)["test"]
    again = [
        "+task=demo",
        "stage=test",
        f"paths.output_dir={copy}",
        f"paths.log_dir={tmp_path}",
        "logger=none",
    ]
    again += ["debug=fast", *TINY]
    run(_compose(*again))  # the same best checkpoint, its outputs saved already: skipped
    assert read_results(copy)["test"] == before
    run(_compose(*again, "test.ckpt=last"))
    after = read_results(copy)["test"]
    assert after["checkpoint"] == str(copy / "restorer" / "checkpoints" / "last.ckpt")
    assert after["checkpoint_choice"] == "last" and after["saved_outputs"] is False


# ------------------------------------------------------------------------------------- predict
def test_predict_stage_equals_restore_and_refuses_bad_inputs(logged_run, tmp_path, moving_photo):
    from s2svr_lightning.restore import restore_video

    out, _, _ = logged_run
    ckpt = out / "restorer" / "checkpoints" / "final.ckpt"
    frames = tmp_path / "lq"
    frames.mkdir()
    for t, frame in enumerate(moving_photo(frames=4, height=16, width=16)):
        Image.fromarray(frame).save(frames / f"{t:04d}.png")
    predict = ["+task=demo", "stage=predict", f"paths.log_dir={tmp_path}", f"ckpt.restorer={ckpt}"]
    predict += [f"predict.input={frames}"]
    run(_compose(*predict, f"predict.output={tmp_path / 'pred'}", f"paths.output_dir={tmp_path / 'run'}"))
    # the same options: predict.* has the command line's defaults (device, precision, tile auto)
    restore_video(ckpt, frames, tmp_path / "restored", progress=False)
    names = sorted(p.name for p in (tmp_path / "restored").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "pred").iterdir()) and len(names) == 4
    for name in names:
        a, b = (np.asarray(Image.open(tmp_path / d / name)) for d in ("pred", "restored"))
        assert a.shape == (64, 64, 3) and np.array_equal(a, b)

    with pytest.raises(ConfigError, match=r"^predict.input=.*nothing: no such file or folder$"):
        run(
            _compose(
                *predict[:4], f"predict.input={tmp_path / 'nothing'}", f"paths.output_dir={tmp_path / 'r2'}"
            )
        )
    flow = tmp_path / "teacher.ckpt"
    torch.save({"s2svr_kind": "teacher", "state_dict": {}}, flow)
    proc = _cli(
        *predict[:3],
        f"ckpt.restorer={flow}",
        f"predict.input={frames}",
        f"hydra.run.dir={tmp_path / 'r3'}",
        timeout=300,
    )
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        f"error: ckpt.restorer={flow} is a teacher checkpoint; predict needs a restorer stage checkpoint "
        "(<run>/restorer/checkpoints/best-*.ckpt or final.ckpt)"
    ]
    assert not (tmp_path / "r3" / "predict").exists()


# ------------------------------------------------------------------------------------- named runs
def test_a_run_folder_of_another_task_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"task": "demo", "kind": "vsr", "scale": 4}))
    proc = _cli("+task=demo_deblur", f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: the run folder {tmp_path} holds a run of task 'demo', not 'demo_deblur' ({tmp_path}): "
        "choose another run_name"
    ]
    assert not (tmp_path / "teacher").exists()


def test_resume_never_refuses_a_folder_that_holds_the_run(tmp_path):
    last = tmp_path / "teacher" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"global_step": 3}, last)
    args = ["+task=demo", "stage=teacher", f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}"]
    assert _compose(*args).resume == "auto"  # the default
    with pytest.raises(ConfigError, match=r"holds this run \(teacher interrupted at step 3 .*resume=never"):
        run(_compose(*args, "resume=never"))
    with pytest.raises(ConfigError, match=r"^resume must be one of auto, never, got 'sometimes'$"):
        run(_compose(*args, "resume=sometimes"))
    assert not (tmp_path / "results.json").exists()  # refused before the folder was marked


def _train_steps(metrics_csv: Path) -> int:
    lines = metrics_csv.read_text().splitlines() if metrics_csv.is_file() else []
    return sum(1 for line in lines[1:] if line.split(",")[0])


@pytest.mark.slow
def test_a_named_run_resumes_where_it_was_killed_from_the_same_command(tmp_path):
    args = [
        "+task=demo",
        "stage=teacher",
        "run_name=requeued",
        f"paths.log_dir={tmp_path}",
        "teacher.max_steps=12",
        "teacher.data.batch_size=2",
        "dataset.train_sequences=2",
        "dataset.val_sequences=1",
        "dataset.frames=4",
        "callbacks.checkpoint_every_n_steps=1000",  # no periodic checkpoint: only the interrupt saves
        "callbacks.log_every_n_steps=1",
        "logger.flush_logs_every_n_steps=1",
    ]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "s2svr_lightning", *args]
    run_dir = tmp_path / "demo" / "requeued"
    first_csv = run_dir / "teacher" / "logs" / "version_0" / "metrics.csv"
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
    )
    deadline = time.monotonic() + 900  # a safety net for very slow machines, not a speed target
    while time.monotonic() < deadline and proc.poll() is None and _train_steps(first_csv) < 3:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, output
    killed_at = _ckpt(run_dir / "teacher" / "checkpoints" / "last.ckpt")["global_step"]
    assert 3 <= killed_at < 12

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output
    assert f"resuming the run in {run_dir}: teacher interrupted at step {killed_at}" in output
    assert "[teacher] step 12/12" in output  # the plain progress line (stdout is not a terminal)
    final = run_dir / "teacher" / "checkpoints" / "final.ckpt"
    assert _ckpt(final)["global_step"] == 12 and read_results(run_dir)["teacher"]["steps"] == 12

    mtime = final.stat().st_mtime_ns
    third = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    assert third.returncode == 0 and "finished earlier: reporting its results" in third.stdout + third.stderr
    assert final.stat().st_mtime_ns == mtime  # not retrained
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["requeued"]  # one folder, no timestamp
