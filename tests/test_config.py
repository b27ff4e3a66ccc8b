"""Hydra configs: every task composes, errors are clear and come before any training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

import s2svr_lightning
from s2svr_lightning import pipeline
from s2svr_lightning.pipeline import (
    TASKS,
    ConfigError,
    check_stage_options,
    resolve_strategy,
    validate_config,
)

CONF = Path(s2svr_lightning.__file__).parent / "conf"
REPO = Path(__file__).resolve().parents[1]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_conf_ships_in_the_package_and_the_top_level_conf_is_the_same_tree():
    assert (CONF / "config.yaml").is_file()
    top = REPO / "conf"
    if top.exists():  # a checkout (an installed wheel has only the package copy)
        assert top.resolve() == CONF.resolve()
    assert {p.stem for p in (CONF / "task").glob("*.yaml")} == set(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes_consistently(task):
    cfg = _compose(f"+task={task}", "paths.output_dir=/tmp/unused")
    validate_config(cfg)
    assert cfg.task_name == task
    kinds = {"demo": "vsr", "demo_deblur": "deblur", "demo_cve": "cve"}
    assert cfg.kind == kinds.get(task, task.split("_")[0])
    assert cfg.model.name == f"s2svr_{cfg.kind}"
    assert cfg.scale == (4 if cfg.kind == "vsr" else 1)
    expected_data = {"vsr_reds4": "reds", "vsr_vimeo": "vimeo", "deblur_gopro": "gopro", "cve_mfqe": "mfqe"}
    assert cfg.dataset.name == expected_data.get(task, "synthetic")
    assert cfg.metrics.y_channel == (task in ("vsr_vimeo", "cve_mfqe", "demo_cve"))
    assert list(cfg.stage.run) == ["teacher", "student", "restorer", "test"]
    if cfg.dataset.name == "synthetic":
        check_stage_options(cfg)  # module options and per-stage DataModules all build
    else:
        assert "root" in cfg.dataset and cfg.dataset.root is None


def test_groups_select_what_they_say():
    ddp = _compose("+task=demo", "hardware=ddp8").hardware
    assert (ddp.accelerator, ddp.devices, ddp.strategy, ddp.precision) == ("gpu", 8, "ddp", "bf16-mixed")
    multi = _compose("+task=demo", "hardware=multinode").hardware
    assert multi.num_nodes == 2 and multi.devices == 8 and multi.strategy == "ddp"
    assert _compose("+task=demo", "logger=wandb").logger.mode == "auto"
    assert list(_compose("+task=demo", "stage=restorer").stage.run) == ["restorer"]
    fast = _compose("+task=vsr_reds4", "debug=fast")  # caps the task's steps whatever the merge order
    assert [pipeline.stage_steps(fast, s) for s in ("teacher", "student", "restorer")] == [2, 2, 2]
    assert pipeline.stage_steps(_compose("+task=vsr_reds4"), "restorer") == 600000
    assert _compose("+task=demo", "dataset.root=/x", "dataset=reds").dataset.root == "/x"


@pytest.mark.parametrize("task", TASKS)
def test_debug_wins_over_every_task_by_composition(task):
    cfg = _compose(f"+task={task}", "debug=fast")  # each task file loads the debug group after its values
    for stage in ("teacher", "student", "restorer"):
        node = cfg[stage]
        caps = (node.max_steps, node.val_every_n_steps, node.limit_val_batches, node.data.num_workers)
        assert caps == (2, 0, 1, 0)
    assert (cfg.test.limit_batches, cfg.test.data.num_workers, cfg.data.num_workers) == (1, 0, 0)
    # the command line still wins over the debug file
    assert _compose(f"+task={task}", "debug=fast", "test.limit_batches=null").test.limit_batches is None
    assert _compose(f"+task={task}", "debug=anomaly").trainer.detect_anomaly is True


def test_debug_without_a_task_or_with_a_plus_says_how_to_write_it():
    from s2svr_lightning.__main__ import _check_debug_argument

    _check_debug_argument(["+task=demo", "debug=fast"])  # the way
    with pytest.raises(SystemExit, match=r"goes with a task: add \+task=<name>"):
        _check_debug_argument(["debug=fast"])
    with pytest.raises(SystemExit, match=r"takes no \+"):
        _check_debug_argument(["+task=demo", "+debug=fast"])


def test_task_typo_lists_the_tasks():
    with pytest.raises(MissingConfigException) as err:
        _compose("+task=demoo")
    message = str(err.value)
    assert "task/demoo" in message and all(t in message for t in ("demo", "vsr_reds4", "cve_mfqe"))


def test_unknown_keys_are_refused_with_the_fix():
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'teacher.max_step'"):
        _compose("+task=demo", "teacher.max_step=3")
    with pytest.raises(ConfigCompositionException, match=r"use \+task=demo"):
        _compose("task=demo")


def test_no_task_and_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match=r"\+task=demo"):
        validate_config(_compose("paths.output_dir=/tmp/unused"))
    with pytest.raises(ConfigError, match="scale must be 1"):
        validate_config(_compose("+task=demo_cve", "scale=4"))
    with pytest.raises(ConfigError, match="keep the order"):
        validate_config(_compose("+task=demo", "stage.run=[student,teacher]"))
    with pytest.raises(ConfigError, match="hardware.threads must be a positive"):
        validate_config(_compose("+task=demo", "hardware.threads=0"))
    with pytest.raises(ConfigError, match="restorer.threads must be a positive"):
        validate_config(_compose("+task=demo", "restorer.threads=0"))


def test_hardware_threads_sets_torch_and_the_processes_it_starts(monkeypatch):
    import torch

    from s2svr_lightning.pipeline import set_threads

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "7")
    before = torch.get_num_threads()
    try:
        set_threads(None)  # null: left as it is
        assert torch.get_num_threads() == before and os.environ["OMP_NUM_THREADS"] == "7"
        set_threads(2)
        assert torch.get_num_threads() == 2
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(before)


def test_a_stage_runs_on_its_own_threads_and_the_next_on_the_process_setting(tmp_path, monkeypatch):
    import torch

    from s2svr_lightning import pipeline

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    seen = {}

    def runner(stage):
        def run_stage(cfg, out):
            seen[stage] = (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))
            return {}, True

        return run_stage

    monkeypatch.setattr(pipeline, "RUNNERS", {s: runner(s) for s in pipeline.RUNNERS})
    before = torch.get_num_threads()
    try:
        cfg = _compose(
            "+task=demo",
            f"paths.output_dir={tmp_path}",
            "hardware.threads=2",
            "student.threads=null",  # the demo's flow stages run on one thread (conf/recipe/cpu_flow.yaml)
        )
        pipeline.run(cfg)
    finally:
        torch.set_num_threads(before)
    assert seen == {"teacher": (1, "1"), "student": (2, "2"), "restorer": (1, "1"), "test": (2, "2")}


def test_module_option_typo_fails_before_training():
    cfg = _compose("+task=demo", "+restorer.module.flow_lrr=1e-4")
    with pytest.raises(
        ConfigError, match=r"restorer.module has unknown option\(s\) \['flow_lrr'\].*'flow_lr'"
    ):
        check_stage_options(cfg)
    cfg = _compose("+task=demo", "+teacher.data.crop_size=30")
    with pytest.raises(ConfigError, match="teacher stage's data options"):
        check_stage_options(cfg)


def test_stage_hand_offs_are_declared_in_the_config_and_checked_before_training(tmp_path):
    from s2svr_lightning.pipeline.build import module_arguments

    def compose(*overrides):
        return validate_config(_compose("+task=demo", f"paths.output_dir={tmp_path}", *overrides))

    cfg = compose()  # stage=all: each checkpoint is made by the stage before
    check_stage_options(cfg)
    assert module_arguments(cfg, "student")["teacher_checkpoint"] == str(
        tmp_path / "teacher" / "checkpoints" / "final.ckpt"
    )
    restorer = module_arguments(cfg, "restorer")
    assert restorer["flow_init"] == str(tmp_path / "student" / "checkpoints" / "final.ckpt")
    assert restorer["total_steps"] == cfg.restorer.max_steps
    with pytest.raises(
        ConfigError,
        match=r"^student.module.teacher_checkpoint needs a teacher checkpoint, not found: .*final.ckpt \(the "
        r"teacher stage of this run folder\). Run stage=teacher first.*ckpt.teacher=PATH, or "
        r"student.module.teacher_checkpoint=null to go without it$",
    ):
        check_stage_options(compose("stage=student"))
    with pytest.raises(
        ConfigError, match=r"needs a teacher checkpoint, not found: ckpt.teacher=/nowhere.ckpt"
    ):
        check_stage_options(compose("stage=all", "ckpt.teacher=/nowhere.ckpt"))
    given = tmp_path / "elsewhere.ckpt"
    given.write_bytes(b"")
    cfg = compose("stage=student", f"ckpt.teacher={given}")
    check_stage_options(cfg)
    assert module_arguments(cfg, "student")["teacher_checkpoint"] == str(given)
    alone = compose("stage=restorer", "restorer.flow_from_student=false")
    check_stage_options(alone)
    assert module_arguments(alone, "restorer")["flow_init"] is None


def test_a_stage_trainer_option_reaches_that_stage_only(tmp_path):
    from s2svr_lightning.pipeline.build import build_trainer

    cfg = _compose(
        "+task=demo",
        f"paths.output_dir={tmp_path}",
        "+trainer.gradient_clip_val=0.5",
        "++restorer.trainer.gradient_clip_val=0.03",
        "+restorer.trainer.gradient_clip_algorithm=value",
    )
    validate_config(cfg)
    clips = {
        stage: (t.gradient_clip_val, t.gradient_clip_algorithm)
        for stage in ("teacher", "student", "restorer")
        for t in [build_trainer(cfg, stage, tmp_path, max_steps=4)]
    }
    assert clips == {"teacher": (0.5, None), "student": (0.5, None), "restorer": (0.03, "value")}


def test_a_trainer_option_typo_fails_before_training():
    cfg = _compose("+task=demo", "+restorer.trainer.gradient_clip_vall=0.02")
    with pytest.raises(
        ConfigError, match=r"restorer.trainer has unknown option\(s\) \['gradient_clip_vall'\]"
    ):
        check_stage_options(cfg)
    cfg = _compose("+task=demo", "+trainer.max_stepz=3")
    with pytest.raises(ConfigError, match=r"^trainer has unknown option\(s\) \['max_stepz'\]"):
        check_stage_options(cfg)


def test_multirun_turns_subprocess_ddp_into_spawn(monkeypatch):
    hw = OmegaConf.create({"strategy": "ddp", "devices": 8, "num_nodes": 1})
    assert resolve_strategy(hw)._start_method == "popen"
    monkeypatch.setattr(pipeline.build, "_multirun", lambda: True)
    strategy = resolve_strategy(hw, find_unused_parameters=True)
    assert strategy._start_method == "spawn"
    assert strategy._ddp_kwargs["find_unused_parameters"] is True


def test_missing_dataset_root_is_a_clear_cli_error(tmp_path):
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    proc = subprocess.run(
        [sys.executable, "-m", "s2svr_lightning", "+task=vsr_reds4", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "dataset.root" in proc.stderr and "train_sharp" in proc.stderr and "+task=demo" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "teacher").exists()  # nothing trained


def test_optuna_search_without_the_extra_says_how_to_install_it(tmp_path):
    from s2svr_lightning.__main__ import _importable

    if _importable("hydra_plugins.hydra_optuna_sweeper"):
        pytest.skip("the optional Optuna sweeper is installed here")
    proc = subprocess.run(
        [sys.executable, "-m", "s2svr_lightning", "+task=demo", "hparams_search=optuna"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "pip install -e '.[optuna]'" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ typed config, entry point
def _cli_env() -> dict:
    src = str(Path(s2svr_lightning.__file__).resolve().parents[1])
    return dict(
        os.environ, HYDRA_FULL_ERROR="0", PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", "")
    )


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("data.num_frames=abc", "data.num_frames"),
        ("teacher.max_steps=1.5", "teacher.max_steps"),
        ("callbacks.checkpoint_every_n_steps=often", "callbacks.checkpoint_every_n_steps"),
        ("+teacher.max_stepz=3", "teacher.max_stepz"),
    ],
)
def test_a_wrong_type_or_unknown_key_is_one_line_naming_it(override, named, tmp_path):
    # the real command line, with a safety-net timeout (the check imports neither torch nor Lightning)
    proc = subprocess.run(
        [sys.executable, "-m", "s2svr_lightning", "+task=demo", override],
        capture_output=True,
        text=True,
        env=_cli_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {named}: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("results.json")) and not list(tmp_path.rglob("teacher"))  # nothing ran


def test_the_type_check_comes_before_torch_and_lightning_are_imported(tmp_path):
    code = (
        "import sys\n"
        "sys.argv = ['s2svr-train', '+task=demo', 'data.num_frames=abc']\n"
        "from s2svr_lightning.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print(e)\n"
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_cli_env(), cwd=tmp_path, timeout=60
    )
    assert proc.stdout.splitlines() == [
        "error: data.num_frames: Value 'abc' of type 'str' could not be converted to Integer",
        "[]",
    ], proc.stdout + proc.stderr


def test_s2svr_train_entry_point_prints_the_config(tmp_path):
    # what the installed `s2svr-train` script runs: main() called from a module that is not __main__
    code = "import sys; from s2svr_lightning.__main__ import main; sys.argv[0] = 's2svr-train'; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "+task=demo", "--cfg", "job"],
        capture_output=True,
        text=True,
        env=_cli_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    printed = OmegaConf.create(proc.stdout)
    assert (
        printed.task_name == "demo"
        and printed.data._target_ == "s2svr_lightning.data.VideoRestorationDataModule"
    )
    assert printed.restorer.module.flow_freeze_steps == 600  # the demo's value, from its YAML


def test_the_schema_types_and_the_yaml_holds_the_defaults():
    from s2svr_lightning.conf import check_schema

    cfg = check_schema(_compose("+task=demo", "paths.output_dir=/tmp/unused"))
    assert cfg.restorer.module.flow_freeze_steps == 600
    assert _compose("+task=vsr_reds4").restorer.module.flow_freeze_steps == 10000
    assert OmegaConf.select(cfg, "restorer.module.kind") == "vsr"  # interpolated from the task
    with pytest.raises(ConfigError, match=r"^seed: Value 'x'"):
        check_schema(_compose("+task=demo", "seed=x"))
    # open mappings take the target's other options
    assert check_schema(_compose("+task=demo", "+data.mirror=true")).data.mirror is True


def test_kind_and_scale_come_from_the_task_definition():
    with pytest.raises(ConfigError, match="expected a task kind"):
        validate_config(_compose("+task=demo", "kind=sr", "paths.output_dir=/tmp/unused"))
    with pytest.raises(ConfigError, match=r"degradation options of the deblur task.*\['qp'\]"):
        validate_config(_compose("+task=demo_deblur", "+degradation.qp=37", "paths.output_dir=/tmp/unused"))
    assert pipeline.format_table({}, kind="cve").count("\n") == 1  # header only, no stage ran


class TinyDataModule(lightning.LightningDataModule):
    """A DataModule of one's own, selected by ``data._target_``: it records its options."""

    def __init__(self, **options):
        super().__init__()
        self.options = options


