"""The sweep report: rows per job sorted by the optimised metric, swept columns, CSV, plot, clear errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml
from PIL import Image

from s2svr_lightning.lit.restorer import RestorerModule
from s2svr_lightning.report import build_report, format_csv, format_markdown, main


def _table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


@pytest.mark.slow
def test_a_two_job_sweep_gives_two_sorted_rows_and_a_plot(tmp_path, capsys):
    # a sweep of the test stage alone over the border crop: two jobs, two scores, no training
    ckpt = tmp_path / "restorer.ckpt"
    module = RestorerModule(
        model="s2svr_vsr", model_overrides={"channels": 8, "num_blocks": 1, "num_layers": 1}
    )
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(ckpt)
    sweep = tmp_path / "sweep"
    args = ["-m", "+task=demo", "stage=test", f"ckpt.restorer={ckpt}", "metrics.border=0,8"]
    args += ["dataset.test_sequences=1", "dataset.frames=3", "logger=csv", "callbacks.progress_bar=false"]
    args += [f"hydra.sweep.dir={sweep}", f"paths.log_dir={tmp_path}"]
    proc = subprocess.run(
        [sys.executable, "-m", "s2svr_lightning", *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    psnr = {job: json.loads((sweep / job / "results.json").read_text())["test"]["psnr"] for job in "01"}

    plot = tmp_path / "report" / "lr.png"
    assert main([str(sweep), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    header, *rows = _table_rows(table)
    assert header[:3] == ["job", "metrics.border", "test.psnr"]
    assert len(rows) == 2
    best, worst = sorted("01", key=lambda job: -psnr[job])
    assert [r[0] for r in rows] == [best, worst]
    assert [float(r[2]) for r in rows] == [pytest.approx(psnr[j], abs=0.005) for j in (best, worst)]
    assert {r[1] for r in rows} == {"0", "8"} and psnr["0"] != psnr["1"]
    assert "`+task=demo`" in table and "`stage=test`" in table  # common overrides, listed once
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 100

    # a single job of the sweep is a run of its own
    assert main([str(sweep / "0"), "--format", "csv"]) == 0
    single = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(single) == 1 and float(single[0]["test.psnr"]) == psnr["0"]
    assert single[0]["metrics.border"] == "0"


def _job(folder: Path, overrides: list[str], results: dict | None, *, optimized: str = "test.psnr") -> None:
    """The files Hydra and the pipeline leave in a job dir."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimized_metric": optimized, "seed": 0}))
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results))


def test_epe_sorts_ascending_failed_jobs_go_last_and_csv_has_every_metric(tmp_path):
    sweep = tmp_path / "sweep"
    epes = {"0": 1.5, "1": 0.7, "2": None, "10": 1.1}
    for job, epe in epes.items():
        results = None if epe is None else {"task": "demo", "scale": 4, "teacher": {"epe": epe, "steps": 2}}
        overrides = ["+task=demo", f"teacher.module.lr={job}e-4", "stage=teacher"]
        _job(sweep / job, overrides, results, optimized="teacher.epe")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    report = build_report(sweep)
    assert report.metric == "teacher.epe" and report.ascending
    assert [j.name for j in report.jobs] == ["1", "10", "0", "2"]  # no results: last
    assert report.swept == ["teacher.module.lr"]
    rows = _table_rows(format_markdown(report))[1:]
    assert [r[:3] for r in rows] == [
        ["1", "1e-4", "0.7"],
        ["10", "10e-4", "1.1"],
        ["0", "0e-4", "1.5"],
        ["2", "2e-4", "-"],
    ]
    assert "No results.json (failed or unfinished): 2" in format_markdown(report)
    table = list(csv.DictReader(io.StringIO(format_csv(report))))
    assert list(table[0])[:5] == ["job", "dir", "task", "teacher.module.lr", "stage"]
    assert [r["teacher.epe"] for r in table] == ["0.7", "1.1", "1.5", ""]
    assert "scale" not in table[0]  # the run's settings are not metrics

    # --metric wins over the jobs' optimized_metric; a PSNR sorts descending
    for job, value in (("0", 30.0), ("1", 31.0), ("10", 29.0)):
        data = json.loads((sweep / job / "results.json").read_text())
        data["test"] = {"psnr": value, "per_sequence": {"a": {"psnr": 99.0}}}
        (sweep / job / "results.json").write_text(json.dumps(data))
    report = build_report(sweep, metric="test.psnr")
    assert not report.ascending and [j.name for j in report.jobs] == ["1", "0", "10", "2"]


def test_plot_of_categorical_and_several_swept_values(tmp_path):
    sweep = tmp_path / "sweep"
    for job, (model, lr, psnr) in enumerate((("s2svr_vsr", 1e-4, 30.0), ("tiny", 1e-2, 28.0))):
        _job(sweep / str(job), [f"model={model}", f"restorer.module.lr={lr}"], {"test": {"psnr": psnr}})
    plot = tmp_path / "plot.png"
    assert main([str(sweep), "--out", str(tmp_path / "report.md"), "--plot", str(plot)]) == 0
    assert "| 0 | s2svr_vsr | 0.0001 | 30.00 |" in (tmp_path / "report.md").read_text()
    with Image.open(plot) as image:
        width, height = image.size
    assert width > 1.5 * height  # two panels side by side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "report.md", "sweep"]  # no temp files


def test_clear_one_line_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("no such folder (expected a run dir or a multirun sweep dir)")
    )
    (tmp_path / "empty" / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "empty" / "0" / ".hydra" / "overrides.yaml").write_text("- a=1\n")
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no results.json found in it or below it" in err and len(err.strip().splitlines()) == 1
    _job(tmp_path / "run", ["a=1"], {"test": {"psnr": 30.0}})
    assert main([str(tmp_path / "run"), "--metric", "test.lpips"]) == 2
    err = capsys.readouterr().err
    assert "metric 'test.lpips' is in no job's results.json" in err and "available: test.psnr" in err
    (tmp_path / "run" / "results.json").write_text("{not json")
    assert main([str(tmp_path / "run")]) == 2
    assert "results.json: not readable JSON" in capsys.readouterr().err
