"""The paper's claims end to end: S2SVR's test PSNR on held-out synthetic video under one fixed budget.

Video super-resolution x4 on the built-in synthetic video, with the library's own stages (the teacher,
the students and the restorer LightningModules, the DataModule, ``Trainer.test`` and its metrics):

1. a teacher on HQ pairs; from it a student on LQ pairs without distillation (``w_dis = 0``) and one
   with (``--w-dis``, Eq. 17), both under the default flow-input rule (LQ pairs upsampled to the HQ size);
2. restorers, every one with the same network, data, steps and learning rates, that differ in one thing:

   - ``alignment`` (the paper's Fig. 7, motion compensation or not): the restorer aligned with the
     synthetic video's exact flow (``oracle``: what alignment can give this restorer at most), its flow
     net from the distilled student, from the plain student, the teacher itself untrained on LQ
     (``teacher_lq``), or no alignment at all (``zero``: a zero-flow "network", the states never warped);
   - ``radius`` of the local attention, 0, 1, 2 (Eq. 5), flow from the distilled student (radius 1 is
     the ``student_distilled`` restorer);
   - ``length`` (Table 5's trend): the ``student_distilled`` restorer restores the last L = 5, 15, 30
     frames of each held-out 30-frame sequence on their own, and the last 5 frames, common to all
     three, are scored: what a longer past adds to the same frames.

The restorers of a seed train in ``--jobs`` processes of one thread each. Every value is the test PSNR
in dB (RGB, mean per sequence then over sequences), averaged over ``--seeds``; the bicubic baseline is
printed too.

``--pilot`` trains only the ``oracle`` and ``zero`` restorers (no flow stages): whether alignment can pay
at all in this setting. At the synthetic video's motion (about 1.6 LQ px per frame, p99 5) and the
defaults, seeds 0 / 1: oracle 27.49 / 28.44 dB, zero 27.17 / 27.55, bicubic 26.91 / 27.91 (600 steps;
at the old motion, a third of an LQ pixel per frame, the two differed by 0.05 dB).

``--lq-psnr`` prints instead how hard each synthetic task is: the degraded input against the HQ frames
(vsr: bicubic x4 upsampling of the LQ) on held-out sequences.

Usage: ``python benchmarks/ablation.py [--seeds 0,1,2] [--restorer-steps N] [--json PATH [--resume]]``
(``make bench-ablation``). The defaults are the demo's recipe (``+task=demo``: teacher 300 steps at lr
2e-3 and students 50 at 1e-3, cosine, 4 clips of 3 frames, PWC-Lite from its 8 px level, multi-scale
loss; seven restorers of 600 steps at 2e-3, C 32, one layer, one block, the flow net frozen, gradient
norm clipped at 0.02), seeds 0, 1 and 2, 2 jobs; the table gives each row's mean, its spread over the
seeds and every seed's value. ``--json`` is rewritten after every seed and ``--resume`` reuses the seeds
it holds, so a stopped run goes on where it stopped. ``--seeds``, ``--*-steps``, ``--size`` and
``--channels`` scale up.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import flow_quality
import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from s2svr_lightning.atomic import write_json
from s2svr_lightning.conf import CONF_DIR
from s2svr_lightning.data import VideoRestorationDataModule
from s2svr_lightning.lit import StudentFlowModule, TeacherFlowModule
from s2svr_lightning.lit.restorer import RestorerModule
from s2svr_lightning.metrics import psnr

ALIGNMENT = ("oracle", "student_distilled", "student_plain", "teacher_lq", "zero")
LENGTHS = (5, 15, 30)
RADII = (0, 1, 2)
SCORED_TAIL = 5  # frames scored in the length rows: the last 5 of every segment
# the demos' flow stages (steps, batch, lr, schedule, warm-up, PWC-Lite options): one place, read here
FLOW_RECIPE = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "recipe" / "cpu_flow.yaml"))


class ExactFlowRestorer(RestorerModule):
    """The oracle row: S2SVR aligned with the synthetic video's exact flow instead of a flow net's (the
    HQ flows area-averaged onto the LQ grid, in LQ pixels: exact for the layers' affine motion)."""

    _flows: tuple[torch.Tensor, torch.Tensor] | None = None

    def exact_flows(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "flow_bwd" not in batch:
            raise ValueError("the oracle row needs data with exact forward and backward flow (synthetic)")
        s = self.scale

        def to_lq(flow: torch.Tensor) -> torch.Tensor:
            b, n = flow.shape[:2]
            return (F.avg_pool2d(flow.flatten(0, 1), s) / s).unflatten(0, (b, n)) if s > 1 else flow

        # S2SVR's (to_prev, to_next): F_{t -> t-1} on frame t's grid is flow_bwd[t-1]; F_{t -> t+1} flow[t]
        return to_lq(batch["flow_bwd"]), to_lq(batch["flow"])

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return self.net(lq, flows=self._flows) if self._flows is not None else self.net(lq)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._flows = self.exact_flows(batch)
        try:
            return super().training_step(batch, batch_idx)
        finally:
            self._flows = None

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        self._flows = self.exact_flows(batch)
        try:
            return super().test_step(batch, batch_idx)
        finally:
            self._flows = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (at least 3 for a spread)")
    p.add_argument("--teacher-steps", type=int, default=FLOW_RECIPE["teacher"]["max_steps"])
    p.add_argument("--student-steps", type=int, default=FLOW_RECIPE["student"]["max_steps"])
    p.add_argument("--restorer-steps", type=int, default=600)
    p.add_argument(
        "--flow-freeze",
        type=float,
        default=1.0,
        help="share of restorer steps with the flow net frozen (1: throughout, as in the demo)",
    )
    p.add_argument("--w-dis", type=float, default=0.1)
    p.add_argument("--size", type=int, default=64, help="HQ frame side (a multiple of 4, >= 64)")
    p.add_argument("--sequences", type=int, default=24, help="training sequences")
    p.add_argument("--test-sequences", type=int, default=3)
    p.add_argument("--frames", type=int, default=max(LENGTHS), help="frames per sequence (>= 30)")
    p.add_argument("--clip-frames", type=int, default=5, help="frames per restorer training clip")
    p.add_argument("--batch-size", type=int, default=2, help="restorer training clips per step")
    p.add_argument(
        "--flow-batch-size",
        type=int,
        default=FLOW_RECIPE["teacher"]["data"]["batch_size"],
        help="teacher and student clips per step",
    )
    p.add_argument("--channels", type=int, default=32, help="restorer width (the demo's 32)")
    p.add_argument("--lr", type=float, default=2e-3, help="restorer lr (the demo's)")
    p.add_argument("--teacher-lr", type=float, default=FLOW_RECIPE["teacher"]["module"]["lr"])
    p.add_argument("--flow-lr", type=float, default=FLOW_RECIPE["student"]["module"]["lr"], help="student lr")
    p.add_argument(
        "--clip", type=float, default=0.02, help="restorer gradient-norm clip (the demo's; 0: none)"
    )
    p.add_argument("--jobs", type=int, default=2, help="restorers trained at once (one thread each)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--lq-psnr", action="store_true", help="only print LQ-vs-HQ PSNR of each synthetic task")
    p.add_argument(
        "--pilot",
        action="store_true",
        help="only the oracle and zero-flow restorers (no flow stages): does alignment matter at all?",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the table here as JSON, rewritten after every seed (a stopped run keeps its seeds)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the seeds already in --json when they were run with the same settings",
    )
    args = p.parse_args(argv)
    if args.resume and args.json is None:
        p.error("--resume reads the seeds done so far from --json PATH: give it")
    if args.size % 4 or args.size < 64:
        p.error(f"--size must be a multiple of 4 and >= 64, got {args.size}")
    if args.frames < max(LENGTHS):
        p.error(f"--frames must be >= {max(LENGTHS)} (the longest tested sequence), got {args.frames}")
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    return args


def datamodule(
    args: argparse.Namespace,
    seed: int,
    *,
    task: str = "vsr",
    clip_frames: int | None = None,
    batch_size: int | None = None,
):
    return flow_quality.datamodule(task, args, seed, clip_frames=clip_frames, batch_size=batch_size)


def trainer(args: argparse.Namespace, steps: int = -1, clip: float = 0.0) -> L.Trainer:
    return flow_quality.quiet_trainer(steps, args.accelerator, gradient_clip_val=clip or None)


def _quiet(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")


def flow_module(
    stage: str, steps: int, *, teacher_checkpoint: str, w_dis: float, lr: float | None = None
) -> TeacherFlowModule | StudentFlowModule:
    """The CPU recipe's teacher or x4 student (``stage``) for a run of ``steps`` steps."""
    module_options = FLOW_RECIPE[stage]["module"]
    options = {
        **module_options,
        **({} if lr is None else {"lr": lr}),
        # the recipe's warm-up, shortened for runs too short for it
        "occlusion_warmup_steps": min(module_options["occlusion_warmup_steps"], steps // 2),
        "val_log_images": 0,
    }
    if stage == "teacher":
        return TeacherFlowModule(**options)
    return StudentFlowModule(teacher_checkpoint=teacher_checkpoint, w_dis=w_dis, scale=4, **options)


def train_flow(args: argparse.Namespace, seed: int, workdir: str, row: str, threads: int = 0) -> str:
    """The teacher (``row="teacher"``) or a student (``student_plain`` / ``student_distilled``) checkpoint."""
    _quiet(threads)
    stage = "teacher" if row == "teacher" else "student"
    recipe = FLOW_RECIPE[stage]
    dm = datamodule(args, seed, clip_frames=recipe["data"]["num_frames"], batch_size=args.flow_batch_size)
    steps = args.teacher_steps if stage == "teacher" else args.student_steps
    L.seed_everything(seed, verbose=False)
    module = flow_module(
        stage,
        steps,
        lr=args.teacher_lr if stage == "teacher" else args.flow_lr,
        teacher_checkpoint=str(Path(workdir) / "teacher.ckpt"),
        w_dis=args.w_dis if row == "student_distilled" else 0.0,
    )
    fit = trainer(args, steps)
    L.seed_everything(seed, workers=True, verbose=False)
    fit.fit(module, train_dataloaders=dm.train_dataloader())
    path = str(Path(workdir) / f"{row}.ckpt")
    fit.save_checkpoint(path)
    return path


@torch.no_grad()
def length_psnr(module: RestorerModule, dm: VideoRestorationDataModule) -> dict[str, float]:
    """PSNR of the last ``SCORED_TAIL`` frames of each held-out sequence, restored from its last L frames."""
    net = module.net.eval()
    scores: dict[str, list[float]] = {str(n): [] for n in LENGTHS}
    for batch in dm.test_dataloader():
        lq, hq = batch["lq"], batch["hq"]
        for n in LENGTHS:
            out = net(lq[:, -n:]).clamp(0, 1)
            scores[str(n)].append(float(psnr(out[:, -SCORED_TAIL:], hq[:, -SCORED_TAIL:]).mean()))
    return {k: statistics.fmean(v) for k, v in scores.items()}


def train_restorer(
    args: argparse.Namespace, seed: int, flow: str | None, radius: int, with_lengths: bool, threads: int = 0
) -> dict[str, Any]:
    """Train one restorer (``flow``: a flow checkpoint, ``"exact"`` for the data's exact flow, or None for
    no alignment) and test it."""
    _quiet(threads)
    start = time.perf_counter()
    dm = datamodule(args, seed)
    steps = args.restorer_steps
    L.seed_everything(seed, verbose=False)
    exact = flow == "exact"
    module = (ExactFlowRestorer if exact else RestorerModule)(
        model="s2svr_vsr",
        model_overrides={"channels": args.channels, "num_blocks": 1, "num_layers": 1, "radius": radius},
        kind="vsr",
        scale=4,
        flow_init=None if exact else flow,
        flownet="zero_flow" if flow is None or exact else None,
        lr=args.lr,
        flow_lr=5e-5,
        flow_freeze_steps=int(args.flow_freeze * steps),
        total_steps=steps,
        charbonnier_eps=0.05,  # the demo's: leaves the zero-residual plateau sooner in a short run
        metrics={"y_channel": False, "border": 0, "reduction": "sequence"},
        num_log_images=0,
    )
    fit = trainer(args, steps, clip=args.clip)
    L.seed_everything(seed, workers=True, verbose=False)
    fit.fit(module, train_dataloaders=dm.train_dataloader())
    result = trainer(args).test(module, dataloaders=dm.test_dataloader(), verbose=False)[0]
    out = {"psnr": float(result["test/psnr"]), "bicubic": float(result["test/baseline_psnr"])}
    if with_lengths:
        out["length"] = length_psnr(module, dm)
    out["seconds"] = time.perf_counter() - start
    return out


def _flow_path(workdir: str, flow: str | None) -> str | None:
    return str(Path(workdir) / flow) if flow and flow != "exact" else flow


def run_pilot(args: argparse.Namespace, seed: int, log=print) -> dict[str, Any]:
    """The oracle and zero-flow restorers only: ``{"alignment": {"oracle", "zero"}, "bicubic"}``."""
    ctx = multiprocessing.get_context("spawn")
    rows = {"oracle": "exact", "zero": None}
    if args.jobs == 1:
        results = {row: train_restorer(args, seed, flow, 1, False) for row, flow in rows.items()}
    else:
        with ProcessPoolExecutor(min(args.jobs, 2), mp_context=ctx) as pool:
            futures = {
                row: pool.submit(train_restorer, args, seed, f, 1, False, 1) for row, f in rows.items()
            }
            results = {row: f.result() for row, f in futures.items()}
    for row, r in results.items():
        log(f"[seed {seed}] {row}: {r['psnr']:.2f} dB ({r['seconds']:.0f} s)")
    return {
        "alignment": {row: r["psnr"] for row, r in results.items()},
        "bicubic": results["zero"]["bicubic"],
    }


def run_seed(args: argparse.Namespace, seed: int, log=print) -> dict[str, Any]:
    """Every row for one seed: ``{"alignment": {...}, "radius": {...}, "length": {...}, "bicubic"}``."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="ablation_") as workdir:
        started = time.perf_counter()
        # one thread, as in the demo: with other processes on the 2 cores, a 2-thread teacher took 653 s
        # (each parallel region waits for the slower core) where it took 62 s on a quiet machine
        train_flow(args, seed, workdir, "teacher", threads=0 if args.jobs == 1 else 1)
        log(f"[seed {seed}] teacher {time.perf_counter() - started:.0f} s")
        jobs = [  # (row, flow checkpoint, radius)
            ("oracle", "exact", 1),
            ("student_distilled", "student_distilled.ckpt", 1),
            ("student_plain", "student_plain.ckpt", 1),
            ("teacher_lq", "teacher.ckpt", 1),
            ("zero", None, 1),
            ("radius_0", "student_distilled.ckpt", 0),
            ("radius_2", "student_distilled.ckpt", 2),
        ]
        if args.jobs == 1:
            for row in ("student_plain", "student_distilled"):
                train_flow(args, seed, workdir, row)
            results = {
                row: train_restorer(args, seed, _flow_path(workdir, flow), r, row == "student_distilled")
                for row, flow, r in jobs
            }
        else:
            with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
                flows = [
                    pool.submit(train_flow, args, seed, workdir, row, 1)
                    for row in ("student_plain", "student_distilled")
                ]
                [f.result() for f in flows]
                log(f"[seed {seed}] students {time.perf_counter() - started:.0f} s")
                futures = {
                    row: pool.submit(
                        train_restorer,
                        args,
                        seed,
                        _flow_path(workdir, flow),
                        r,
                        row == "student_distilled",
                        1,
                    )
                    for row, flow, r in jobs
                }
                results = {row: f.result() for row, f in futures.items()}
    for row, r in results.items():
        log(f"[seed {seed}] {row}: {r['psnr']:.2f} dB ({r['seconds']:.0f} s)")
    return {
        "alignment": {row: results[row]["psnr"] for row in ALIGNMENT},
        "radius": {
            "0": results["radius_0"]["psnr"],
            "1": results["student_distilled"]["psnr"],
            "2": results["radius_2"]["psnr"],
        },  # fmt: skip
        "length": results["student_distilled"]["length"],
        "bicubic": results["zero"]["bicubic"],
    }


GROUPS = ("alignment", "radius", "length")
# what decides a seed's numbers: a seed of --json is reused by --resume only where these all agree
_RUN_KEYS = (
    "pilot", "teacher_steps", "student_steps", "restorer_steps", "flow_freeze", "w_dis", "size", "sequences",
    "test_sequences", "frames", "clip_frames", "batch_size", "flow_batch_size", "channels", "lr",
    "teacher_lr", "flow_lr", "clip",
)  # fmt: skip


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in _RUN_KEYS}


def mean_over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every row, and its spread (the sample standard deviation, 0 for one seed)."""
    out: dict[str, Any] = {}
    spread: dict[str, Any] = {}
    groups = [g for g in GROUPS if g in per_seed[0]]  # the pilot has alignment only
    for group in groups:
        values = {k: [s[group][k] for s in per_seed] for k in per_seed[0][group]}
        out[group] = {k: statistics.fmean(v) for k, v in values.items()}
        spread[group] = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()}
    out["bicubic"] = statistics.fmean(s["bicubic"] for s in per_seed)
    out["spread"] = spread
    out["per_seed"] = per_seed
    return out


def seeds_done(args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """With ``--resume``: the seeds ``--json`` holds from a run with these settings (else none)."""
    if not args.resume or not args.json.is_file():
        return {}
    saved = json.loads(args.json.read_text())
    if saved.get("settings") != run_settings(args):
        print(f"--resume: {args.json} has other settings; every seed runs again", file=sys.stderr)
        return {}
    return {int(seed): row for seed, row in zip(saved["seeds"], saved["per_seed"], strict=True)}


def render(summary: dict[str, Any], args: argparse.Namespace, seconds: float) -> str:
    per_seed = summary["per_seed"]
    lines = [
        "| group | row | test PSNR (dB), mean | spread (sd) | per seed |",
        "|---|---|---|---|---|",
    ]  # fmt: skip

    def row(label: str, group: str, name: str) -> str:
        seeds = " / ".join(f"{s[group][name]:.2f}" for s in per_seed)
        mean, sd = summary[group][name], summary["spread"][group][name]
        return f"| {label} | {name} | {mean:.2f} | {sd:.2f} | {seeds} |"

    for group, names in (("alignment", ALIGNMENT), ("radius", [str(r) for r in RADII])):
        lines += [row(group, group, n) for n in names if n in summary.get(group, {})]
    if "length" in summary:
        lines += [row(f"length (last {SCORED_TAIL} frames)", "length", str(n)) for n in LENGTHS]
    bicubic = " / ".join(f"{s['bicubic']:.2f}" for s in per_seed)
    lines.append(f"| baseline | bicubic | {summary['bicubic']:.2f} | | {bicubic} |")
    lines.append(
        f"\nx4 VSR on {args.test_sequences} held-out synthetic sequences of {args.frames} frames at "
        f"{args.size}x{args.size}, mean over seeds {args.seeds}. Teacher {args.teacher_steps} steps, "
        f"students {args.student_steps}, every restorer {args.restorer_steps} (C {args.channels}, 1 layer, "
        f"1 block; flow frozen for {args.flow_freeze:.0%}; gradient clip {args.clip or 'none'}). "
        f"Total {seconds:.0f} s."
    )
    return "\n".join(lines)


def lq_psnr(args: argparse.Namespace) -> dict[str, float]:
    """Degraded input against HQ (vsr: bicubic x4 of the LQ), RGB PSNR on the held-out sequences."""
    from s2svr_lightning.task import Task

    out = {}
    for task in ("vsr", "deblur", "cve"):
        dm = datamodule(args, args.seed_list[0], task=task)
        scores = []
        for batch in dm.test_dataloader():
            base = Task.create(task).baseline(batch["lq"])
            scores.append(float(psnr(base, batch["hq"]).mean()))
        out[task] = statistics.fmean(scores)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _quiet(0)
    if args.lq_psnr:
        for task, value in lq_psnr(args).items():
            print(
                f"{task}: degraded input vs HQ {value:.2f} dB "
                f"({args.size} px, {args.test_sequences} sequences)"
            )
        return 0
    start = time.perf_counter()
    run = run_pilot if args.pilot else run_seed
    done = seeds_done(args)
    per_seed: list[dict[str, Any]] = []
    for seed in args.seed_list:
        if seed in done:
            print(f"[seed {seed}] from {args.json}", file=sys.stderr)
            per_seed.append(done[seed])
        else:
            per_seed.append(run(args, seed, log=lambda m: print(m, file=sys.stderr, flush=True)))
        if args.json is not None:  # after every seed, atomically: a stopped run keeps what it finished
            args.json.parent.mkdir(parents=True, exist_ok=True)
            seeds = args.seed_list[: len(per_seed)]
            summary = {**mean_over_seeds(per_seed), "seeds": seeds, "settings": run_settings(args)}
            write_json(args.json, summary, finite=False)
    summary = mean_over_seeds(per_seed)
    print(render(summary, args, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
