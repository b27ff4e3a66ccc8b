"""Data loading: training samples per second per worker for each dataset layout at its recipe size.

Each layout is a tree written by :mod:`s2svr_lightning.data.datasets.layouts` (the folder and file names
of the real dataset, the same writers the tests use) with frames of a real photograph panned a few
pixels per frame (``speed.photo_clip``), read through the library's DataModule exactly as training reads
it (``train_dataset()`` items: random window and crop, flips, transpose, reversal). Sizes are the recipes'
(``conf/task/*.yaml``):

- ``reds``: 15 frames, HQ crop 256 of 1280x720 PNG, LQ crop 64 of the 320x180 bicubic PNG (vsr_reds4);
- ``vimeo_bix4`` / ``vimeo``: 7 frames mirrored to 14, crop 256 of 448x256 PNG, LQ from a BIx4 tree or
  by MATLAB bicubic on the fly (the vimeo config's default, no ``lq_root``) (vsr_vimeo, batch 2);
- ``gopro``: 7 frames, crop 256 of 1280x720 blur/sharp PNG (deblur_gopro);
- ``mfqe``: 7 frames, crop 128 of 1920x1080 YUV 4:2:0, raw and an x265 QP37 low-delay-P encode
  (cve_mfqe, batch 4);
- ``paired``: user footage as H.264 MP4 (1280x720 HQ, 320x180 LQ, 1 s GOP), the REDS recipe;
  ``paired_decord`` reads the same files with ``backend=decord``;
- ``video_folder_{vsr,deblur,cve}``: 1280x720 H.264 with the LQ made by the task's degradation on the
  crop: bicubic x4 (REDS recipe), the mean of 7 consecutive frames (GoPro recipe: 49 decoded frames per
  7-frame sample), HEVC QP37 of the crop (MFQE recipe);
- ``synthetic`` / ``synthetic_render``: the built-in video at the demo's recipe (64x64, 5 frames, batch
  2), from the in-memory cache (every epoch after the first) and rendered (the first epoch).

Measured per layout, one torch thread (as in a DataLoader worker), files in the page cache (disk reads
are not counted):

- ``ms / sample``: median wall and CPU time of ``dataset[i]`` in this process; ``samples/s per worker``
  is 1000 / CPU ms, the rate of a worker that has a core to itself (CPU time is what other processes on
  a shared machine do not inflate; decoders' own threads count in it);
- where the CPU time goes: decoding (PNG / video / YUV to RGB / rendering), stacking the crops into float
  tensors, the degradation, the augmentations, and the rest (window and crop draws, slicing);
- ``loader N``: samples/s through the DataModule's ``train_dataloader()`` with N workers (first batch,
  the workers' start, excluded): on 2 shared cores this says how the loader scales here, not on a
  GPU server.

The workers a GPU needs: a step rate of S steps/s at batch B consumes S * B samples/s, so it needs
``ceil(S * B / r)`` workers of rate r (each with a core of its own). The table of that rule is printed
for a few S and, where ``benchmarks/train_step.py`` rows are given, for the CPU step measured there.

``--baseline-src DIR`` measures each layout with this checkout's ``src`` and another's (e.g. ``git
archive OLD src | tar -x -C DIR/..``) in child processes, ``--rounds`` times each, alternating which goes
first, on the same trees and the same random draws, and says whether the samples are identical.

Run: ``python benchmarks/data_loading.py [--quick] [--layouts reds,gopro] [--samples N] [--workers 0,1,2]
[--root DIR] [--baseline-src DIR [--rounds R]] [--train-json PATH] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# a child measuring another checkout reads that checkout's src (see --baseline-src)
_SRC = os.environ.get("S2SVR_BENCH_SRC", str(ROOT / "src"))
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from speed import markdown_table  # noqa: E402

if _SRC != str(ROOT / "src"):  # speed.py put this checkout's src first
    sys.path[:] = [_SRC] + [p for p in sys.path if p not in (_SRC, str(ROOT / "src"))]


@dataclass(frozen=True)
class Layout:
    """One dataset layout at one size: what is written, and the training recipe that reads it."""

    name: str
    dataset: str  # the dataset entry
    task: str
    frames: int  # num_frames of the recipe
    crop: int  # HQ crop side
    batch: int  # per-GPU batch of the recipe
    hq: tuple[int, int]  # stored HQ frame size (H, W)
    length: int  # stored frames per sequence
    sequences: int = 2
    mirror: bool = False
    blur_frames: int = 7
    options: dict = field(default_factory=dict)  # extra dataset options
    recipe: str = ""
    files: str = ""
    tree: str = ""  # read another layout's tree (the same files, other options)


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("reds", "reds", "vsr", 15, 256, 1, (720, 1280), 20, recipe="vsr_reds4",
               files="{hq} + {lq} PNG"),
        Layout("vimeo_bix4", "vimeo", "vsr", 7, 256, 2, (256, 448), 7, sequences=4, mirror=True,
               recipe="vsr_vimeo", files="{hq} + BIx4 {lq} PNG"),
        Layout("vimeo", "vimeo", "vsr", 7, 256, 2, (256, 448), 7, sequences=4, mirror=True,
               recipe="vsr_vimeo", files="{hq} PNG, bicubic on the fly"),
        Layout("gopro", "gopro", "deblur", 7, 256, 1, (720, 1280), 12, recipe="deblur_gopro",
               files="{hq} blur + sharp PNG"),
        Layout("mfqe", "mfqe", "cve", 7, 128, 4, (1080, 1920), 10, recipe="cve_mfqe",
               files="{hq} YUV 4:2:0, raw + x265 QP37"),
        Layout("paired", "paired", "vsr", 15, 256, 1, (720, 1280), 60, recipe="vsr_reds4 sizes",
               files="{hq} + {lq} H.264 MP4"),
        Layout("paired_decord", "paired", "vsr", 15, 256, 1, (720, 1280), 60, options={"backend": "decord"},
               recipe="vsr_reds4 sizes", files="{hq} + {lq} H.264 MP4, read by decord", tree="paired"),
        Layout("video_folder_vsr", "video_folder", "vsr", 15, 256, 1, (720, 1280), 60,
               recipe="vsr_reds4 sizes", files="{hq} H.264, bicubic on the fly"),
        Layout("video_folder_deblur", "video_folder", "deblur", 7, 256, 1, (720, 1280), 60,
               recipe="deblur_gopro sizes", files="{hq} H.264, {blur}-frame blur on the fly"),
        Layout("video_folder_cve", "video_folder", "cve", 7, 128, 4, (720, 1280), 60,
               recipe="cve_mfqe sizes", files="{hq} H.264, HEVC QP37 on the fly"),
        Layout("synthetic", "synthetic", "vsr", 5, 64, 2, (64, 64), 10, sequences=4, recipe="demo",
               files="{hq}, rendered once, then cached"),
        Layout("synthetic_render", "synthetic", "vsr", 5, 64, 2, (64, 64), 10, sequences=4,
               options={"cache_size": 0}, recipe="demo", files="{hq}, rendered for every sample"),
    )
}  # fmt: skip


def describe(layout: Layout) -> str:
    """What is on disk, with the sizes of this layout."""
    (h, w), s = layout.hq, 4 if layout.task == "vsr" else 1
    return layout.files.format(hq=f"{w}x{h}", lq=f"{w // s}x{h // s}", blur=layout.blur_frames)


def quick_layout(layout: Layout) -> Layout:
    """The same layout at smoke size (tiny frames, short clips, 3-frame windows)."""
    blur = 3 if layout.task == "deblur" else layout.blur_frames
    length = 3 * blur + 2 if layout.task == "deblur" and layout.dataset == "video_folder" else 7
    return replace(layout, frames=3, crop=32, hq=(48, 64), length=length, sequences=2, blur_frames=blur)


# --------------------------------------------------------------------------------------------------
# Trees
# --------------------------------------------------------------------------------------------------
def _u8(frames: torch.Tensor):
    from s2svr_lightning.utils import to_uint8_frames

    return to_uint8_frames(frames, channels_last=True).numpy()


def _clips(layout: Layout, *, extra: int = 0) -> list[torch.Tensor]:
    """``sequences`` panned-photograph clips ``(length + extra, 3, H, W)`` float, each panning its own
    way."""
    from speed import photo_clip

    steps = [(1.5, 2.5), (1.0, 2.0), (2.0, 1.5), (0.5, 3.0)]
    return [
        photo_clip(layout.length + extra, *layout.hq, step=steps[i % len(steps)])
        for i in range(layout.sequences)
    ]


def write_tree(layout: Layout, root: Path) -> dict:
    """Write ``layout``'s tree under ``root`` (a complete one already there is kept); returns the dataset
    options that read it."""
    from s2svr_lightning.atomic import atomic_write_text
    from s2svr_lightning.data.datasets import layouts

    what = ("dataset", "task", "hq", "length", "sequences", "blur_frames")
    spec = {k: v for k, v in asdict(layout).items() if k in what}
    spec = json.dumps({**spec, "tree": layout.tree or layout.name}, sort_keys=True)
    marker = root / "tree.json"
    options = _options(layout, root)
    if marker.is_file() and marker.read_text() == spec:
        return options
    if layout.dataset == "synthetic":
        atomic_write_text(marker, spec)
        return options
    from s2svr_lightning.data.degradations import bicubic_downsample, hevc_ldp_yuv420, temporal_blur

    clips = _clips(layout, extra=6 if layout.dataset == "gopro" else 0)
    if layout.dataset == "reds":
        layouts.write_reds(
            root, {f"{i:03d}": (_u8(c), _u8(bicubic_downsample(c))) for i, c in enumerate(clips, 240)}
        )
    elif layout.dataset == "vimeo":
        entries = {f"{i + 1:05d}/0001": c for i, c in enumerate(clips)}
        lq = (
            {e: _u8(bicubic_downsample(c)) for e, c in entries.items()}
            if layout.name == "vimeo_bix4"
            else None
        )
        hq = {e: _u8(c) for e, c in entries.items()}
        layouts.write_vimeo(root, hq, dict(list(hq.items())[:1]), lq=lq)
    elif layout.dataset == "gopro":
        # the blur of each frame: the mean of the 7 frames around it, as GoPro's blur averages sub-frames
        seqs = {
            f"GOPR{i + 1:04d}_11_00": (4001, _u8(temporal_blur(c, 7, stride=1)), _u8(c[3:-3]))
            for i, c in enumerate(clips)
        }
        layouts.write_gopro(root, {"train": seqs})
    elif layout.dataset == "mfqe":
        from s2svr_lightning.color import rgb_to_yuv420

        videos = {}
        for i, c in enumerate(clips):
            raw = [rgb_to_yuv420(frame[None]) for frame in c]  # frame by frame: float64 planes are large
            raw = tuple(np.concatenate(p) for p in zip(*raw))
            coded = list(hevc_ldp_yuv420(zip(*raw), 37, preset="ultrafast"))
            coded = tuple(np.stack(p) for p in zip(*coded))
            videos[f"Clip{i}"] = (raw, coded)
        layouts.write_mfqe(root, {"train_108": videos})
    elif layout.dataset == "paired":
        for i, c in enumerate(clips):
            _write_video(root / "hq" / f"clip{i}.mp4", _u8(c))
            _write_video(root / "lq" / f"clip{i}.mp4", _u8(bicubic_downsample(c)))
    elif layout.dataset == "video_folder":
        for i, c in enumerate(clips):
            _write_video(root / f"clip{i}.mp4", _u8(c))
    else:
        raise ValueError(f"expected a dataset of {sorted(LAYOUTS)}, got {layout.dataset!r}")
    atomic_write_text(marker, spec)
    return options


def _write_video(path: Path, frames) -> None:
    from s2svr_lightning.data.datasets.layouts import write_clip

    # 30 fps with a keyframe every second, as phones and cameras record
    write_clip(path, frames, fps=30, codec="libx264", pix_fmt="yuv420p", crf=18, options={"g": "30"})


def _options(layout: Layout, root: Path) -> dict:
    name = layout.dataset
    options: dict = {"name": name, **layout.options}
    if name == "synthetic":
        h, w = layout.hq
        # rendered sequences are cached on disk as the synthetic config does, for the loaders' workers
        cache = {} if layout.options.get("cache_size") == 0 else {"cache_dir": str(root / "cache")}
        return {**options, "height": h, "width": w, "frames": layout.length,
                "train_sequences": layout.sequences, **cache}  # fmt: skip
    if name == "vimeo" and layout.name == "vimeo_bix4":
        options["lq_root"] = str(root / "BIx4")
    if name == "paired":
        return {**options, "lq": str(root / "lq"), "hq": str(root / "hq")}
    return {**options, "root": str(root)}


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != "tree.json")


# --------------------------------------------------------------------------------------------------
# Where the time goes
# --------------------------------------------------------------------------------------------------
# stage -> (module, attribute path) of the functions whose CPU time counts for it; an entry missing in a
# checkout is skipped, so an older one is measured too
STAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "decode": (
        ("s2svr_lightning.data.media.image_io", "read_image"),
        ("s2svr_lightning.data.media.video_io", "VideoReader.get_frames"),
        ("s2svr_lightning.data.datasets.mfqe", "yuv420_to_rgb"),
        ("s2svr_lightning.data.datasets.synthetic", "SyntheticSource.render"),
    ),
    "to_tensor": (
        ("s2svr_lightning.data.media.image_io", "frames_to_tensor"),
        ("s2svr_lightning.data.media.video_io", "frames_to_tensor"),
        ("s2svr_lightning.data.datasets.clips", "_to_sample"),
    ),
    "degrade": (
        ("s2svr_lightning.task", "Task.degrade"),
        ("s2svr_lightning.data.datasets.base", "quantize_8bit"),
    ),
    "augment": tuple(
        ("s2svr_lightning.data.datasets.clips", f"_{name}")
        for name in ("hflip", "vflip", "transpose", "reverse", "mirror")
    ),
}


@contextlib.contextmanager
def stage_timer() -> Iterator[dict[str, float]]:
    """Patch the :data:`STAGES` functions to add their CPU seconds to the yielded dict (outermost call only:
    a stage called inside another counts for the outer one)."""
    totals = dict.fromkeys(STAGES, 0.0)
    depth = [0]
    undo: list[tuple[object, str, object]] = []

    def wrap(fn: Callable, stage: str) -> Callable:
        def timed(*args, **kwargs):
            if depth[0]:
                return fn(*args, **kwargs)
            depth[0] += 1
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[stage] += time.process_time() - start
                depth[0] -= 1

        return timed

    try:
        for stage, entries in STAGES.items():
            for module_name, path in entries:
                owner = importlib.import_module(module_name)
                *parents, attr = path.split(".")
                for parent in parents:
                    owner = getattr(owner, parent, None)
                if owner is None or not hasattr(owner, attr):
                    continue
                original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
                undo.append((owner, attr, original))
                setattr(owner, attr, wrap(getattr(owner, attr), stage))
        yield totals
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------
def _datamodule(layout: Layout, options: dict, workers: int = 0):
    from s2svr_lightning.data import VideoRestorationDataModule

    return VideoRestorationDataModule(
        dataset=options,
        task=layout.task,
        # how LQ is made is the task's (video_folder blurs this many frames; GoPro's stored blur had as many)
        degradation={"blur_frames": layout.blur_frames} if layout.task == "deblur" else {},
        num_frames=layout.frames,
        crop_size=layout.crop,
        batch_size=layout.batch,
        num_workers=workers,
        mirror=layout.mirror,
        samples_per_epoch=10_000,
    )


def _digest(sample: dict) -> str:
    h = hashlib.sha1()
    for key in ("lq", "hq"):
        h.update(str(tuple(sample[key].shape)).encode())
        h.update(sample[key].numpy().tobytes())
    return h.hexdigest()[:16]


def measure_samples(layout: Layout, options: dict, *, samples: int, seed: int = 0) -> dict:
    """``dataset[i]`` for ``samples`` items in this process, after a warm-up over every sequence: the wall
    and CPU seconds of each, the CPU seconds of each stage (totals), and a digest of every sample (the
    same draws give the same digests in any checkout that loads the same values)."""
    torch.set_num_threads(1)
    dm = _datamodule(layout, options)
    start = time.perf_counter()
    dataset = dm.train_dataset()  # lists and validates the training split
    setup_s = time.perf_counter() - start
    for i in range(len(dataset.source)):  # warm-up: open files, build indices, fill a cache
        dataset[i]
    torch.manual_seed(seed)
    wall, cpu, digests = [], [], []
    with stage_timer() as stages:
        for i in range(samples):
            w0, c0 = time.perf_counter(), time.process_time()
            sample = dataset[i]
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
            digests.append(_digest(sample))
    shape = tuple(sample["hq"].shape)
    return {
        "setup_s": setup_s,
        "wall": wall,
        "cpu": cpu,
        "stages": dict(stages),
        "digests": digests,
        "sample": f"{shape[0]} x {shape[-2]}x{shape[-1]}",
    }


def summarize(runs: Sequence[dict]) -> dict:
    """Medians over the samples of one or more :func:`measure_samples` runs, and each stage's share of the
    CPU time."""
    cpu = [t for r in runs for t in r["cpu"]]
    wall = [t for r in runs for t in r["wall"]]
    out = {
        "ms_cpu": 1000 * statistics.median(cpu),
        "ms_wall": 1000 * statistics.median(wall),
        "setup_s": runs[0]["setup_s"],
        "sample": runs[0]["sample"],
    }
    for stage in STAGES:
        out[f"{stage}_pct"] = 100.0 * sum(r["stages"][stage] for r in runs) / sum(cpu)
    out["other_pct"] = max(0.0, 100.0 - sum(out[f"{s}_pct"] for s in STAGES))
    return out


def measure_loader(layout: Layout, options: dict, *, workers: int, batches: int) -> float:
    """Samples/s through ``train_dataloader()`` with ``workers`` workers, after its first batch."""
    torch.set_num_threads(1)
    loader = _datamodule(layout, options, workers).train_dataloader()
    it = iter(loader)
    next(it)
    start, count = time.perf_counter(), 0
    for _ in range(batches):
        count += next(it)["lq"].shape[0]
    rate = count / (time.perf_counter() - start)
    del it
    return rate


def _child(layout: Layout, options: dict, samples: int, src: str) -> dict:
    """:func:`measure_samples` in a fresh process importing ``src``."""
    with tempfile.TemporaryDirectory(prefix="s2svr_data_") as tmp:
        out = Path(tmp) / "row.json"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            json.dumps(asdict(layout)),
            "--options",
            json.dumps(options),
        ]
        cmd += ["--samples", str(samples), "--out", str(out)]
        env = {**os.environ, "S2SVR_BENCH_SRC": src, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ChildFailed(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output")
        return json.loads(out.read_text())


class ChildFailed(RuntimeError):
    """A child measurement failed; the message is its last line of error output."""


def bench_data_loading(
    *,
    layouts: Sequence[str] = tuple(LAYOUTS),
    samples: int = 8,
    workers: Sequence[int] = (0, 1, 2),
    batches: int = 4,
    quick: bool = False,
    root: str | os.PathLike | None = None,
    baseline_src: str | None = None,
    rounds: int = 3,
    json_path: str | os.PathLike | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One row per layout (see the module docstring). ``threads`` is accepted for ``run_all`` and ignored:
    loading runs on one torch thread, as a DataLoader worker does."""
    del threads
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown:
        raise ValueError(f"expected layouts from {sorted(LAYOUTS)}, got {unknown}")
    rows = []
    with contextlib.ExitStack() as stack:
        stack.callback(torch.set_num_threads, torch.get_num_threads())  # the measurements use one
        base = Path(root) if root else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s2svr_")))
        for k, name in enumerate(layouts):
            layout = quick_layout(LAYOUTS[name]) if quick else LAYOUTS[name]
            folder = base / ("quick" if quick else "full") / (layout.tree or name)
            log(f"{name}: writing the tree in {folder} ...")
            start = time.perf_counter()
            options = write_tree(layout, folder)
            row = {"layout": name, "files": describe(layout), "recipe": layout.recipe, "batch": layout.batch}
            row["tree_mib"] = tree_bytes(folder) / 2**20 if folder.exists() else 0.0
            row["write_s"] = time.perf_counter() - start
            log(f"{name}: {samples} samples of {layout.frames} frames, crop {layout.crop} ...")
            if baseline_src:
                # rounds of both checkouts, alternating which goes first, so that a change of the
                # machine's load favours neither; every round draws the same windows and crops
                runs: dict[str, list[dict]] = {"new": [], "old": []}
                for r in range(rounds):
                    order = [("new", _SRC), ("old", baseline_src)][:: 1 if (k + r) % 2 == 0 else -1]
                    for tag, src in order:
                        try:
                            runs[tag].append(_child(layout, options, samples, src))
                        except ChildFailed as err:
                            if tag == "new":
                                raise
                            row["identical"] = f"before: fails ({err})"  # a bug the change fixed
                    if "identical" in row:
                        break
                new = summarize(runs["new"])
                if runs["old"] and "identical" not in row:
                    old = summarize(runs["old"])
                    row["baseline_ms_cpu"] = old["ms_cpu"]
                    row["baseline_ms_wall"] = old["ms_wall"]
                    row["speedup"] = old["ms_cpu"] / new["ms_cpu"]
                    same = {tuple(run["digests"]) for tag in runs for run in runs[tag]}
                    row["identical"] = "yes" if len(same) == 1 else "NO"
            else:
                new = summarize([measure_samples(layout, options, samples=samples)])
            row.update(new)
            row["per_worker"] = 1000.0 / new["ms_cpu"]
            for n in workers:
                log(f"{name}: DataLoader with {n} worker(s) ...")
                row[f"loader_{n}"] = measure_loader(layout, options, workers=n, batches=batches)
            rows.append(row)
            if json_path:  # what is finished survives a stopped or failed run
                Path(json_path).write_text(json.dumps(rows, indent=2))
    return rows


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def workers_needed(steps_per_s: float, batch: int, per_worker: float) -> int:
    """Workers of ``per_worker`` samples/s that feed ``steps_per_s`` steps of ``batch`` samples."""
    if steps_per_s <= 0 or batch < 1 or per_worker <= 0:
        raise ValueError(
            f"expected positive steps/s, batch and rate, got {steps_per_s}, {batch}, {per_worker}"
        )
    return max(1, math.ceil(steps_per_s * batch / per_worker - 1e-9))


