"""``python -m s2svr_lightning.report RUN_OR_SWEEP_DIR``: one table of a run's or a sweep's jobs.

Each job is a folder that Hydra made (a run dir, or ``<sweep dir>/<job number>`` of a multirun): its
overrides come from ``.hydra/overrides.yaml``, its final metrics from the ``results.json`` the pipeline
writes there. The table has a row per job, sorted by the optimised metric (``--metric``, default: the
jobs' ``optimized_metric``, else ``test.psnr``; best first: EPE-, loss- and time-like metrics ascending,
the rest descending, or as the sweeper's ``direction`` says), a column per swept override (an override
whose value differs between jobs; the others are listed once above the table) and the headline metrics
of each stage.

- ``--format md`` (default): a markdown table; ``--format csv``: every override and every numeric metric
  of ``results.json`` (``test.psnr``, ``restorer.ssim``, ``timings.test``, ...) as columns.
- ``--out FILE``: write the table there (atomically) instead of printing it.
- ``--plot PNG``: the metric against each swept value, one panel per swept override (log x axis for
  positive numbers spanning a factor of 20 or more); a single run plots its one point.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2svr_lightning.commands import command_parser

__all__ = ["Job", "Report", "ReportError", "build_report", "find_jobs", "main", "plot_report"]

DEFAULT_METRIC = "test.psnr"
# the markdown table's metric columns, where some job has them
_HEADLINE = (
    *(f"test.{m}" for m in ("psnr", "ssim", "delta_psnr", "delta_ssim")),
    "restorer.psnr",
    "restorer.ssim",
    "student.epe",
    "teacher.epe",
)
# metrics where lower is better: flow errors, losses, perceptual distances, times
_LOWER_IS_BETTER = ("epe", "loss", "lpips", "error", "seconds")


class ReportError(ValueError):
    """A run or sweep folder that cannot be reported on (the message says which file and why)."""


@dataclass
class Job:
    """One Hydra run dir: its overrides (``key -> value``, as typed) and its ``results.json``."""

    dir: Path
    name: str
    overrides: dict[str, str] = field(default_factory=dict)
    raw_overrides: list[str] = field(default_factory=list)
    results: dict[str, Any] | None = None
    optimized_metric: str | None = None
    direction: str | None = None

    def value(self, metric: str) -> float | None:
        """The number at the dotted path ``metric`` of ``results.json`` (None if absent or not a number)."""
        node: Any = self.results
        for part in metric.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        if isinstance(node, bool) or not isinstance(node, int | float):
            return None
        return float(node)


@dataclass
class Report:
    root: Path
    metric: str
    ascending: bool
    jobs: list[Job]
    swept: list[str]
    common: list[str]
    columns: list[str]


def _natural_key(name: str) -> list:
    from s2svr_lightning.data.media.image_io import natural_key

    return natural_key(name)


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ReportError(f"{path}: cannot read YAML ({str(err).splitlines()[0]})") from None


def _parse_override(text: str) -> tuple[str, str]:
    """``+key=value`` / ``++key=value`` / ``key=value`` / ``~key`` -> ``(key, value)``."""
    if text.startswith("~"):
        key, _, value = text[1:].partition("=")
        return key, f"~{value}" if value else "~"
    key, sep, value = text.lstrip("+").partition("=")
    return key, value if sep else ""


def _read_job(folder: Path, root: Path) -> Job:
    name = folder.relative_to(root).as_posix() if folder != root else folder.name
    job = Job(dir=folder, name=name)
    hydra_dir = folder / ".hydra"
    if (hydra_dir / "overrides.yaml").is_file():
        raw = _load_yaml(hydra_dir / "overrides.yaml") or []
        if not isinstance(raw, list):
            raise ReportError(f"{hydra_dir / 'overrides.yaml'}: expected a list of overrides, got {raw!r}")
        job.raw_overrides = [str(o) for o in raw]
        job.overrides = dict(_parse_override(o) for o in job.raw_overrides)
    if (hydra_dir / "config.yaml").is_file():
        config = _load_yaml(hydra_dir / "config.yaml")
        if isinstance(config, Mapping) and config.get("optimized_metric"):
            job.optimized_metric = str(config["optimized_metric"])
    if (hydra_dir / "hydra.yaml").is_file():
        hydra = (_load_yaml(hydra_dir / "hydra.yaml") or {}).get("hydra", {})
        direction = (hydra.get("sweeper") or {}).get("direction")
        if isinstance(direction, str):
            job.direction = direction
    results = folder / "results.json"
    if results.is_file():
        import json

        try:
            job.results = json.loads(results.read_text())
        except (OSError, ValueError) as err:
            raise ReportError(f"{results}: not readable JSON ({err})") from None
        if not isinstance(job.results, dict):
            raise ReportError(f"{results}: expected a JSON object, got {type(job.results).__name__}")
    return job


def find_jobs(root: str | os.PathLike) -> list[Job]:
    """Every job under ``root``: ``root`` itself if it holds ``results.json``, otherwise each folder below
    it with a ``results.json`` or a ``.hydra/overrides.yaml`` (failed or unfinished jobs have no results),
    in natural order (``2`` before ``10``)."""
    root = Path(root)
    if not root.exists():
        raise ReportError(f"{root}: no such folder (expected a run dir or a multirun sweep dir)")
    if not root.is_dir():
        raise ReportError(f"{root}: not a folder (expected a run dir or a multirun sweep dir)")
    if (root / "results.json").is_file():
        return [_read_job(root, root)]
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        path = Path(folder)
        if path != root and ("results.json" in files or (path / ".hydra" / "overrides.yaml").is_file()):
            found.append(path)
            dirs.clear()  # a job's own sub-folders (stages, logs, outputs) hold no other jobs
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    jobs = [_read_job(p, root) for p in found]
    if not any(j.results is not None for j in jobs):
        raise ReportError(
            f"{root}: no results.json found in it or below it (expected <run>/results.json, or "
            f"<sweep>/<job>/results.json of a multirun; has the run finished a stage?)"
        )
    return sorted(jobs, key=lambda j: _natural_key(j.name))


def lower_is_better(metric: str) -> bool:
    """EPE-, loss-, LPIPS-, error- and time-like metrics (and ``timings.*``) sort ascending."""
    leaf = metric.rsplit(".", 1)[-1].lower()
    return metric.startswith("timings.") or any(word in leaf for word in _LOWER_IS_BETTER)


def _numeric_leaves(node: Any, prefix: str = "") -> dict[str, float]:
    """Every number of the sections of ``results.json`` (stages, timings) by dotted path, leaving out
    the per-sequence tables and the run's own settings (``scale``)."""
    out: dict[str, float] = {}
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key != "per_sequence" and (prefix or isinstance(value, Mapping)):
                out.update(_numeric_leaves(value, f"{prefix}{key}."))
    elif isinstance(node, int | float) and not isinstance(node, bool):
        out[prefix[:-1]] = float(node)
    return out


