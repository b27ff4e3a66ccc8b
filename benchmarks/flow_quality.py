"""Flow quality of the unsupervised flow stages on held-out synthetic video with exact flow.

For each degradation (bicubic x4, temporal blur, HEVC QP37) this trains, with fixed seeds: the teacher
on HQ pairs (``--teacher-steps``); a student on LQ pairs without distillation (``w_dis = 0``) and one
with distillation (``w_dis = 0.1``, Eq. 17, or ``--w-dis``), each for ``--steps`` steps. Both students
start from the teacher, as the paper's student does. Every network uses lr 1e-3 with a cosine schedule
by default. It then measures on held-out sequences (other seeds and photographs than training), at the
HQ size:

- EPE (end-point error, px) against the exact flow on valid pixels: zero flow, the teacher on HQ, and
  each student on LQ (its flow upsampled to the HQ size, values scaled);
- the photometric error of the HQ frames aligned by each flow (mean |HQ_t - warp(HQ_t+1)| on valid
  pixels), which shows whether a flow is good for aligning the frames the restorer must produce.

Usage: ``python benchmarks/flow_quality.py [--steps N] [--teacher-steps N] [--size S] [--sequences K]
[--seed X] [--json PATH]`` (``make bench-flow``). The defaults (64 px, teacher 600 steps, students 300)
take about 15 minutes on 2 CPU cores, one degradation after another; ``--degradations`` picks some,
and ``--steps``, ``--teacher-steps``, ``--size``, ``--sequences`` and ``--accelerator gpu`` scale up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from s2svr_lightning.data import VideoRestorationDataModule
from s2svr_lightning.lit import StudentFlowModule, TeacherFlowModule
from s2svr_lightning.lit.flow import consecutive_pairs
from s2svr_lightning.losses import photometric_loss
from s2svr_lightning.metrics import endpoint_error
from s2svr_lightning.models.warp import resize_flow

DEGRADATIONS = {"bicubic": "vsr", "blur": "deblur", "hevc": "cve"}
ROWS = ("zero", "teacher_hq", "student_plain", "student_distilled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--steps", type=int, default=300, help="training steps of each student")
    p.add_argument(
        "--teacher-steps",
        type=int,
        default=600,
        help="training steps of the teacher (the paper distils from a converged teacher)",
    )
    p.add_argument("--w-dis", type=float, default=0.1, help="distillation weight of the distilled student")
    p.add_argument("--size", type=int, default=64, help="HQ frame side in pixels (a multiple of 4)")
    p.add_argument("--sequences", type=int, default=64, help="training sequences")
    p.add_argument("--test-sequences", type=int, default=3, help="held-out test sequences")
    p.add_argument("--frames", type=int, default=12, help="frames per synthetic sequence")
    p.add_argument("--clip-frames", type=int, default=3, help="frames per training clip (pairs = frames - 1)")
    p.add_argument("--batch-size", type=int, default=4, help="training clips per step")
    p.add_argument(
        "--max-motion", type=float, default=None, help="largest motion px/frame (default: the data's)"
    )
    p.add_argument(
        "--lr", type=float, default=1e-3, help="Adam learning rate (the paper: 1e-4, for far longer runs)"
    )
    p.add_argument(
        "--scheduler", default="cosine", choices=("cosine", "none"), help="lr schedule of every network"
    )
    p.add_argument("--flownet-init", default="kaiming", choices=("default", "kaiming"))
    p.add_argument(
        "--min-level-size",
        type=int,
        default=8,
        help="PWC-Lite min_level_size: 8 skips the 1-4 px pyramid levels of small frames (same accuracy, "
        "23%% faster at 64 px); 1 is the library default (every level)",
    )
    p.add_argument("--warmup", type=int, default=None, help="occlusion warm-up steps (default: steps // 3)")
    p.add_argument(
        "--degradations", default=",".join(DEGRADATIONS), help="comma list of " + ", ".join(DEGRADATIONS)
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator for training: cpu, gpu, auto")
    p.add_argument("--json", type=Path, default=None, help="also write the EPE table as JSON here")
    args = p.parse_args(argv)
    unknown = set(args.degradations.split(",")) - set(DEGRADATIONS)
    if unknown:
        p.error(f"unknown degradations {sorted(unknown)}; choose from {sorted(DEGRADATIONS)}")
    if args.size % 4 or args.size < 64:
        p.error(f"--size must be a multiple of 4 and >= 64 (the x4 LQ must be >= 16 px), got {args.size}")
    return args


def datamodule(task: str, args: argparse.Namespace) -> VideoRestorationDataModule:
    dataset = {
        "name": "synthetic",
        "size": args.size,
        "frames": args.frames,
        "train_sequences": args.sequences,
        "val_sequences": 1,
        "test_sequences": args.test_sequences,
        "max_motion": args.max_motion,
    }
    dm = VideoRestorationDataModule(
        dataset=dataset,
        task=task,
        num_frames=args.clip_frames,
        crop_size=args.size,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    dm.setup("fit")
    dm.setup("test")
    return dm


def fit(
    module: L.LightningModule, dm: VideoRestorationDataModule, args: argparse.Namespace, steps: int
) -> tuple[L.Trainer, float]:
    """Train ``module`` for ``steps`` steps (no validation); returns the trainer and the seconds."""
    L.seed_everything(args.seed, workers=True, verbose=False)
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return trainer, time.perf_counter() - start


@torch.no_grad()
def evaluate(
    dm: VideoRestorationDataModule,
    predict: Callable[[dict], torch.Tensor],
    device: torch.device | None = None,
) -> tuple[float, float]:
    """Mean over held-out sequences of (EPE, photometric error of the aligned HQ frames) at the HQ size."""
    epes, photos = [], []
    for batch in dm.test_dataloader():
        if device is not None:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        hq1, hq2 = consecutive_pairs(batch["hq"])
        gt = batch["flow"].flatten(0, 1)
        valid = batch["flow_valid"].flatten(0, 1) if "flow_valid" in batch else torch.ones_like(gt[:, :1])
        pred = resize_flow(predict(batch), tuple(gt.shape[-2:]))
        epes.append(float(endpoint_error(pred, gt, valid)))
        photos.append(float(photometric_loss(hq1, hq2, pred, occlusion=(valid <= 0).float())))
    return sum(epes) / len(epes), sum(photos) / len(photos)


def _fingerprint(dm: VideoRestorationDataModule) -> str:
    """Identifies the HQ training data, so tasks with the same HQ video share one teacher."""
    digest = hashlib.sha1()
    for i, batch in enumerate(dm.test_dataloader()):
        digest.update(batch["hq"].numpy().tobytes())
        if i == 1:
            break
    return digest.hexdigest()


def run(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Train and score every row for every degradation: ``(epe, photometric error, training seconds)``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="flow_quality_") as workdir:
        return _run(args, Path(workdir))


def _run(args: argparse.Namespace, workdir: Path) -> tuple[dict, dict, dict]:
    common = {
        "lr": args.lr,
        "scheduler": args.scheduler,
        "val_log_images": 0,
        "flownet_overrides": {"min_level_size": args.min_level_size},
    }

    def warmup(steps: int) -> int:
        return steps // 3 if args.warmup is None else args.warmup

    epe: dict[str, dict[str, float]] = {}
    photo: dict[str, dict[str, float]] = {}
    seconds: dict[str, dict[str, float]] = {}
    teachers: dict[str, Path] = {}
    for name in args.degradations.split(","):
        dm = datamodule(DEGRADATIONS[name], args)
        epe[name], photo[name], seconds[name] = {}, {}, {}
        epe[name]["zero"], photo[name]["zero"] = evaluate(
            dm, lambda b: torch.zeros_like(b["flow"].flatten(0, 1))
        )

        key = _fingerprint(dm)
        if key not in teachers:
            L.seed_everything(args.seed, verbose=False)
            teacher = TeacherFlowModule(
                flownet_init=args.flownet_init, occlusion_warmup_steps=warmup(args.teacher_steps), **common
            )
            trainer, seconds[name]["teacher_hq"] = fit(teacher, dm, args, args.teacher_steps)
            teachers[key] = workdir / f"teacher_{name}.ckpt"
            trainer.save_checkpoint(teachers[key])
        else:
            seconds[name]["teacher_hq"] = 0.0  # the same HQ video (vsr and cve): the teacher trained above
        teacher = TeacherFlowModule.load_from_checkpoint(teachers[key], weights_only=True).eval()
        epe[name]["teacher_hq"], photo[name]["teacher_hq"] = evaluate(
            dm, lambda b, t=teacher: t.predict_pairs(b["hq"]), device=teacher.device
        )

        for row, w_dis in (("student_plain", 0.0), ("student_distilled", args.w_dis)):
            L.seed_everything(args.seed, verbose=False)
            student = StudentFlowModule(
                teacher_checkpoint=str(teachers[key]),
                w_dis=w_dis,
                occlusion_warmup_steps=warmup(args.steps),
                **common,
            )
            _, seconds[name][row] = fit(student, dm, args, args.steps)
            student.eval()
            epe[name][row], photo[name][row] = evaluate(
                dm, lambda b, s=student: s.predict_pairs(b["lq"]), device=student.device
            )
        print(
            f"[{name}] done: " + ", ".join(f"{r} {epe[name][r]:.3f}" for r in ROWS),
            file=sys.stderr,
            flush=True,
        )
    return epe, photo, seconds


def table(epe: dict, photo: dict, seconds: dict, args: argparse.Namespace) -> str:
    head = (
        "| degradation | EPE zero | EPE teacher (HQ) | EPE student plain (LQ) | EPE student distilled (LQ) "
        "| photo zero | photo teacher | photo plain | photo distilled | train s |"
    )
    lines = [head, "|" + "---|" * 10]
    for name in epe:
        e, p = epe[name], photo[name]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{e[r]:.3f}" for r in ROWS)
            + " | "
            + " | ".join(f"{p[r]:.4f}" for r in ROWS)
            + f" | {sum(seconds[name].values()):.0f} |"
        )
    lines.append(
        f"\nEPE in HQ pixels (lower is better) on {args.test_sequences} held-out sequences of {args.frames} "
        f"frames at {args.size}x{args.size}; photo = mean |HQ_t - warp(HQ_t+1, flow)| on valid pixels. "
        f"Teacher {args.teacher_steps} steps, each student {args.steps} (from the teacher), "
        f"batch {args.batch_size} clips of {args.clip_frames} frames, lr {args.lr} ({args.scheduler}), "
        f"seed {args.seed}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    start = time.perf_counter()
    epe, photo, seconds = run(args)
    print(table(epe, photo, seconds, args))
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(epe, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
