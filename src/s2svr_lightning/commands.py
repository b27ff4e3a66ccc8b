"""What the commands do that a library must not: the package's version, ``--version``, and the
process-wide settings of a command's process.

``import s2svr_lightning`` changes nothing in the importing process (no environment variables, no
torch settings, no warnings filters, no logging handlers). The commands (``s2svr-train`` /
``python -m s2svr_lightning``, ``s2svr-restore``, ``s2svr-prepare``, ``s2svr-report``, ``s2svr-score``,
``s2svr-flow``) own their process and set it up with :func:`apply_process_settings` before torch is imported.

Importing this module is cheap (the standard library only).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

__all__ = [
    "DISTRIBUTION",
    "PROCESS_ENV",
    "command_parser",
    "apply_process_settings",
    "flow",
    "package_version",
    "prepare",
    "report",
    "restore",
    "started_as_module_command",
    "train",
    "version_line",
]

DISTRIBUTION = "s2svr-lightning"

# Environment variables a command sets for its own process and the processes it starts (DDP ranks,
# DataLoader workers), unless the user has set them. OMP_WAIT_POLICY is read by OpenMP when torch is
# loaded, so it must be set before the first ``import torch``. Idle OpenMP threads then sleep instead of
# spinning: on 2 cores beside another busy process, 2 spinning threads ran a 64-channel 3x3 conv at 32x32
# in 72-95 ms, 2 passive threads in 18-25 ms and 1 thread in 26-35 ms (benchmarks/OPTIMISATIONS.md,
# "Threads on a busy machine").
PROCESS_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def package_version() -> str:
    """The installed distribution's version; in a source tree that is not installed, the version in its
    ``pyproject.toml`` with ``+source`` appended; ``0+unknown`` if neither is found."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return "0+unknown"
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    if project and re.search(rf'^name\s*=\s*"{DISTRIBUTION}"', project.group(1), flags=re.M):
        found = re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), flags=re.M)
        if found:
            return f"{found.group(1)}+source"
    return "0+unknown"


def version_line() -> str:
    """What ``--version`` prints: ``s2svr-lightning <version> from <package folder> (Python X.Y.Z)``, the
    folder saying which copy of the package runs (an installed wheel, an editable checkout)."""
    python = ".".join(str(v) for v in sys.version_info[:3])
    return f"{DISTRIBUTION} {package_version()} from {Path(__file__).resolve().parent} (Python {python})"


class _PrintVersion(argparse.Action):
    """Prints :func:`version_line` as it is (argparse's own version action wraps long lines) and exits."""

    def __init__(
        self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_line())
        parser.exit()


def command_parser(prog: str, description: str, **kwargs: object) -> argparse.ArgumentParser:
    """The argument parser of a command, with ``--version`` (prints :func:`version_line` and exits 0);
    ``kwargs`` go to :class:`argparse.ArgumentParser` (``usage``, ...)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, **kwargs)
    parser.add_argument("--version", action=_PrintVersion, help="print the version and exit")
    return parser


def apply_process_settings() -> None:
    """The command's process-wide settings (:data:`PROCESS_ENV`, each only where the user has not set it).

    Called by the commands' entry points before torch is imported; a library import never calls it.
    """
    for name, value in PROCESS_ENV.items():
        os.environ.setdefault(name, value)


def _module_after_m(argv: Sequence[str]) -> str | None:
    """The module of ``python [options] -m MODULE ...`` (``sys.orig_argv``), else None."""
    takes_value = {"-W", "-X", "--check-hash-based-pycs"}
    args = iter(argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None)
        if arg.startswith("-m"):
            return arg[2:]
        if arg in takes_value:
            next(args, None)
        elif arg == "-c" or arg == "-" or not arg.startswith("-"):
            return None
    return None


def started_as_module_command() -> bool:
    """True while Python is locating the module of ``python -m s2svr_lightning[.<module>]`` (then
    ``sys.argv[0]`` is ``"-m"``): the process was started to run one of this package's commands."""
    if sys.argv[:1] != ["-m"]:
        return False
    module = _module_after_m(getattr(sys, "orig_argv", []))
    return module is not None and module.split(".")[0] == "s2svr_lightning"


# ------------------------------------------------------------------------------------ console scripts
def _entry(target: str, prog: str) -> Callable[[], None]:
    module_name, function = target.split(":")

    def entry() -> None:
        apply_process_settings()  # before the command's module imports torch
        main = getattr(importlib.import_module(module_name), function)
        code = main()
        sys.exit(code if isinstance(code, int) else 0)

    entry.__name__ = prog.replace("-", "_")
    entry.__doc__ = f"The ``{prog}`` command: the process settings, then ``{target}``."
    return entry


train = _entry("s2svr_lightning.__main__:main", "s2svr-train")
restore = _entry("s2svr_lightning.restore.cli:main", "s2svr-restore")
prepare = _entry("s2svr_lightning.prepare:main", "s2svr-prepare")
report = _entry("s2svr_lightning.report:main", "s2svr-report")
score = _entry("s2svr_lightning.score:main", "s2svr-score")
flow = _entry("s2svr_lightning.flow:main", "s2svr-flow")