def build_report(root: str | os.PathLike, *, metric: str | None = None) -> Report:
    """Gather the jobs under ``root`` and sort them by ``metric`` (best first; jobs without it last)."""
    root = Path(root)
    jobs = find_jobs(root)
    if metric is None:
        metric = next((j.optimized_metric for j in jobs if j.optimized_metric), None) or DEFAULT_METRIC
    if not any(j.value(metric) is not None for j in jobs):
        available = sorted({k for j in jobs for k in _numeric_leaves(j.results or {})})
        raise ReportError(
            f"{root}: metric {metric!r} is in no job's results.json (pass --metric; available: "
            f"{', '.join(available) or 'none'})"
        )
    direction = next((j.direction for j in jobs if j.direction and j.optimized_metric == metric), None)
    ascending = direction == "minimize" if direction in ("minimize", "maximize") else lower_is_better(metric)

    def order(job: Job) -> tuple[int, float]:
        v = job.value(metric)
        if v is None or math.isnan(v):
            return (1, 0.0)
        return (0, v if ascending else -v)

    jobs = sorted(jobs, key=order)  # stable: ties keep the natural job order
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    swept = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    common_raw: list[str] = []
    for job in jobs:
        common_raw += [
            o for o in job.raw_overrides if _parse_override(o)[0] not in swept and o not in common_raw
        ]
    columns = [metric] + [c for c in _HEADLINE if c != metric and any(j.value(c) is not None for j in jobs)]
    return Report(root, metric, ascending, jobs, swept, common_raw, columns)


