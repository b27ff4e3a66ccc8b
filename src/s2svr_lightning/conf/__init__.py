"""The Hydra configs (the YAML files of this folder) and their schema.

``config.yaml`` and one folder per group (task, dataset, model, stage, hardware, logger, callbacks, paths,
debug, hparams_search, recipe) hold every default. This module holds only the *types* of the keys that
the pipeline reads (dataclasses whose fields have no defaults of their own), so that a wrong type or an
unknown key is refused right after composition, with one line that names the key, before torch or
Lightning is imported. Open mappings (``dataset``, ``<stage>.module``, ``logger``, ...) take any keys:
their targets check them (``pipeline.check_stage_options``). It also registers the resolvers that the YAML
files use: the run folder's name (``s2svr_run_folder``, ``s2svr_ms``) and a stage's hand-off to the next
(``stage_ckpt``, :func:`stage_checkpoint`).

Importing this module is cheap (omegaconf only).
"""

from __future__ import annotations

import re
from dataclasses import field, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

__all__ = ["CONF_DIR", "TASKS", "ConfigError", "check_schema", "schema", "stage_checkpoint", "stage_paths"]

CONF_DIR = Path(__file__).resolve().parent
# the task names are the files of conf/task (a new task is a new file, nothing else to edit)
TASKS = tuple(sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml")))


class ConfigError(ValueError):
    """The configuration cannot run: the message says what to change."""


def _milliseconds(stamp: Any) -> str:
    """A ``${now:...%f}`` stamp cut from microseconds to milliseconds: two runs started in the same second
    (two seeds launched together) once shared one folder and overwrote each other's results."""
    stamp = str(stamp)
    return stamp[:-3] if re.search(r"_\d{6}$", stamp) else stamp


def _run_folder(run_name: Any, stamp: Any) -> str:
    """``hydra.run.dir``'s last part: the run's name when given (a stable folder), else a timestamp."""
    return str(run_name) if run_name not in (None, "") else f"runs/{stamp}"


def stage_paths(out: Path, stage: str) -> tuple[Path, Path, Path]:
    """``last.ckpt``, ``final.ckpt`` (the "finished" marker) and ``metrics.json`` of a stage in the run
    folder ``out``."""
    ckpt_dir = out / stage / "checkpoints"
    return ckpt_dir / "last.ckpt", ckpt_dir / "final.ckpt", out / stage / "metrics.json"


def stage_checkpoint(cfg: DictConfig, stage: str, *, needed_by: str, key: str | None = None) -> Path:
    """The checkpoint that ``stage`` hands on: ``ckpt.<stage>`` when given, else the run folder's
    ``final.ckpt`` of ``stage``, which must exist unless ``stage`` runs earlier in this run. ``key``: the
    config key that takes it (the message says it may be null)."""
    given = OmegaConf.select(cfg, f"ckpt.{stage}")
    path = Path(given) if given else stage_paths(Path(cfg.paths.output_dir), stage)[1]
    if path.is_file() or (not given and stage in cfg.stage.run):
        return path
    where = f"ckpt.{stage}={given}" if given else f"{path} (the {stage} stage of this run folder)"
    without = f", or {key}=null to go without it" if key else ""
    raise ConfigError(
        f"{needed_by} needs a {stage} checkpoint, not found: {where}. Run stage={stage} first in the same "
        f"run folder, use stage=all, or pass ckpt.{stage}=PATH{without}"
    )


def _stage_ckpt(stage: str, wanted: Any = True, *, _root_: DictConfig, _node_: Any) -> str | None:
    """``${stage_ckpt:teacher}``: a stage's hand-off to the next (:func:`stage_checkpoint`), resolved when
    the next stage's module is built; ``${stage_ckpt:student,false}`` is null."""
    if not wanted:
        return None
    key = _node_._get_full_key(None)
    return str(stage_checkpoint(_root_, stage, needed_by=key, key=key))


for _name, _resolver in (
    ("s2svr_run_folder", _run_folder),
    ("s2svr_ms", _milliseconds),
    ("stage_ckpt", _stage_ckpt),
):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


# ------------------------------------------------------------------------------------------------ schema
def _typed(class_name: str, /, **fields: Any) -> type:
    """A dataclass of typed fields without defaults (MISSING: the values come from the YAML files); a nested
    schema starts empty."""
    specs = []
    for key, spec in fields.items():
        if is_dataclass(spec):
            specs.append((key, spec, field(default_factory=spec)))
        else:
            specs.append((key, spec, MISSING))
    return make_dataclass(class_name, specs)


_Open = dict[str, Any]  # an open mapping: any keys (checked by the target that receives them)
_Best = _typed("BestSchema", monitor=str, mode=str, save_top_k=int)
_FIT_STAGE = dict(
    max_steps=int,
    val_every_n_steps=int,
    limit_val_batches=Any,
    best=_Best,
    data=_Open,
    threads=int | None,  # torch threads of this stage; None: hardware.threads
    trainer=_Open,  # Trainer arguments of this stage only
)
# open: any other VideoRestorationDataModule option may be added (``+data.mirror=true``)
_Data = _typed("DataSchema", num_frames=int, crop_size=int | None, batch_size=int, num_workers=int)

Schema = _typed(
    "Schema",
    task_name=str | None,
    kind=str,
    scale=int,
    degradation=_Open,
    seed=int,
    optimized_metric=str | None,
    print_table=bool,
    run_name=str | None,
    resume=str,
    compile=bool,
    dataset=_Open,
    model=_typed("ModelSchema", name=str, overrides=_Open),
    stage=_typed("StageRunSchema", run=list[str]),
    hardware=_typed(
        "HardwareSchema",
        accelerator=str,
        devices=Any,  # an int, a list of ids, or "auto"
        num_nodes=int,
        strategy=str,
        precision=str,
        sync_batchnorm=bool,
        matmul_precision=str | None,
        process_group_backend=str | None,
        threads=int | None,  # torch threads per process; None: torch's default (one per core)
    ),
    logger=_Open,
    callbacks=_typed(
        "CallbacksSchema",
        checkpoint_every_n_steps=int,
        log_every_n_steps=int,
        model_summary=bool,
        progress_bar=Any,  # auto | true | false
        progress_every_n_steps=int,
        extra=_Open,
    ),
    paths=_typed("PathsSchema", log_dir=str, output_dir=str | None),
    data=_Data,
    metrics=_typed("MetricsSchema", y_channel=bool, border=int, reduction=str),
    ckpt=_typed("CkptSchema", teacher=str | None, student=str | None, restorer=str | None),
    teacher=_typed("TeacherSchema", **_FIT_STAGE, module=_Open),
    student=_typed("StudentSchema", **_FIT_STAGE, module=_Open),
    restorer=_typed("RestorerSchema", **_FIT_STAGE, flow_from_student=bool, module=_Open),
    test=_typed(
        "TestSchema",
        ckpt=str,
        limit_batches=Any,
        save_outputs=bool,
        save_images=bool,
        temporal=str,
        flow=str,
        data=_Open,
    ),
    predict=_typed(
        "PredictSchema",
        input=str | None,
        output=str | None,
        device=str,
        precision=str,
        tile=int | str | None,
        overwrite=bool,
        compile=bool,
    ),
    trainer=_Open,
    current=_Open,  # set by the pipeline, per stage
)


def schema() -> DictConfig:
    """An empty structured config of ``Schema`` (its open mappings accept any keys)."""
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