STEP_RATES = (0.5, 1.0, 2.0, 5.0)
# train_step.py presets -> the layouts their task reads
_PRESET_LAYOUTS = {
    "vsr": (
        "reds",
        "vimeo_bix4",
        "vimeo",
        "paired",
        "paired_decord",
        "video_folder_vsr",
        "synthetic",
        "synthetic_render",
    ),
    "deblur": ("gopro", "video_folder_deblur"),
    "cve": ("mfqe", "video_folder_cve"),
}


def columns(rows: Sequence[dict], workers: Sequence[int] = (0, 1, 2)) -> list[tuple[str, str]]:
    cols = [
        ("layout", "layout"),
        ("files", "on disk"),
        ("sample", "sample HQ (T x crop)"),
        ("ms_cpu", "CPU ms / sample"),
        ("ms_wall", "wall ms / sample"),
        ("per_worker", "samples/s per worker"),
    ]
    if any("speedup" in r for r in rows):
        cols += [
            ("baseline_ms_cpu", "before: CPU ms"),
            ("speedup", "speed-up"),
            ("identical", "same samples"),
        ]
    cols += [(f"{s}_pct", f"% {s.replace('_', ' ')}") for s in (*STAGES, "other")]
    cols += [
        (f"loader_{n}", f"loader {n} w (samples/s)") for n in workers if any(f"loader_{n}" in r for r in rows)
    ]
    return cols