def test_datamodule_callbacks_loggers_and_trainer_are_chosen_from_config(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, Timer
    from lightning.pytorch.loggers import CSVLogger

    from s2svr_lightning.lit.callbacks import PlainProgressBar
    from s2svr_lightning.pipeline.build import build_datamodule, build_trainer
    from s2svr_lightning.pipeline.loggers import StageWandbLogger

    cfg = _compose(
        "+task=demo",
        f"paths.output_dir={tmp_path}",
        f"data._target_={TinyDataModule.__module__}.TinyDataModule",
        "callbacks=early_stopping",
        "+callbacks.extra.timer._target_=lightning.pytorch.callbacks.Timer",
        "logger=many",
        "logger.wandb.mode=offline",
        "+trainer.accumulate_grad_batches=2",
    )
    dm = build_datamodule(cfg, "teacher")
    assert isinstance(dm, TinyDataModule)
    assert (
        dm.options["num_frames"] == 3
        and dm.options["task"] == "vsr"
        and dm.options["dataset"]["height"] == 64
    )

    for stage, monitor, mode in (("teacher", "val/epe", "min"), ("restorer", "val/psnr", "max")):
        trainer = build_trainer(cfg, stage, tmp_path, max_steps=4)
        by_type = {type(cb): cb for cb in trainer.callbacks}
        assert {Timer, EarlyStopping, LearningRateMonitor, ModelCheckpoint, PlainProgressBar} <= set(by_type)
        early = by_type[EarlyStopping]
        assert (early.monitor, early.mode, early.patience) == (monitor, mode, 5)
        best = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor]
        assert [(cb.monitor, cb.mode, cb.save_top_k) for cb in best] == [(monitor, mode, 1)]
        csv, wandb = trainer.loggers
        assert isinstance(csv, CSVLogger) and Path(csv.save_dir) == tmp_path / stage
        assert isinstance(wandb, StageWandbLogger) and wandb._prefix == stage
        assert trainer.accumulate_grad_batches == 2 and trainer.max_steps == 4
    assert build_trainer(cfg, "test", tmp_path).loggers[1]._prefix == ""  # test/psnr, not test/test/psnr


