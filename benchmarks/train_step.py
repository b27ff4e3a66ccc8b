"""Training step time of the restorer per task preset, at the recipe's crop and sequence length (batch 1).

Each preset trains :class:`~s2svr_lightning.lit.RestorerModule` with a Lightning ``Trainer`` (fp32, one
process) on in-memory samples of the preset's shape; a callback times every step from batch start to the
end of the optimizer step (forward, Charbonnier loss, backward, Adam, scheduler). The first step (memory
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
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

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
        """Wall time of each training step, batch start to the end of the optimizer step."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self._t0 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.times.append(time.perf_counter() - self._t0)

    return StepTimer()


def time_training_steps(
    model: str, kind: str, frames: int, crop: int, scale: int, *, steps: int, overrides: dict | None = None
) -> list[float]:
    """Seconds of each of ``steps`` training steps of a RestorerModule on ``(1, T, 3, crop, crop)`` LQ."""
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
    return timer.times


def bench_train_step(
    *,
    presets: Sequence[str] = tuple(PRESETS),
    steps: int = 2,
    shapes: dict | None = None,
    overrides: dict | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One row per preset: first step and median of the later steps, in seconds."""
    rows = []
    for name in presets:
        model, kind, frames, crop, scale = PRESETS[name]
        frames, crop = (shapes or {}).get(name, (frames, crop))
        log(f"{name}: {steps} training steps of {model} on 1x{frames}x3x{crop}x{crop} ...")
        times = time_training_steps(model, kind, frames, crop, scale, steps=steps, overrides=overrides)
        later = times[1:] or times
        rows.append(
            {
                "preset": name,
                "builder": model,
                "sample": f"{frames} x {crop}x{crop} LQ"
                + (f" ({crop * scale}x{crop * scale} GT)" if scale > 1 else ""),
                "first_step_s": times[0],
                "step_s": statistics.median(later),
                "ms_per_frame": 1000.0 * statistics.median(later) / frames,
            }
        )
    return rows


COLUMNS = [
    ("preset", "preset"),
    ("builder", "builder"),
    ("sample", "sample (batch 1)"),
    ("first_step_s", "first step (s)"),
    ("step_s", "step (s, median)"),
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
    args = p.parse_args(argv)
    kw = quick_settings() if args.quick else {"steps": args.steps}
    rows = bench_train_step(log=lambda m: print(m, file=sys.stderr), **kw)
    print(markdown_table(rows, COLUMNS))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
