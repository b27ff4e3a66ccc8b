"""The house plan held in code: the import-linter contracts of pyproject.toml (no import circle, no
upward import) are kept. The same check as `make lint`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import s2svr_lightning

REPO = Path(__file__).resolve().parents[1]


def _lint_imports() -> str | None:
    beside = Path(sys.executable).with_name("lint-imports")  # the test's own environment first
    return str(beside) if beside.is_file() else shutil.which("lint-imports")


def test_import_contracts_are_kept():
    tool = _lint_imports()
    if tool is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    # the package the tests import, which is this checkout's (not another install's)
    src = str(Path(s2svr_lightning.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([tool, "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