def workers_table(rows: Sequence[dict], train_rows: Sequence[dict] | None = None) -> list[dict]:
    """Per layout: the workers needed at each of :data:`STEP_RATES` (the recipe's batch), and at the CPU
    step of ``train_rows`` (``benchmarks/train_step.py``: batch 1) where one is given for its task."""
    cpu_rate = {}
    for t in train_rows or []:
        if t.get("status") == "ok" and t.get("step_s"):
            cpu_rate.setdefault(t["preset"], 1.0 / t["step_s"])
    out = []
    for r in rows:
        row = {"layout": r["layout"], "batch": r["batch"], "per_worker": r["per_worker"]}
        for s in STEP_RATES:
            row[f"s{s:g}"] = workers_needed(s, r["batch"], r["per_worker"])
        preset = next((p for p, names in _PRESET_LAYOUTS.items() if r["layout"] in names), None)
        if preset in cpu_rate:
            row["cpu_steps"] = cpu_rate[preset]
            row["cpu_workers"] = workers_needed(cpu_rate[preset], 1, r["per_worker"])
        out.append(row)
    return out


def render(rows: Sequence[dict], train_rows: Sequence[dict] | None = None) -> str:
    """The two markdown tables: rates and stages per layout, and the workers needed per step rate."""
    table = workers_table(rows, train_rows)
    cols = [("layout", "layout"), ("batch", "recipe batch B"), ("per_worker", "samples/s per worker r")]
    cols += [(f"s{s:g}", f"S = {s:g} steps/s") for s in STEP_RATES]
    if any("cpu_steps" in t for t in table):
        cols += [("cpu_steps", "CPU step (train_step.py), steps/s"), ("cpu_workers", "workers at it (B = 1)")]
    workers = sorted({int(k.split("_")[1]) for r in rows for k in r if k.startswith("loader_")})
    return "\n".join(
        [
            markdown_table(rows, columns(rows, workers)),
            "",
            "Workers a training step needs: ceil(S x B / r), each with a core of its own.",
            "",
            markdown_table(table, cols),
        ]
    )


