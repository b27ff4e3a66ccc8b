"""Training step of the restorer per task preset and setting, at the recipe's crop and sequence length.

Each (preset, setting) trains :class:`~s2svr_lightning.lit.RestorerModule` with a Lightning ``Trainer``
in its own process, whose peak resident memory is reported, on in-memory samples of the preset's shape
(batch 1); a callback times every step from batch start to the end of the optimizer step (forward,
Charbonnier loss, backward, Adam, scheduler). The first step (memory allocation, oneDNN primitive
creation, and for compiled settings the compilation) is reported apart from the median of the following
ones. The flow net is trained jointly (``flow_freeze_steps=0``), as in all but the first few thousand
iterations. Every row's ratios are to the fp32 row of the same preset and sample size, measured in the
same run.

Presets (frames per sample, LQ crop):
- VSR x4 (REDS recipe): 15 frames, LQ 64x64 (GT 256x256), ``s2svr_vsr``;
- deblurring (GoPro recipe): 7 frames, 256x256, ``s2svr_deblur``;
- compressed video (no public recipe; the deblurring one): 7 frames, 256x256, ``s2svr_cve``.

Settings (``--settings``, parts joined by ``+``): ``fp32`` (the reference), ``step`` / ``step_flow``
(activation checkpointing, ``model.overrides.checkpointing``), ``bf16`` (``precision="bf16-mixed"``,
``hardware=cpu_bf16``), ``compile`` (``compile=true``: torch.compile of the ResConvGRU layers, inductor
unless ``--compile-backend``). When the fp32 row of a preset runs out of memory, every setting is run
again at half the crop, so that each has a ratio.

Run: ``python benchmarks/train_step.py [--quick] [--steps N] [--presets vsr,deblur] [--settings ...]
[--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# As the commands set it for their own process (s2svr_lightning.commands.PROCESS_ENV), before torch loads:
# idle OpenMP threads sleep, the conditions this benchmark's figures were measured in.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import memory  # noqa: E402
from speed import markdown_table  # noqa: E402

SETTINGS = ("fp32", "step", "step_flow", "bf16", "step_flow+bf16", "compile", "compile+bf16")
_PARTS = ("fp32", "bf16", "step", "step_flow", "compile")


def parse_setting(name: str) -> dict:
    """The options of a setting: ``"step_flow+bf16"`` -> ``{"checkpointing": "step_flow",
    "precision": "bf16-mixed", "compile": False}``."""
    parts = name.split("+")
    unknown = [p for p in parts if p not in _PARTS]
    ckpt = [p for p in parts if p in ("step", "step_flow")]
    if unknown or len(ckpt) > 1 or ("fp32" in parts and "bf16" in parts) or len(set(parts)) < len(parts):
        raise ValueError(f"expected a setting of {'/'.join(_PARTS)} joined by '+', got {name!r}")
    return {
        "checkpointing": ckpt[0] if ckpt else "none",
        "precision": "bf16-mixed" if "bf16" in parts else "32-true",
        "compile": "compile" in parts,
    }


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
    model: str,
    kind: str,
    frames: int,
    crop: int,
    scale: int,
    *,
    steps: int,
    overrides: dict | None = None,
    setting: str = "fp32",
    compile_backend: str = "inductor",
) -> dict:
    """Wall and CPU seconds (``{"wall": [...], "cpu": [...], "compile_failed": ...}``) of each of ``steps``
    training steps of a RestorerModule on ``(1, T, 3, crop, crop)`` LQ under ``setting``."""
    import lightning as L

    from s2svr_lightning.lit.restorer import RestorerModule

    options = parse_setting(setting)
    torch.manual_seed(0)
    module = RestorerModule(
        model=model,
        model_overrides={**(overrides or {}), "checkpointing": options["checkpointing"]},
        kind=kind,
        scale=scale,
        flow_freeze_steps=0,
        total_steps=steps,
        compile=compile_backend if options["compile"] else False,
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
        precision=options["precision"],
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
    failed = module.compiled.failed if module.compiled is not None else None
    if options["compile"] and module.compiled is None:
        failed = "Dynamo unsupported here"
    return {"wall": timer.times, "cpu": timer.cpu_times, "compile_failed": failed}


def _child_row(
    name: str,
    setting: str,
    frames: int,
    crop: int,
    steps: int,
    overrides: dict | None,
    limit: int,
    threads: int | None,
    compile_backend: str,
) -> dict:
    """Time one preset under one setting in a fresh process (capped at ``limit`` bytes of address space)."""
    model, kind, _, _, scale = PRESETS[name]
    with tempfile.TemporaryDirectory(prefix="s2svr_train_") as tmp:
        out = Path(tmp) / "times.json"
        cmd = [sys.executable, __file__, "--child", name, "--frames", str(frames), "--crop", str(crop)]
        cmd += ["--steps", str(steps), "--overrides", json.dumps(overrides or {}), "--out", str(out)]
        cmd += ["--settings", setting, "--compile-backend", compile_backend]
        if parse_setting(setting)["compile"]:
            # a cold compile, as on a user's first run: the first step then includes the whole
            # compilation (inductor otherwise reuses the kernels of earlier runs from its cache in /tmp)
            cmd += ["--inductor-cache", str(Path(tmp) / "inductor")]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        code, peak, _, tail = memory.run_child(cmd, memory_limit=limit)
        times = json.loads(out.read_text()) if code == 0 else None
    row = {
        "preset": name,
        "builder": model,
        "setting": setting,
        "sample": f"{frames} x {crop}x{crop} LQ"
        + (f" ({crop * scale}x{crop * scale} GT)" if scale > 1 else ""),
        "peak_gib": peak / 2**30 if peak else None,
    }
    if times is None:
        oom = "allocate" in tail or "MemoryError" in tail or code == -9
        if not oom:
            raise RuntimeError(f"training preset {name} ({setting}) failed with exit code {code}:\n{tail}")
        row["status"] = f"out of memory (> {limit / 2**30:.1f} GiB)"
        return row
    later, later_cpu = times["wall"][1:] or times["wall"], times["cpu"][1:] or times["cpu"]
    row.update(
        {
            "status": "ok" if not times.get("compile_failed") else f"eager ({times['compile_failed']})",
            "threads": threads,
            "first_step_s": times["wall"][0],
            "step_s": statistics.median(later),
            "cpu_step_s": statistics.median(later_cpu),
            "ms_per_frame": 1000.0 * statistics.median(later) / frames,
        }
    )
    return row


def add_ratios(rows: list[dict]) -> list[dict]:
    """Each row's peak memory, step and CPU time over those of the fp32 row of its preset and sample
    (in place; None where that fp32 row ran out of memory)."""
    reference = {(r["preset"], r["sample"]): r for r in rows if r["setting"] == "fp32" and "step_s" in r}
    for row in rows:
        ref = reference.get((row["preset"], row["sample"]))
        for key, ratio in (
            ("peak_gib", "peak_x_fp32"),
            ("step_s", "step_x_fp32"),
            ("cpu_step_s", "cpu_x_fp32"),
        ):
            ok = ref is not None and row.get(key) is not None and "step_s" in row
            row[ratio] = row[key] / ref[key] if ok else None
    return rows


def bench_train_step(
    *,
    presets: Sequence[str] = tuple(PRESETS),
    settings: Sequence[str] = SETTINGS,
    steps: int = 2,
    shapes: dict | None = None,
    overrides: dict | None = None,
    memory_fraction: float = 0.6,
    threads: int | None = None,
    compile_backend: str = "inductor",
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One row per preset and setting: first step and median of the later steps (seconds), peak resident
    memory, and their ratios to the fp32 row (see :func:`add_ratios`).

    Each row runs in its own process whose address space is capped at ``memory_fraction`` of the memory
    available when it starts: a setting that needs more fails inside its process (reported as out of
    memory) instead of waking the kernel's OOM killer on a machine shared with other work. When the fp32
    row fails so, every setting runs again at half the crop, where the ratios can be measured (the
    deblurring recipe's 7 x 256x256 needs about 40 GiB in fp32).
    """
    for setting in settings:
        parse_setting(setting)
    rows = []
    for name in presets:
        model, _, frames, crop, _ = PRESETS[name]
        frames, crop = (shapes or {}).get(name, (frames, crop))
        sizes = [crop]
        while sizes:
            size = sizes.pop(0)
            for setting in settings:
                limit = int(memory_fraction * memory.available_memory())
                log(f"{name} {setting}: {steps} training steps of {model} on 1x{frames}x3x{size}x{size} ...")
                row = _child_row(
                    name, setting, frames, size, steps, overrides, limit, threads, compile_backend
                )
                log(
                    f"{name} {setting}: {row['status']}, peak {row['peak_gib'] or 0:.2f} GiB, step "
                    f"{row.get('step_s', float('nan')):.2f} s"
                )
                rows.append(row)
                if setting == "fp32" and not row["status"].startswith(("ok", "eager")) and size >= 32:
                    sizes.append(size // 2)
    return add_ratios(rows)


COLUMNS = [
    ("preset", "preset"),
    ("sample", "sample (batch 1)"),
    ("setting", "setting"),
    ("status", "status"),
    ("peak_gib", "peak RSS (GiB)"),
    ("peak_x_fp32", "peak / fp32"),
    ("first_step_s", "first step (s)"),
    ("step_s", "step (s, median)"),
    ("step_x_fp32", "step / fp32"),
    ("cpu_step_s", "step CPU (s)"),
    ("cpu_x_fp32", "CPU / fp32"),
]


def quick_settings() -> dict:
    return {
        "steps": 2,
        # inductor takes minutes to compile even a tiny net on 2 cores: the smoke run traces and runs
        # the same graphs through aot_eager
        "compile_backend": "aot_eager",
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
    p.add_argument(
        "--memory-fraction",
        type=float,
        default=0.6,
        help="cap of each row's address space, as a fraction of the memory available when it starts",
    )
    p.add_argument(
        "--presets", default=",".join(PRESETS), help=f"comma-separated subset of {','.join(PRESETS)}"
    )
    p.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help=f"comma-separated settings, parts of {'/'.join(_PARTS)} joined by '+' "
        f"(default: {','.join(SETTINGS)})",
    )
    p.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend of the compile settings (default: inductor)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--crop", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--inductor-cache", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        if args.inductor_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.inductor_cache  # read when inductor compiles
        model, kind, _, _, scale = PRESETS[args.child]
        times = time_training_steps(
            model,
            kind,
            args.frames,
            args.crop,
            scale,
            steps=args.steps,
            overrides=json.loads(args.overrides),
            setting=args.settings,
            compile_backend=args.compile_backend or "inductor",
        )
        Path(args.out).write_text(json.dumps(times))
        return 0
    presets = [n.strip() for n in args.presets.split(",") if n.strip()]
    settings = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        p.error(f"expected --presets from {', '.join(PRESETS)}, got {', '.join(unknown)}")
    try:
        for setting in settings:
            parse_setting(setting)
    except ValueError as err:
        p.error(str(err))
    kw = quick_settings() if args.quick else {"steps": args.steps}
    kw.update(threads=args.threads, presets=presets, settings=settings, memory_fraction=args.memory_fraction)
    if args.compile_backend:
        kw["compile_backend"] = args.compile_backend
    rows = bench_train_step(log=lambda m: print(m, file=sys.stderr), **kw)
    print(markdown_table(rows, COLUMNS))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
