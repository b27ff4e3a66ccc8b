"""The suite's per-test timeout: a hung test fails naming itself, and the tests after it still run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_hung_test_fails_by_name_and_the_rest_runs(tmp_path):
    (tmp_path / "test_hangs.py").write_text(
        "import threading\n\n"
        "def test_hangs():\n"
        "    threading.Event().wait()  # never set\n\n"
        "def test_after():\n"
        "    assert True\n"
    )
    # the suite's own settings (pyproject.toml), with a short timeout; two xdist workers as in make test
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path)]
        + ["-p", "no:cacheprovider", "-n", "2", "--timeout", "3", str(tmp_path / "test_hangs.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    # under xdist the timed-out worker is ended and replaced; the summary names the test
    assert "FAILED" in out and "test_hangs.py::test_hangs" in out, out
    assert "1 failed, 1 passed" in out, out