def quick_settings() -> dict:
    return {"quick": True, "samples": 2, "workers": (0, 1), "batches": 1}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny trees, 2 samples, 0 and 1 workers")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated subset of the layouts")
    p.add_argument("--samples", type=int, default=None, help="timed samples per layout (default 8)")
    p.add_argument("--workers", default=None, help="DataLoader worker counts to time (default 0,1,2)")
    p.add_argument("--batches", type=int, default=None, help="timed batches per loader (default 4)")
    p.add_argument("--root", default=None, help="keep the trees here (reused by later runs)")
    p.add_argument("--baseline-src", default=None, help="also measure this src folder, side by side")
    p.add_argument("--rounds", type=int, default=3, help="with --baseline-src: rounds of both checkouts")
    p.add_argument("--train-json", default=None, help="rows of benchmarks/train_step.py --json")
    p.add_argument("--json", default=None, help="also write the rows as JSON (after each layout)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--options", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        layout = Layout(**{**json.loads(args.child), "hq": tuple(json.loads(args.child)["hq"])})
        row = measure_samples(layout, json.loads(args.options), samples=args.samples or 8)
        Path(args.out).write_text(json.dumps(row))
        return 0
    kw = quick_settings() if args.quick else {}
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown:
        p.error(f"expected --layouts from {', '.join(LAYOUTS)}, got {', '.join(unknown)}")
    if args.samples is not None:
        kw["samples"] = args.samples
    if args.workers is not None:
        kw["workers"] = tuple(int(n) for n in args.workers.split(",") if n.strip())
    if args.batches is not None:
        kw["batches"] = args.batches
    if args.baseline_src:
        kw["baseline_src"] = str(Path(args.baseline_src).resolve())
        kw["rounds"] = args.rounds
    log = lambda m: print(m, file=sys.stderr)
    rows = bench_data_loading(layouts=layouts, root=args.root, json_path=args.json, log=log, **kw)
    train_rows = json.loads(Path(args.train_json).read_text()) if args.train_json else None
    print(render(rows, train_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
