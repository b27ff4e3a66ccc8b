"""Hydra configs: every task composes, errors are clear and come before any training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_module_option_typo_fails_before_training():
    cfg = _compose("+task=demo", "+restorer.module.flow_lrr=1e-4")
    with pytest.raises(
        ConfigError, match=r"restorer.module has unknown option\(s\) \['flow_lrr'\].*'flow_lr'"
    ):
        check_stage_options(cfg)
    cfg = _compose("+task=demo", "+teacher.data.crop_size=30")
    with pytest.raises(ConfigError, match="teacher stage's data options"):
        check_stage_options(cfg)


def test_multirun_turns_subprocess_ddp_into_spawn(monkeypatch):
    hw = OmegaConf.create({"strategy": "ddp", "devices": 8, "num_nodes": 1})
    assert resolve_strategy(hw)._start_method == "popen"
    monkeypatch.setattr(pipeline, "_multirun", lambda: True)
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