def test_a_bad_target_or_callback_is_a_config_error():
    cfg = _compose("+task=demo", "restorer.module._target_=s2svr_lightning.lit.NoSuchModule")
    with pytest.raises(ConfigError, match=r"restorer.module._target_: cannot import"):
        check_stage_options(cfg)
    with pytest.raises(
        ConfigError, match=r"^logger._target_: cannot import nope.Logger \(ModuleNotFoundError"
    ):
        check_stage_options(_compose("+task=demo", "logger._target_=nope.Logger"))
    cfg = _compose(
        "+task=demo",
        "+callbacks.extra.bad._target_=lightning.pytorch.callbacks.EarlyStopping",
        "+callbacks.extra.bad.monitor=val/psnr",
        "+callbacks.extra.bad.mode=sideways",
    )
    with pytest.raises(ConfigError, match=r"callbacks.extra.bad: .*sideways"):
        check_stage_options(cfg)


def test_rich_progress_bar_without_rich_says_how_to_install_it():
    from s2svr_lightning.__main__ import _importable

    if _importable("rich"):
        pytest.skip("rich is installed here")
    with pytest.raises(ConfigError, match=r"^callbacks.extra.rich_progress_bar: .*pip install -U rich"):
        check_stage_options(_compose("+task=demo", "callbacks=rich"))


