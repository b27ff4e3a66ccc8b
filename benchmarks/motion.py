"""How much the built-in synthetic video moves, config by config, beside estimates for real benchmarks.

For every synthetic configuration the library ships (the task files ``demo``, ``demo_deblur``,
``demo_cve``, the default ``synthetic`` dataset, and the data of ``benchmarks/flow_quality.py`` and
``benchmarks/ablation.py``) this renders the train and test splits' sequences and measures the exact
flow between consecutive frames in *LQ* pixels (the input's pixels: HQ px / 4 for VSR):

- ``mean_lq_px``, ``median_lq_px``, ``p90_lq_px``, ``p99_lq_px``: the per-pixel forward flow magnitude
  over every pixel of every pair;
- ``share_above_1_lq_px``, ``share_above_2_lq_px``: the share of pixels moving more than that;
- ``headroom_db``: alignment headroom at the input, the PSNR of a neighbouring LQ frame warped onto the
  current one with the exact flow (area-downsampled to the LQ grid) minus that of the unwarped
  neighbour, on the pixels visible in both frames (the gain an aligner could get at most, roughly).

Real benchmarks have no ground-truth flow; their rows are estimates from geometry (frame rate,
resolution, handheld or not: README, "Synthetic video"), not measurements.

Usage: ``python benchmarks/motion.py [--sequences N] [--json PATH]`` (``make bench-motion``); writes
``{"<config>": {"mean_lq_px", "median_lq_px", "p90_lq_px", "p99_lq_px", "share_above_1_lq_px",
"share_above_2_lq_px", "headroom_db", "hq_size", "scale"}}``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from s2svr_lightning.atomic import write_json
from s2svr_lightning.conf import CONF_DIR
from s2svr_lightning.data.datasets.synthetic import SyntheticConfig, SyntheticSource
from s2svr_lightning.models.warp import flow_warp
from s2svr_lightning.utils import to_float_frames

TASK_FILES = ("demo", "demo_deblur", "demo_cve")
# estimated from frame rate, resolution and capture (no ground-truth flow exists for them)
REAL = {
    "REDS (x4, 24 fps handheld)": "1-3 mean, 5-10+ in fast clips",
    "Vimeo-90K (x4, 448x256)": "0.5-1.5 mean",
    "GoPro (deblur, 1280x720)": "several to tens of px",
}
_FIELDS = {"cache_dir", "cache_size"}


def _dataset_options(path: Path) -> dict[str, Any]:
    """A dataset config file's options, its ``defaults`` chain merged (plain YAML, no Hydra needed)."""
    raw = OmegaConf.to_container(OmegaConf.load(path))
    merged: dict[str, Any] = {}
    for parent in raw.pop("defaults", []):
        if parent != "_self_":
            merged.update(_dataset_options(path.parent / f"{parent}.yaml"))
    merged.update(raw)
    return merged


def task_dataset(task_file: str) -> tuple[str, int, dict[str, Any]]:
    """``(kind, scale, synthetic options)`` of a task file of conf/task."""
    task = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "task" / f"{task_file}.yaml"))
    # "- override /dataset: demo" reads as {"override /dataset": "demo"}
    dataset = next(
        d["override /dataset"] for d in task["defaults"] if isinstance(d, dict) and "override /dataset" in d
    )
    options = _dataset_options(CONF_DIR / "dataset" / f"{dataset}.yaml")
    return task["kind"], int(task["scale"]), options


def configs() -> dict[str, tuple[str, int, dict[str, Any]]]:
    """Every synthetic configuration: ``{name: (kind, scale, options)}``."""
    out = {name: task_dataset(name) for name in TASK_FILES}
    out["synthetic"] = ("vsr", 4, _dataset_options(CONF_DIR / "dataset" / "synthetic.yaml"))
    flow = {"size": 64, "frames": 8, "train_sequences": 32, "test_sequences": 3}  # flow_quality defaults
    for kind in ("vsr", "deblur", "cve"):
        out[f"bench_flow_{kind}"] = (kind, 4 if kind == "vsr" else 1, flow)
    out["bench_ablation"] = ("vsr", 4, {"size": 64, "frames": 30, "train_sequences": 24, "test_sequences": 3})
    return out


def synthetic_config(options: dict[str, Any], sequences: int | None = None) -> SyntheticConfig:
    options = {k: v for k, v in options.items() if k not in _FIELDS | {"name"}}
    size = options.pop("size", None)
    if size is not None:
        options.setdefault("height", size)
        options.setdefault("width", size)
    if "num_sprites" in options:
        options["num_sprites"] = tuple(options["num_sprites"])
    cfg = SyntheticConfig(**options)
    if sequences is not None:
        cfg = SyntheticConfig(
            **{
                **cfg.__dict__,
                "train_sequences": min(cfg.train_sequences, sequences),
                "test_sequences": min(cfg.test_sequences, sequences),
            }
        )
    return cfg


