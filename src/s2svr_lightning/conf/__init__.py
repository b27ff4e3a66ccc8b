"""The Hydra configs (the YAML files of this folder) and their schema.

``config.yaml`` and one folder per group (task, dataset, model, stage, hardware, logger, callbacks, paths,
debug, hparams_search, recipe) hold every default. This module holds only the *types* of the keys that
the pipeline reads (dataclasses whose fields have no defaults of their own), so that a wrong type or an
unknown key is refused right after composition, with one line that names the key, before torch or
Lightning is imported. Open mappings (``dataset``, ``<stage>.module``, ``logger``, ...) take any keys:
their targets check them (``pipeline.check_stage_options``).

Importing this module is cheap (omegaconf only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

__all__ = ["CONF_DIR", "TASKS", "ConfigError", "check_schema", "schema"]

CONF_DIR = Path(__file__).resolve().parent
# the task names are the files of conf/task (a new task is a new file, nothing else to edit)
TASKS = tuple(sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml")))


class ConfigError(ValueError):
    """The configuration cannot run: the message says what to change."""


def _run_folder(run_name: Any, stamp: Any) -> str:
    """``hydra.run.dir``'s last part: the run's name when given (a stable folder), else a timestamp."""
    return str(run_name) if run_name not in (None, "") else f"runs/{stamp}"


if not OmegaConf.has_resolver("s2svr_run_folder"):
    OmegaConf.register_new_resolver("s2svr_run_folder", _run_folder)


# ------------------------------------------------------------------------------------------------ schema
# Fields are MISSING: the values come from the YAML files, the schema only types them.
@dataclass
class ModelSchema:
    name: str = MISSING
    overrides: dict[str, Any] = MISSING


@dataclass
class StageRunSchema:
    run: list[str] = MISSING


@dataclass
class HardwareSchema:
    accelerator: str = MISSING
    devices: Any = MISSING  # an int, a list of ids, or "auto"
    num_nodes: int = MISSING
    strategy: str = MISSING
    precision: str = MISSING
    sync_batchnorm: bool = MISSING
    matmul_precision: str | None = MISSING
    process_group_backend: str | None = None  # only the DDP files name one


@dataclass
class CallbacksSchema:
    checkpoint_every_n_steps: int = MISSING
    log_every_n_steps: int = MISSING
    model_summary: bool = MISSING
    progress_bar: Any = MISSING  # auto | true | false
    progress_every_n_steps: int = MISSING
    extra: dict[str, Any] = MISSING


@dataclass
class PathsSchema:
    log_dir: str = MISSING
    output_dir: str | None = MISSING


@dataclass
class DebugSchema:
    max_steps: int | None = None
    val_every_n_steps: int | None = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    num_workers: int | None = None
    trainer: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSchema:  # open: any other VideoRestorationDataModule option may be added (``+data.mirror=true``)
    num_frames: int = MISSING
    crop_size: int | None = MISSING
    batch_size: int = MISSING
    num_workers: int = MISSING


@dataclass
class MetricsSchema:
    y_channel: bool = MISSING
    border: int = MISSING
    reduction: str = MISSING


@dataclass
class CkptSchema:
    teacher: str | None = MISSING
    student: str | None = MISSING
    restorer: str | None = MISSING


@dataclass
class BestSchema:
    monitor: str = MISSING
    mode: str = MISSING
    save_top_k: int = MISSING


@dataclass
class FitStageSchema:
    max_steps: int = MISSING
    val_every_n_steps: int = MISSING
    limit_val_batches: Any = MISSING  # a count (int) or a fraction (float)
    best: BestSchema = field(default_factory=BestSchema)
    data: dict[str, Any] = MISSING
    module: dict[str, Any] = MISSING


@dataclass
class RestorerStageSchema(FitStageSchema):
    flow_from_student: bool = MISSING


@dataclass
class TestSchema:
    ckpt: str = MISSING
    limit_batches: Any = MISSING
    save_outputs: bool = MISSING
    save_images: bool = MISSING
    data: dict[str, Any] = MISSING


@dataclass
class PredictSchema:
    input: str | None = MISSING
    output: str | None = MISSING
    precision: str = MISSING
    tile: int | None = MISSING
    overwrite: bool = MISSING


@dataclass
class CurrentSchema:
    stage: str | None = MISSING
    stage_dir: str | None = MISSING
    log_prefix: str | None = MISSING


@dataclass
class Schema:
    task_name: str | None = MISSING
    kind: str = MISSING
    scale: int = MISSING
    degradation: dict[str, Any] = MISSING
    seed: int = MISSING
    optimized_metric: str | None = MISSING
    print_table: bool = MISSING
    run_name: str | None = MISSING
    resume: str = MISSING
    dataset: dict[str, Any] = MISSING
    model: ModelSchema = field(default_factory=ModelSchema)
    stage: StageRunSchema = field(default_factory=StageRunSchema)
    hardware: HardwareSchema = field(default_factory=HardwareSchema)
    logger: dict[str, Any] = MISSING
    callbacks: CallbacksSchema = field(default_factory=CallbacksSchema)
    paths: PathsSchema = field(default_factory=PathsSchema)
    debug: DebugSchema | None = None
    data: DataSchema = field(default_factory=DataSchema)
    metrics: MetricsSchema = field(default_factory=MetricsSchema)
    ckpt: CkptSchema = field(default_factory=CkptSchema)
    teacher: FitStageSchema = field(default_factory=FitStageSchema)
    student: FitStageSchema = field(default_factory=FitStageSchema)
    restorer: RestorerStageSchema = field(default_factory=RestorerStageSchema)
    test: TestSchema = field(default_factory=TestSchema)
    predict: PredictSchema = field(default_factory=PredictSchema)
    trainer: dict[str, Any] = MISSING
    current: CurrentSchema = field(default_factory=CurrentSchema)


def schema() -> DictConfig:
    """An empty structured config of :class:`Schema` (its open mappings accept any keys)."""
    base = OmegaConf.structured(Schema)
    for node in ("data",):  # typed where the pipeline reads keys, open for the target's other options
        OmegaConf.set_struct(base[node], False)
    return base


def _one_line(text: str) -> str:
    return " ".join(str(text).split("\n")[0].split())


def check_schema(cfg: DictConfig) -> DictConfig:
    """``cfg`` merged onto the schema: the typed config, or :class:`ConfigError` naming the wrong key.

    The ``hydra`` node (present when the config was composed with it) is checked by Hydra, not here.
    """
    plain = cfg
    if "hydra" in cfg:
        plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        typed = OmegaConf.merge(schema(), plain)
    except ConfigKeyError as err:
        raise ConfigError(
            f"{err.full_key}: unknown key (not in the config; check its spelling, see "
            "`python -m s2svr_lightning +task=demo --cfg job` for every key)"
        ) from None
    except ValidationError as err:
        raise ConfigError(f"{err.full_key}: {_one_line(err.msg)}") from None
    except OmegaConfBaseException as err:  # e.g. a mapping given where a value is expected
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(f"{key}: {_one_line(getattr(err, 'msg', err))}") from None
    return typed
