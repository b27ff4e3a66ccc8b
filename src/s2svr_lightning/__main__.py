"""``python -m s2svr_lightning +task=<task> [overrides]`` (also the ``s2svr-train`` command).

The tasks are the files of ``s2svr_lightning/conf/task`` (demo, demo_deblur, demo_cve, deblur_gopro,
vsr_reds4, vsr_vimeo, cve_mfqe). The configs live in ``s2svr_lightning/conf`` (the repository's top-level
``conf`` links there) and are found by their absolute path, so this works from a checkout and from an
installed wheel alike. The composed config is type-checked before torch or Lightning is imported; see
``s2svr_lightning.pipeline`` for what runs. ``--version`` prints the version before Hydra reads the
command line.
"""

from __future__ import annotations

import importlib.util
import sys

import hydra
from omegaconf import DictConfig

from s2svr_lightning.commands import apply_process_settings, version_line
from s2svr_lightning.conf import CONF_DIR, ConfigError, check_schema


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _require_optional_plugins(argv: list[str]) -> None:
    """A clear message for ``hparams_search=optuna`` without the optional extra (Hydra's own error only
    says that the sweeper config is missing)."""
    wants_optuna = any(
        a.split("=", 1)[0].lstrip("+~") == "hparams_search" and a.endswith("optuna") for a in argv
    )
    if wants_optuna and not _importable("hydra_plugins.hydra_optuna_sweeper"):
        sys.exit(
            "error: hparams_search=optuna needs the optional Optuna sweeper: pip install -e '.[optuna]' "
            "(hydra-optuna-sweeper with optuna<3, sqlalchemy<2, alembic<1.14)"
        )


def _check_debug_argument(argv: list[str]) -> None:
    """``debug`` is a group of the task files (loaded after the task's own values, so that it wins over
    them: conf/config.yaml), where Hydra's own errors for ``debug=`` without a task or for ``+debug=``
    point the wrong way."""
    keys = {a.split("=", 1)[0] for a in argv if "=" in a}
    if keys & {"+debug", "++debug"}:
        sys.exit("error: debug=NAME takes no +: each task file holds the debug group (+task=demo debug=fast)")
    if "debug" in keys and not keys & {"+task", "++task", "task"}:
        sys.exit("error: debug=NAME goes with a task: add +task=<name> (e.g. +task=demo debug=fast)")


# An absolute config path: Hydra reads it as a folder, whatever module the entry point was called from
# (a relative path would be looked up as the module `s2svr_lightning.conf` when called as `s2svr-train`).
@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        cfg = check_schema(cfg)  # types and keys, before anything heavy is imported
    except ConfigError as err:
        sys.exit(f"error: {err}")
    from s2svr_lightning.data.errors import DatasetError
    from s2svr_lightning.pipeline import run

    try:
        return run(cfg)
    except (ConfigError, DatasetError) as err:
        # configuration and data problems: the message is the whole story, no traceback
        sys.exit(f"error: {err}")


def main() -> None:
    if "--version" in sys.argv[1:]:  # before Hydra, which would read it as an override
        print(version_line())
        sys.exit(0)
    apply_process_settings()  # before anything imports torch
    _require_optional_plugins(sys.argv[1:])
    _check_debug_argument(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