def _masked_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    mse = float(((a - b) ** 2 * mask).sum() / (mask.sum() * a.shape[0]).clamp(min=1))
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


@torch.no_grad()
def sequence_motion(seq: dict[str, torch.Tensor], scale: int) -> tuple[np.ndarray, list[float]]:
    """Flow magnitudes in LQ px (every pixel of every pair) and the per-pair headroom in dB."""
    flow = seq["flow"].float()
    magnitude = (flow.norm(dim=1) / scale).flatten().numpy()
    lq = to_float_frames(seq["lq"])
    flow_lq = F.avg_pool2d(flow, scale) / scale if scale > 1 else flow
    # a LQ pixel is visible in both frames when every HQ pixel under it is
    valid = -F.max_pool2d(-seq["flow_valid"].float(), scale) if scale > 1 else seq["flow_valid"].float()
    gains = []
    for t in range(flow.shape[0]):
        if valid[t].sum() < 1:
            continue
        warped = flow_warp(lq[t + 1 : t + 2], flow_lq[t : t + 1])[0]
        aligned = _masked_psnr(warped, lq[t], valid[t])
        unaligned = _masked_psnr(lq[t + 1], lq[t], valid[t])
        gains.append(aligned - unaligned)
    return magnitude, gains


def measure(kind: str, scale: int, cfg: SyntheticConfig, seed: int = 0) -> dict[str, float]:
    magnitudes, gains = [], []
    for split in ("train", "test"):
        source = SyntheticSource(split, task=kind, scale=scale, seed=seed, config=cfg)
        for index in range(len(source)):
            m, g = sequence_motion(source.render(index), source.scale)
            magnitudes.append(m), gains.extend(g)
    mag = np.concatenate(magnitudes)
    return {
        "mean_lq_px": float(mag.mean()),
        "median_lq_px": float(np.median(mag)),
        "p90_lq_px": float(np.percentile(mag, 90)),
        "p99_lq_px": float(np.percentile(mag, 99)),
        "share_above_1_lq_px": float((mag > 1).mean()),
        "share_above_2_lq_px": float((mag > 2).mean()),
        "headroom_db": float(np.mean(gains)),
        "hq_size": cfg.height,
        "scale": scale,
    }


def render(table: dict[str, dict[str, float]]) -> str:
    head = "| config | task | HQ px | mean | median | p90 | p99 | > 1 LQ px | > 2 LQ px | headroom (dB) |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for name, r in table.items():
        lines.append(
            f"| {name} | {r['task']} x{r['scale']} | {r['hq_size']} | {r['mean_lq_px']:.2f} | "
            f"{r['median_lq_px']:.2f} | {r['p90_lq_px']:.2f} | {r['p99_lq_px']:.2f} | "
            f"{r['share_above_1_lq_px']:.0%} | {r['share_above_2_lq_px']:.0%} | {r['headroom_db']:.1f} |"
        )
    for name, estimate in REAL.items():
        lines.append(f"| {name} | estimate | | {estimate} | | | | | | |")
    lines.append("\nFlow in LQ px per frame (train and test splits, exact synthetic flow, every pixel).")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sequences", type=int, default=12, help="sequences measured per split (at most)")
    p.add_argument("--configs", default=None, help="comma list of configs (default: every one)")
    p.add_argument("--size", type=int, default=None, help="override every config's HQ size (tests)")
    p.add_argument("--frames", type=int, default=None, help="override every config's frames (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.sequences < 1:
        p.error(f"--sequences must be >= 1, got {args.sequences}")
    known = configs()
    args.names = list(known) if args.configs is None else args.configs.split(",")
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {sorted(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    table = {}
    for name in args.names:
        kind, scale, options = configs()[name]
        options = dict(options)
        if args.size is not None:
            options.pop("height", None), options.pop("width", None)
            options["size"] = args.size
        if args.frames is not None:
            options["frames"] = args.frames
        table[name] = {
            "task": kind,
            **measure(kind, scale, synthetic_config(options, args.sequences), args.seed),
        }
    print(render(table))
    print(
        f"{time.perf_counter() - start:.0f} s, up to {args.sequences} sequences per split, seed {args.seed}."
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, table, finite=False)  # atomic: no partial table
    return 0


if __name__ == "__main__":
    sys.exit(main())
