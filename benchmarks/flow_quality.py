"""Flow quality of the unsupervised flow stages on held-out synthetic video with exact flow (cf. Table 4).

For each degradation (bicubic x4, temporal blur, HEVC QP37) and each seed this trains: the teacher on
HQ pairs (``--teacher-steps``); from it, with the same steps, batches and learning rate (``--steps``):
a student on LQ pairs without distillation (``w_dis = 0``), one with distillation (Eq. 17, ``--w-dis``,
optionally masked by the teacher's forward-backward check, ``--distill-mask``), and a supervised
PWC-Lite trained on the exact synthetic flow (the end-point error against it on valid pixels). Every LQ
network reads its pair under the library's flow-input rule (``--flow-input``, default ``hq``: the LQ pair
upsampled to the HQ size). Rows, held-out EPE in HQ pixels on valid pixels (lower is better):

- ``zero``: zero flow; ``teacher_hq``: the teacher on its own HQ pairs;
- ``teacher_lq``: the same frozen teacher on the LQ pairs under the rule, untrained on LQ;
- ``student_plain``, ``student_distilled``; ``supervised``.

Each row is the mean over ``--seeds`` (data, initialisation and batches all follow the seed), with the
sample standard deviation. Seeds run in ``--jobs`` processes of one thread each (on 2 cores, 2 single-
thread processes train 40 % more steps per second than one 2-thread process).

Usage: ``python benchmarks/flow_quality.py [--seeds 0,1,2] [--steps N] [--teacher-steps N] [--size S]
[--json PATH]`` (``make bench-flow``). The defaults (64 px, teacher 200 steps at lr 2e-3, the others 50
at 1e-3, cosine, batch 2 clips of 3 frames, 3 seeds, 2 jobs) are sized for 10 minutes on 2 quiet CPU
cores: one step of PWC-Lite on 4 pairs at 64 px took 0.37 s on one thread.
The loss is the CPU recipe's (multi-scale photometric terms, smoothness 10; ``--scale-weights``,
``--w-sm``): at the synthetic video's motion (about 2 LQ px per frame) the finest-level loss alone left
teachers at zero flow. VSR and HEVC no longer share a teacher (VSR scenes move ``scale`` times as many
HQ px), so a seed trains three teachers: longer than the old 9.6 minutes at the defaults (not
measured; seed 0 alone took 2 min 43 s of CPU time on a faster one).
Such short runs measure the first stretch of training only; ``--steps``, ``--teacher-steps``,
``--size``, ``--sequences``, ``--seeds`` and ``--accelerator gpu`` scale up.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from s2svr_lightning.atomic import write_json
from s2svr_lightning.conf import CONF_DIR
from s2svr_lightning.data import VideoRestorationDataModule
from s2svr_lightning.lit import StudentFlowModule, TeacherFlowModule
from s2svr_lightning.metrics import endpoint_error

DEGRADATIONS = {"bicubic": "vsr", "blur": "deblur", "hevc": "cve"}
ROWS = ("zero", "teacher_hq", "teacher_lq", "student_plain", "student_distilled", "supervised")
_SCALE = {"vsr": 4, "deblur": 1, "cve": 1}
# the synthetic blur these benchmarks were measured with: 13 sub-frames, as strong as GoPro's (the
# task default, 7, is the deblurring benchmark's recipe)
_DEGRADATION = {"deblur": {"blur_frames": 13}}
# the demos' flow loss (multi-scale photometric terms, smoothness weight): conf/recipe/cpu_flow.yaml
_RECIPE = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "recipe" / "cpu_flow.yaml"))["teacher"]["module"]


class SupervisedFlowModule(StudentFlowModule):
    """PWC-Lite on the LQ pair under the student's rule, trained on the exact flow instead of Eq. 17: the
    end-point error against the synthetic ground truth on valid pixels, on the HQ grid."""

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        im1, im2 = self.flow_pairs(batch)
        gt = batch["flow"].flatten(0, 1)
        pred = self.flow_input.resize(self.flownet(im1, im2), tuple(gt.shape[-2:]))
        loss = endpoint_error(pred, gt, batch["flow_valid"].flatten(0, 1))
        self.log("train/loss", loss.detach(), batch_size=im1.shape[0])
        return loss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (at least 3 for a spread)")
    p.add_argument("--steps", type=int, default=50, help="training steps of each student and of supervised")
    p.add_argument("--teacher-steps", type=int, default=200, help="training steps of the teacher")
    p.add_argument("--w-dis", type=float, default=0.1, help="distillation weight of the distilled student")
    p.add_argument("--distill-mask", action="store_true", help="mask Eq. 16 by the teacher's own check")
    p.add_argument("--init", default="teacher", choices=("teacher", "scratch"), help="students' start")
    p.add_argument("--flow-input", default="hq", help="flow-input rule of the LQ networks: hq, native, HxW")
    p.add_argument("--size", type=int, default=64, help="HQ frame side in pixels (a multiple of 4)")
    p.add_argument("--sequences", type=int, default=32, help="training sequences")
    p.add_argument("--test-sequences", type=int, default=3, help="held-out test sequences")
    p.add_argument("--frames", type=int, default=8, help="frames per synthetic sequence")
    p.add_argument("--clip-frames", type=int, default=3, help="frames per training clip (pairs = frames - 1)")
    p.add_argument("--batch-size", type=int, default=2, help="training clips per step")
    p.add_argument(
        "--max-motion",
        type=float,
        default=None,
        help="median scene speed in HQ px/frame (default: the data's, dataset lq_motion in LQ px)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="Adam lr of the students and the supervised net (the paper: 1e-4, for far longer runs)",
    )
    p.add_argument(
        "--teacher-lr", type=float, default=2e-3, help="Adam learning rate of the teacher (the demos': 2e-3)"
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
    p.add_argument(
        "--scale-weights",
        default=",".join(str(w) for w in _RECIPE.get("scale_weights", [1.0])),
        help="photometric weight per pyramid level, finest first (the recipe's; 1: finest only)",
    )
    p.add_argument("--w-sm", type=float, default=_RECIPE.get("w_sm", 50.0), help="smoothness weight")
    p.add_argument("--warmup", type=int, default=None, help="occlusion warm-up steps (default: steps // 3)")
    p.add_argument(
        "--degradations", default=",".join(DEGRADATIONS), help="comma list of " + ", ".join(DEGRADATIONS)
    )
    p.add_argument("--jobs", type=int, default=2, help="processes (one torch thread each); 1: in-process")
    p.add_argument("--threads", type=int, default=0, help="torch threads with --jobs 1 (0: torch's default)")
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator for training: cpu, gpu, auto")
    p.add_argument("--json", type=Path, default=None, help="also write the EPE table as JSON here")
    args = p.parse_args(argv)
    unknown = set(args.degradations.split(",")) - set(DEGRADATIONS)
    if unknown:
        p.error(f"unknown degradations {sorted(unknown)}; choose from {sorted(DEGRADATIONS)}")
    if args.size % 4 or args.size < 64:
        p.error(f"--size must be a multiple of 4 and >= 64 (the x4 LQ must be >= 16 px), got {args.size}")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be a comma list of integers, got {args.seeds!r}")
    if args.jobs < 1 or min(args.steps, args.teacher_steps) < 1:
        p.error("--jobs, --steps and --teacher-steps must be >= 1")
    return args


def datamodule(
    task: str,
    args: argparse.Namespace,
    seed: int,
    *,
    clip_frames: int | None = None,
    batch_size: int | None = None,
) -> VideoRestorationDataModule:
    """The built-in synthetic video for ``task`` from a benchmark's options (``--size``, ``--frames``,
    ``--sequences``, ...), set up for training on whole frames and for test."""
    dataset = {
        "name": "synthetic",
        "size": args.size,
        "frames": args.frames,
        "train_sequences": args.sequences,
        "val_sequences": 1,
        "test_sequences": args.test_sequences,
        "max_motion": getattr(args, "max_motion", None),
    }
    dm = VideoRestorationDataModule(
        dataset=dataset,
        task=task,
        scale=_SCALE[task],
        degradation=_DEGRADATION.get(task, {}),
        num_frames=clip_frames or args.clip_frames,
        crop_size=args.size,
        batch_size=batch_size or args.batch_size,
        seed=seed,
    )
    dm.setup("fit")
    dm.setup("test")
    return dm


def quiet_trainer(
    steps: int = -1, accelerator: str = "cpu", gradient_clip_val: float | None = None
) -> L.Trainer:
    """A bare Trainer: ``steps`` training steps (-1: for test only), no logger, checkpoints or validation."""
    return L.Trainer(
        gradient_clip_val=gradient_clip_val,
        max_steps=steps,
        max_epochs=-1 if steps > 0 else None,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )


def fit(
    module: L.LightningModule, dm: VideoRestorationDataModule, args: argparse.Namespace, seed: int, steps: int
):
    """Train ``module`` for ``steps`` steps (no validation); returns the trainer."""
    L.seed_everything(seed, workers=True, verbose=False)
    trainer = quiet_trainer(steps, args.accelerator)
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return trainer


@torch.no_grad()
def heldout_epe(dm: VideoRestorationDataModule, module: Any | None, key: str = "lq") -> float:
    """Mean over held-out sequences of the EPE at the HQ size on valid pixels (``module=None``: zero flow)."""
    epes = []
    if module is not None:
        module.eval()
    for batch in dm.test_dataloader():
        gt = batch["flow"].flatten(0, 1)
        valid = batch["flow_valid"].flatten(0, 1)
        if module is None:
            pred = torch.zeros_like(gt)
        else:
            frames = batch[key].to(module.device)
            pred = module.predict_pairs(frames, size=tuple(gt.shape[-2:])).cpu()
        epes.append(float(endpoint_error(pred, gt, valid)))
    return sum(epes) / len(epes)


def _fingerprint(dm: VideoRestorationDataModule) -> str:
    """Identifies the HQ video, so tasks with the same HQ frames (vsr, cve) share one teacher."""
    digest = hashlib.sha1()
    for i, batch in enumerate(dm.test_dataloader()):
        digest.update(batch["hq"].numpy().tobytes())
        if i == 1:
            break
    return digest.hexdigest()


def run_unit(args: argparse.Namespace, seed: int, names: list[str], threads: int = 0) -> dict[str, dict]:
    """Every row of the degradations ``names`` for one seed: ``{name: {row: epe}}``."""
    if threads:
        torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    common = {
        "scale_weights": [float(w) for w in args.scale_weights.split(",")],
        "w_sm": args.w_sm,
        "scheduler": args.scheduler,
        "val_log_images": 0,
        "flownet_overrides": {"min_level_size": args.min_level_size},
    }

    def warmup(steps: int) -> int:
        return steps // 3 if args.warmup is None else args.warmup

    out: dict[str, dict] = {}
    teachers: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="flow_quality_") as workdir:
        for name in names:
            task = DEGRADATIONS[name]
            start = time.perf_counter()
            dm = datamodule(task, args, seed)
            rows = {"zero": heldout_epe(dm, None)}
            key = _fingerprint(dm)
            if key not in teachers:
                L.seed_everything(seed, verbose=False)
                teacher = TeacherFlowModule(
                    flownet_init=args.flownet_init,
                    occlusion_warmup_steps=warmup(args.teacher_steps),
                    lr=args.teacher_lr,
                    **common,
                )
                trainer = fit(teacher, dm, args, seed, args.teacher_steps)
                teachers[key] = Path(workdir) / f"teacher_{name}.ckpt"
                trainer.save_checkpoint(teachers[key])
            teacher = TeacherFlowModule.load_from_checkpoint(teachers[key], weights_only=True)
            rows["teacher_hq"] = heldout_epe(dm, teacher, "hq")
            lq_common = {
                **common,
                "teacher_checkpoint": str(teachers[key]),
                "lr": args.lr,
                "flow_input": args.flow_input,
                "scale": _SCALE[task],
                "occlusion_warmup_steps": warmup(args.steps),
            }
            # the frozen teacher reading LQ under the rule: a student before any training
            rows["teacher_lq"] = heldout_epe(
                dm, StudentFlowModule(w_dis=0.0, init_from_teacher=True, **lq_common)
            )
            init = args.init == "teacher"
            for row, cls, extra in (
                ("student_plain", StudentFlowModule, {"w_dis": 0.0}),
                (
                    "student_distilled",
                    StudentFlowModule,
                    {"w_dis": args.w_dis, "distill_mask": args.distill_mask},
                ),
                ("supervised", SupervisedFlowModule, {"w_dis": 0.0}),
            ):
                L.seed_everything(seed, verbose=False)
                module = cls(init_from_teacher=init, flownet_init=args.flownet_init, **extra, **lq_common)
                fit(module, dm, args, seed, args.steps)
                rows[row] = heldout_epe(dm, module)
            rows["seconds"] = time.perf_counter() - start
            print(
                f"[seed {seed} {name}] " + ", ".join(f"{r} {rows[r]:.3f}" for r in ROWS),
                file=sys.stderr,
                flush=True,
            )
            out[name] = rows
    return out


def _units(args: argparse.Namespace) -> list[tuple[int, list[str]]]:
    """Jobs: per seed, the degradations that share an HQ video (one teacher) go together."""
    names = args.degradations.split(",")
    shared = [n for n in names if n in ("bicubic", "hevc")]
    groups = [g for g in (shared, [n for n in names if n not in shared]) if g]
    return [(seed, group) for seed in args.seed_list for group in groups]


def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """``{degradation: {row: [value per seed]}}`` (rows plus ``seconds``)."""
    units = sorted(_units(args), key=lambda u: -len(u[1]))  # the longest first
    if args.jobs == 1:
        results = [run_unit(args, seed, names, args.threads) for seed, names in units]
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_unit, args, seed, names, 1) for seed, names in units]
            results = [f.result() for f in futures]
    per_seed: dict[str, dict[str, list[float]]] = {}
    for _, result in sorted(zip(units, results), key=lambda x: x[0][0]):
        for name, rows in result.items():
            for row, value in rows.items():
                per_seed.setdefault(name, {}).setdefault(row, []).append(value)
    return {name: per_seed[name] for name in args.degradations.split(",")}


def summarise(per_seed: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """The JSON: per degradation each row's mean, ``<row>_std`` and ``<row>_seeds``."""
    out: dict[str, dict[str, Any]] = {}
    for name, rows in per_seed.items():
        table: dict[str, Any] = {}
        for row in ROWS:
            values = rows[row]
            table[row] = statistics.fmean(values)
            table[f"{row}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            table[f"{row}_seeds"] = values
        table["train_seconds"] = sum(rows["seconds"])
        out[name] = table
    return out


def table(summary: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    head = "| degradation | " + " | ".join(ROWS) + " | distilled / plain | train s |"
    lines = [head, "|" + "---|" * (len(ROWS) + 3)]
    for name, t in summary.items():
        cells = [f"{t[r]:.3f} ± {t[f'{r}_std']:.3f}" for r in ROWS]
        ratio = t["student_distilled"] / t["student_plain"] if t["student_plain"] > 0 else math.nan
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.3f} | {t['train_seconds']:.0f} |")
    lines.append(
        f"\nHeld-out EPE in HQ pixels (mean ± sample std over seeds {args.seeds}; lower is better) on "
        f"{args.test_sequences} sequences of {args.frames} frames at {args.size}x{args.size}. Teacher "
        f"{args.teacher_steps} steps; each student and the supervised net {args.steps} steps from "
        f"{'the teacher' if args.init == 'teacher' else 'scratch'}, reading the LQ pair under flow input "
        f"{args.flow_input!r}; w_dis {args.w_dis}{' (teacher-masked)' if args.distill_mask else ''}; batch "
        f"{args.batch_size} clips of {args.clip_frames} frames, lr {args.teacher_lr} (teacher) / {args.lr} "
        f"({args.scheduler})."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    start = time.perf_counter()
    summary = summarise(run(args))
    print(table(summary, args))
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, summary, finite=False)  # atomic: no partial table
    return 0


if __name__ == "__main__":
    sys.exit(main())