def test_training_step_settings_compose_and_bad_values_are_refused():
    from s2svr_lightning.conf import check_schema

    cfg = validate_config(
        _compose(
            "+task=demo", "model.overrides.checkpointing=step", "compile=true", "paths.output_dir=/tmp/unused"
        )
    )
    assert cfg.restorer.module.model_overrides.checkpointing == "step"
    assert cfg.restorer.module.compile is True and cfg.predict.compile is True  # one switch for both
    assert cfg.restorer.module.model_overrides.channels == 32  # the demo's overrides stay
    check_stage_options(cfg)
    assert _compose("+task=vsr_reds4").model.overrides.checkpointing == "none"
    bf16 = _compose("+task=demo", "hardware=cpu_bf16").hardware
    assert (bf16.accelerator, bf16.devices, bf16.precision) == ("cpu", 1, "bf16-mixed")
    with pytest.raises(ConfigError, match=r"^compile: Value 'often'"):
        check_schema(_compose("+task=demo", "compile=often"))
    with pytest.raises(
        ConfigError, match="model.overrides.checkpointing must be one of none, step, step_flow"
    ):
        validate_config(_compose("+task=demo", "model.overrides.checkpointing=layer"))


def test_unnamed_runs_get_a_millisecond_stamp_and_named_runs_their_name():
    import re

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        plain = compose(config_name="config", overrides=["+task=demo"], return_hydra_config=True)
        named = compose(
            config_name="config", overrides=["+task=demo", "run_name=exp1"], return_hydra_config=True
        )
    # two seeds launched together once shared a folder stamped to the second and overwrote each other
    stamp = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{3}"
    assert re.fullmatch(rf"outputs/demo/runs/{stamp}", str(plain.hydra.run.dir))
    assert str(named.hydra.run.dir) == "outputs/demo/exp1"
    assert re.fullmatch(rf"outputs/demo/multiruns/{stamp}", str(plain.hydra.sweep.dir))
