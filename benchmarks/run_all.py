"""All benchmarks in one run (``make bench``): inference speed, streaming memory, training step time, data
loading.

Prints one markdown document: the machine, then one table per measurement. Every ratio in it (fraction of
the conv rate, bf16 speed-up, memory growth) is measured side by side in this same run.

Run: ``python benchmarks/run_all.py [--quick] [--json PATH] [--only speed,memory,train,data]``.
``--quick`` is a smoke run at tiny sizes (a minute or so); the full run takes tens of minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import data_loading  # noqa: E402
import memory  # noqa: E402
import speed  # noqa: E402
import train_step  # noqa: E402

SECTIONS = ("speed", "memory", "train", "data")


def machine() -> dict:
    """CPU model, threads, library versions, bf16 support."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "bf16_units": speed.bf16_supported(),
    }


def run(
    sections: Sequence[str], *, quick: bool, json_path: str | None = None, threads: int | None = None
) -> dict:
    """Run the chosen measurements; returns ``{"machine", "speed", "memory", "train", "data"}`` rows.

    With ``json_path``, the results so far are written there after each measurement (a long run that is
    stopped keeps what it finished).
    """

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    benches = {
        "speed": (speed.bench_speed, speed.quick_settings),
        "memory": (memory.bench_memory, memory.quick_settings),
        "train": (train_step.bench_train_step, train_step.quick_settings),
        "data": (data_loading.bench_data_loading, data_loading.quick_settings),
    }
    results: dict = {"machine": machine(), "quick": quick}
    results["threads"] = threads or results["machine"]["threads"]
    start = time.perf_counter()
    for name in SECTIONS:
        if name not in sections:
            continue
        bench, quick_settings = benches[name]
        kwargs = quick_settings() if quick else {}
        if name != "memory":
            kwargs["threads"] = threads
        results[name] = bench(log=log, **kwargs)
        results["seconds"] = time.perf_counter() - start
        if json_path:
            Path(json_path).write_text(json.dumps(results, indent=2, default=str))
    results["seconds"] = time.perf_counter() - start
    results["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    return results


def render(results: dict) -> str:
    """The markdown document of a :func:`run` result."""
    m = results["machine"]
    lines = [
        "# s2svr-lightning benchmarks" + (" (--quick smoke run, tiny sizes)" if results.get("quick") else ""),
        "",
        f"{m['cpu']}, {m.get('cores', '?')} cores, {m['threads']} threads, torch {m['torch']}, "
        f"Python {m['python']}, "
        f"bf16 units: {'yes' if m['bf16_units'] else 'no'}; total {results['seconds']:.0f} s; load average "
        f"{m.get('load_average_1min', float('nan')):.1f} at the start, "
        f"{m.get('load_average_1min_end', float('nan')):.1f} at the end (other processes share the cores).",
    ]
    if "speed" in results:
        lines += [
            "",
            f"## Inference (streaming), per output frame ({results.get('threads')} thread(s) for wall time)",
            "",
            "`ms / frame`, `frames/s`: wall time with every thread. `% of conv rate` = 100 x (GMAC per"
            " frame / CPU time per frame) / the rate of a large 3x3 conv (the network's width, same size,"
            " best layout, same precision) measured right after each frame; both on one thread in CPU"
            " time, which the other processes of a shared machine do not inflate. `x fp32` likewise.",
            "",
            speed.markdown_table(results["speed"], speed.COLUMNS),
        ]
    if "memory" in results:
        lines += [
            "",
            "## Peak resident memory of `restore` (same video, first N frames)",
            "",
            speed.markdown_table(results["memory"], memory.COLUMNS),
        ]
    if "train" in results:
        lines += [
            "",
            f"## Training step per setting (batch 1, flow net trained jointly, {results.get('threads')} "
            "thread(s))",
            "",
            "Each row in its own process. `/ fp32`: over the fp32 row of the same preset and sample, this"
            " run. `step`, `step_flow`: activation checkpointing (`model.overrides.checkpointing`); `bf16`:"
            " `precision=bf16-mixed`; `compile`: `compile=true` (first step includes the compilation).",
            "",
            speed.markdown_table(results["train"], train_step.COLUMNS),
        ]
    if "data" in results:
        lines += [
            "",
            "## Data loading (training samples at each recipe's size, one torch thread, files in page cache)",
            "",
            data_loading.render(results["data"], results.get("train")),
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run at tiny sizes")
    p.add_argument("--json", default=None, help="also write every row as JSON to this path")
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the wall-time speed pass and of training (default: torch's; on a busy machine "
        "1 avoids OpenMP threads waiting on each other)",
    )
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"expected --only from {', '.join(SECTIONS)}, got {', '.join(unknown)}")
    results = run(sections, quick=args.quick, json_path=args.json, threads=args.threads)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
