"""Thread settings on a quiet and on a busy machine: torch threads x OpenMP wait policy, side by side.

Each setting runs in a fresh process (the wait policy is read when OpenMP starts), on two workloads:

- ``conv``: a 64-channel 3x3 convolution of a ``(4, 64, 32, 32)`` batch, the size of the demos' layers;
- ``demo-step``: one training step of the ``+task=demo`` restorer (32 channels, 1 layer, 1 block, 2 clips of
  5 frames at 16x16 LQ, the flow net frozen as in the demo).

``--busy`` starts a competing process (a 2-thread matrix-multiply loop, like any other training job on the
machine) for the whole run. Times are wall-clock medians of repeated calls; ratios are to the
1-thread row of the same workload and condition.

Run: ``python benchmarks/threads.py [--busy] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS = [  # (threads, OMP_WAIT_POLICY)
    (1, "PASSIVE"),
    (2, "ACTIVE"),
    (2, "PASSIVE"),
]
WORKLOADS = ("conv", "demo-step")


def _workload(name: str):
    import torch

    if name == "conv":
        conv = torch.nn.Conv2d(64, 64, 3, padding=1)
        x = torch.rand(4, 64, 32, 32)

        def run() -> None:
            with torch.no_grad():
                conv(x)

        return run, 50
    if name == "demo-step":
        from s2svr_lightning.losses import charbonnier_loss
        from s2svr_lightning.models import build_model

        torch.manual_seed(0)
        net = build_model("s2svr_vsr", channels=32, num_blocks=1, num_layers=1)
        for p in net.flownet.parameters():
            p.requires_grad_(False)
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
        lq, hq = torch.rand(2, 5, 3, 16, 16), torch.rand(2, 5, 3, 64, 64)

        def run() -> None:
            loss = charbonnier_loss(net(lq), hq, eps=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return run, 5
    raise ValueError(f"expected a workload in {WORKLOADS}, got {name!r}")


def _child(name: str, repeats: int | None) -> None:
    run, default_repeats = _workload(name)
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats or default_repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"ms": 1000.0 * statistics.median(times)}))


def _busy_process() -> subprocess.Popen:
    code = (
        "import torch\ntorch.set_num_threads(2)\na = torch.rand(512, 512)\n"
        "while True:\n    a = (a @ a).clamp_(-1, 1)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def bench_threads(
    *, busy: bool, workloads: Sequence[str] = WORKLOADS, repeats: int | None = None
) -> list[dict]:
    """One row per (workload, setting): median wall ms per call and the ratio to 1 thread."""
    competitor = _busy_process() if busy else None
    rows = []
    try:
        if competitor is not None:
            time.sleep(2.0)
        for name in workloads:
            base = None
            for threads, policy in SETTINGS:
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY=policy)
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
                cmd = [sys.executable, __file__, "--child", name]
                if repeats:
                    cmd += ["--repeats", str(repeats)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                ms = json.loads(out.strip().splitlines()[-1])["ms"]
                base = ms if base is None else base
                rows.append(
                    {
                        "workload": name,
                        "machine": "busy" if busy else "quiet",
                        "threads": threads,
                        "wait_policy": policy,
                        "ms": ms,
                        "ratio_to_1_thread": ms / base,
                    }
                )
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return rows


COLUMNS = [
    ("workload", "workload"),
    ("machine", "machine"),
    ("threads", "torch threads"),
    ("wait_policy", "OMP_WAIT_POLICY"),
    ("ms", "ms / call (median)"),
    ("ratio_to_1_thread", "time / 1 thread"),
]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--busy", action="store_true", help="also measure beside a competing busy process")
    p.add_argument("--quick", action="store_true", help="the conv workload only, few repeats")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(ROOT / "src"))
        _child(args.child, args.repeats)
        return 0
    from speed import markdown_table

    workloads = ("conv",) if args.quick else WORKLOADS
    repeats = 10 if args.quick else None
    rows = bench_threads(busy=False, workloads=workloads, repeats=repeats)
    if args.busy:
        rows += bench_threads(busy=True, workloads=workloads, repeats=repeats)
    print(markdown_table(rows, COLUMNS))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
