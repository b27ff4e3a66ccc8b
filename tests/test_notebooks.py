"""The notebooks run top to bottom (at a tiny size), so they never rot; the files in git carry no outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_quickstart_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "expected code cells"
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.slow
def test_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("S2SVR_QUICKSTART_QUICK", "1")
    monkeypatch.setenv("S2SVR_QUICKSTART_RUN", str(tmp_path / "run"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    # the kernelspec's argv is "python", which jupyter_client replaces by this interpreter (the venv's)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('kernel python:', sys.executable)"))
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "quick smoke run" in text
    assert f"kernel python: {sys.executable}" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 3  # flows, LQ / output / HQ strip, PSNR per frame
    # the pipeline ran every stage into the requested folder, and the CLI kept the clip's frame rate
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"teacher", "student", "restorer", "test"} <= set(results)
    assert "5 frames at 24000/1001 fps" in text
    scores = json.loads((tmp_path / "run" / "quickstart_clip" / "metrics.json").read_text())
    assert scores["frames"] == 5 and scores["psnr"] > 0
