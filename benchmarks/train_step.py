"""Training step time of the restorer per task preset, at the recipe's crop and sequence length (batch 1).

Each preset trains :class:`~s2svr_lightning.lit.RestorerModule` with a Lightning ``Trainer`` (fp32, in
its own process, whose peak resident memory is reported too) on in-memory samples of the preset's shape;
a callback times every step from batch start to the end of the optimizer step (forward, Charbonnier
loss, backward, Adam, scheduler). The first step (memory
allocation, oneDNN primitive creation) is reported apart from the median of the following ones. The flow
net is trained jointly (``flow_freeze_steps=0``), as in all but the first few thousand iterations.

Presets (frames per sample, LQ crop):
- VSR x4 (REDS recipe): 15 frames, LQ 64x64 (GT 256x256), ``s2svr_vsr``;
- deblurring (GoPro recipe): 7 frames, 256x256, ``s2svr_deblur``;
- compressed video (no public recipe; the deblurring one): 7 frames, 256x256, ``s2svr_cve``.

Run: ``python benchmarks/train_step.py [--quick] [--steps N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import memory  # noqa: E402
from speed import markdown_table  # noqa: E402

PRESETS = {
    # name: (builder, task kind, frames, LQ crop side, scale)
    "vsr": ("s2svr_vsr", "vsr", 15, 64, 4),
    "deblur": ("s2svr_deblur", "deblur", 7, 256, 1),
    "cve": ("s2svr_cve", "cve", 7, 256, 1),
}


def _step_timer():
    import lightning as L

    class StepTimer(L.Callback):
        """Wall and process CPU time of each step, batch start to the end of the optimizer step."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self._t0 = self._c0 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.times.append(time.perf_counter() - self._t0)
            self.cpu_times.append(time.process_time() - self._c0)

    return StepTimer()


def time_training_steps(
    model: str, kind: str, frames: int, crop: int, scale: int, *, steps: int, overrides: dict | None = None
) -> dict[str, list[float]]:
    """Wall and CPU seconds (``{"wall": [...], "cpu": [...]}``) of each of ``steps`` training steps of a
    RestorerModule on ``(1, T, 3, crop, crop)`` LQ."""
    import lightning as L

    from s2svr_lightning.lit.restorer import RestorerModule

    torch.manual_seed(0)
    module = RestorerModule(
        model=model,
        model_overrides=overrides or {},
        kind=kind,
        scale=scale,
        flow_freeze_steps=0,
        total_steps=steps,
    )
    g = torch.Generator().manual_seed(0)
    samples = [
        {
            "lq": torch.rand(frames, 3, crop, crop, generator=g),
            "hq": torch.rand(frames, 3, crop * scale, crop * scale, generator=g),
            "key": f"s{i}",
        }
        for i in range(steps)
    ]
    timer = _step_timer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(samples, batch_size=1, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return {"wall": timer.times, "cpu": timer.cpu_times}


def _child_row(
    name: str, frames: int, crop: int, steps: int, overrides: dict | None, limit: int, threads: int | None
) -> dict:
    """Time one preset in a fresh process (capped at ``limit`` bytes of address space)."""
    model, kind, _, _, scale = PRESETS[name]
    with tempfile.TemporaryDirectory(prefix="s2svr_train_") as tmp:
        out = Path(tmp) / "times.json"
        cmd = [sys.executable, __file__, "--child", name, "--frames", str(frames), "--crop", str(crop)]
        cmd += ["--steps", str(steps), "--overrides", json.dumps(overrides or {}), "--out", str(out)]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        code, peak, _, tail = memory.run_child(cmd, memory_limit=limit)
        times = json.loads(out.read_text()) if code == 0 else None
    row = {
        "preset": name,
        "builder": model,
        "sample": f"{frames} x {crop}x{crop} LQ"
        + (f" ({crop * scale}x{crop * scale} GT)" if scale > 1 else ""),
        "peak_gib": peak / 2**30 if peak else None,
    }
    if times is None:
        oom = "allocate" in tail or "MemoryError" in tail or code == -9
        if not oom:
            raise RuntimeError(f"training preset {name} failed with exit code {code}:\n{tail}")
        row["status"] = f"out of memory (> {limit / 2**30:.0f} GiB)"
        return row
    later, later_cpu = times["wall"][1:] or times["wall"], times["cpu"][1:] or times["cpu"]
    row.update(
        {
            "status": "ok",
            "threads": threads,
            "first_step_s": times["wall"][0],
            "step_s": statistics.median(later),
            "cpu_step_s": statistics.median(later_cpu),
            "ms_per_frame": 1000.0 * statistics.median(later) / frames,
        }
    )
    return row


def bench_train_step(
    *,
    presets: Sequence[str] = tuple(PRESETS),
    steps: int = 2,
    shapes: dict | None = None,
    overrides: dict | None = None,
    memory_fraction: float = 0.6,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One row per preset: first step and median of the later steps (seconds), peak resident memory.

    Each preset runs in its own process whose address space is capped at ``memory_fraction`` of the
    memory available when it starts: a preset that needs more fails inside its process (reported as out
    of memory, with a second row at half the crop) instead of waking the kernel's OOM killer on a machine
    shared with other work. The recipes' 256x256 crops of 7 frames need more than 20 GB for deblurring.
    """
    rows = []
    for name in presets:
        model, _, frames, crop, _ = PRESETS[name]
        frames, crop = (shapes or {}).get(name, (frames, crop))
        limit = int(memory_fraction * memory.available_memory())
        log(f"{name}: {steps} training steps of {model} on 1x{frames}x3x{crop}x{crop} ...")
        row = _child_row(name, frames, crop, steps, overrides, limit, threads)
        rows.append(row)
        if row["status"] != "ok" and crop >= 32:
            log(f"{name}: {row['status']}; again at half the crop ...")
            rows.append(_child_row(name, frames, crop // 2, steps, overrides, limit, threads))
    return rows


COLUMNS = [
    ("preset", "preset"),
    ("builder", "builder"),
    ("sample", "sample (batch 1)"),
    ("status", "status"),
    ("peak_gib", "peak RSS (GiB)"),
    ("first_step_s", "first step (s)"),
    ("step_s", "step (s, median)"),
    ("cpu_step_s", "step CPU (s)"),
    ("ms_per_frame", "ms / frame"),
]


def quick_settings() -> dict:
    return {
        "steps": 2,
        "shapes": {"vsr": (3, 16), "deblur": (3, 32), "cve": (3, 32)},
        "overrides": {"channels": 8, "num_blocks": 1},
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny networks and crops: a smoke run")
    p.add_argument(
        "--steps", type=int, default=2, help="training steps per preset (the first is reported apart)"
    )
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    p.add_argument("--threads", type=int, default=None, help="torch threads of each preset's process")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--crop", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        model, kind, _, _, scale = PRESETS[args.child]
        times = time_training_steps(
            model, kind, args.frames, args.crop, scale, steps=args.steps, overrides=json.loads(args.overrides)
        )
        Path(args.out).write_text(json.dumps(times))
        return 0
    kw = quick_settings() if args.quick else {"steps": args.steps}
    kw["threads"] = args.threads
    rows = bench_train_step(log=lambda m: print(m, file=sys.stderr), **kw)
    print(markdown_table(rows, COLUMNS))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