def _fmt(column: str, value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    leaf = column.rsplit(".", 1)[-1]
    if "ssim" in leaf:
        return f"{value:.4f}"
    if "psnr" in leaf:
        return f"{value:.2f}"
    return f"{value:.4g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else "-"


def format_markdown(report: Report) -> str:
    order = "ascending, lower is better" if report.ascending else "descending, higher is better"
    lines = [f"# {report.root}", "", f"{len(report.jobs)} job(s), sorted by `{report.metric}` ({order})."]
    if report.common:
        lines += ["", "Common overrides: " + " ".join(f"`{o}`" for o in report.common)]
    header = ["job", *report.swept, *report.columns]
    lines += ["", "| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for job in report.jobs:
        cells = [job.name, *(job.overrides.get(k, "") for k in report.swept)]
        cells += [_fmt(c, job.value(c)) for c in report.columns]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    missing = [j.name for j in report.jobs if j.results is None]
    if missing:
        lines += ["", f"No results.json (failed or unfinished): {', '.join(missing)}"]
    return "\n".join(lines) + "\n"


def format_csv(report: Report) -> str:
    keys: list[str] = []
    metrics: list[str] = []
    for job in report.jobs:
        keys += [k for k in job.overrides if k not in keys]
        metrics += [m for m in _numeric_leaves(job.results or {}) if m not in metrics]
    metrics = [report.metric] + [m for m in metrics if m != report.metric]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["job", "dir", *keys, *metrics])
    for job in report.jobs:
        leaves = _numeric_leaves(job.results or {})
        row = [job.name, str(job.dir), *(job.overrides.get(k, "") for k in keys)]
        writer.writerow(row + [repr(leaves[m]) if m in leaves else "" for m in metrics])
    return buf.getvalue()


def _as_numbers(values: Sequence[str]) -> list[float] | None:
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return None
    return numbers if all(math.isfinite(x) for x in numbers) else None


def plot_report(report: Report, path: str | os.PathLike) -> Path:
    """A PNG of the metric against each swept override (one panel each; the jobs themselves if none)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        raise ReportError("--plot needs matplotlib: pip install matplotlib") from None
    from s2svr_lightning.atomic import atomic_write_bytes

    scored = [j for j in report.jobs if j.value(report.metric) is not None]
    panels = report.swept or ["job"]
    fig = Figure(figsize=(4.5 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no global pyplot backend
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, key in zip(axes, panels):
        labels = [j.name if key == "job" else j.overrides.get(key, "") for j in scored]
        ys = [j.value(report.metric) for j in scored]
        xs = None if key == "job" else _as_numbers(labels)
        if xs is not None:
            points = sorted(zip(xs, ys))
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-")
            if min(xs) > 0 and max(xs) / min(xs) >= 20:
                ax.set_xscale("log")
        else:
            categories = list(dict.fromkeys(labels))
            ax.plot([categories.index(label) for label in labels], ys, "o")
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        ax.set_xlabel(key)
        ax.set_ylabel(report.metric)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{report.metric} ({'lower' if report.ascending else 'higher'} is better)")
    path = Path(path)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return path


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        prog="python -m s2svr_lightning.report",
        description="One table of every job of a run or multirun sweep: overrides and final metrics, "
        "sorted by the optimised metric; optionally a plot of the metric against each swept value.",
    )
    p.add_argument("dir", help="a run dir (holding results.json) or a multirun sweep dir (<sweep>/<job>/)")
    p.add_argument("--format", choices=("md", "csv"), default="md", help="markdown (default) or CSV")
    p.add_argument(
        "--metric",
        default=None,
        help="dotted path in results.json to sort by "
        f"(default: the jobs' optimized_metric, else {DEFAULT_METRIC})",
    )
    p.add_argument("--out", default=None, help="write the table to this file instead of printing it")
    p.add_argument("--plot", default=None, help="write a PNG of the metric against each swept value")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m s2svr_lightning.report`` (``s2svr-report``); returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        report = build_report(args.dir, metric=args.metric)
        text = format_csv(report) if args.format == "csv" else format_markdown(report)
        if args.out is not None:
            from s2svr_lightning.atomic import atomic_write_bytes

            data = text.encode("utf-8")
            atomic_write_bytes(args.out, lambda f: f.write(data))
        else:
            sys.stdout.write(text)
        if args.plot is not None:
            plot_report(report, args.plot)
    except (ReportError, OSError) as err:
        print(f"s2svr-report: error: {err}", file=sys.stderr)
        return 2
    written = [p for p in (args.out, args.plot) if p is not None]
    if written:
        print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
