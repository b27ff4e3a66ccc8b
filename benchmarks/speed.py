"""Inference speed of each S2SVR builder, streaming, fp32 and bf16, against the machine's measured conv rate.

For each builder at its standard size (VSR: 180x320 LQ; deblurring and compressed video: 360x640, a quarter
of 720x1280, stated in the table; ``--full-size`` for 720x1280) and each precision:

- ms per output frame (median of the timed pushes of a :class:`StreamingRestorer` in steady state, after
  warm-up) and frames/s;
- multiply-accumulates per output frame, counted by ``torch.utils.flop_counter.FlopCounterMode`` on one
  steady-state streaming step (MACs = FLOPs / 2);
- the fraction of the measured peak: (MACs per frame / seconds per frame) against the rate of a large
  3x3 convolution (the network's own width, at its size, best of the contiguous and channels_last layouts,
  same precision) measured right after each timed push, so that both see the same machine load; the
  median over the timed pushes;
- the flow net's share of each frame's time under each flow-input rule (``native``: the LQ pair as it
  is; ``hq``: upsampled to the HQ size, the default; ``256x256``: the authors' fixed size), one thread,
  CPU time (:func:`flow_share`);
- for bf16, its speed-up over fp32 and the PSNR of its output against the fp32 output and against the
  ground truth (the clip is a real photograph moving over time, degraded with the task's degradation).

Speed does not depend on the weights, so an untrained network with the builder's configuration is used
unless ``--ckpt`` gives a restorer checkpoint.

Run: ``python benchmarks/speed.py [--quick] [--frames N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# As the commands set it for their own process (s2svr_lightning.commands.PROCESS_ENV), before torch loads:
# idle OpenMP threads sleep, the conditions this benchmark's figures were measured in.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

PRECISIONS = ("fp32", "bf16")


# --------------------------------------------------------------------------------------------------
# Shared helpers (also used by memory.py, train_step.py and run_all.py)
# --------------------------------------------------------------------------------------------------
def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Rows of dicts as a markdown table; ``columns`` are ``(key, header)``; floats formatted compactly."""

    def fmt(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if v != v:
                return "-"
            if abs(v) >= 100:
                return f"{v:,.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
        return str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def bf16_supported() -> bool:
    """Whether this CPU has native bf16 arithmetic (oneDNN's check: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def photo_clip(
    num_frames: int, height: int, width: int, *, step: tuple[float, float] = (1.5, 2.5)
) -> torch.Tensor:
    """A real photograph (skimage's astronaut) panned smoothly: ``(T, 3, H, W)`` float in [0, 1].

    The photograph is enlarged to cover the frame plus the pan, then each frame is a crop at a sub-pixel
    offset (bilinear), so consecutive frames differ by a realistic few-pixel motion.
    """
    from skimage import data

    from s2svr_lightning.utils import to_float_frames

    img = to_float_frames(data.astronaut(), channels_last=True).unsqueeze(0)
    need_h = height + int(abs(step[0]) * num_frames) + 4
    need_w = width + int(abs(step[1]) * num_frames) + 4
    grow = max(need_h / img.shape[-2], need_w / img.shape[-1], 1.0)
    if grow > 1.0:
        size = (int(img.shape[-2] * grow) + 1, int(img.shape[-1] * grow) + 1)
        img = F.interpolate(img, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)
    frames = []
    for t in range(num_frames):
        dy, dx = t * step[0], t * step[1]
        y0, x0 = int(dy), int(dx)
        crop = img[..., y0 : y0 + height + 1, x0 : x0 + width + 1]
        # sub-pixel shift by a bilinear blend of the integer neighbours
        fy, fx = dy - y0, dx - x0
        top = crop[..., :-1, :] * (1 - fy) + crop[..., 1:, :] * fy
        frame = top[..., :-1] * (1 - fx) + top[..., 1:] * fx
        frames.append(frame[0, :, :height, :width])
    return torch.stack(frames)


def autocast(precision: str, device: str = "cpu"):
    """The autocast context of a precision name (fp32: disabled)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None)


# --------------------------------------------------------------------------------------------------
# The machine's conv rate
# --------------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------------
# Streaming inference
# --------------------------------------------------------------------------------------------------
def count_macs(fn: Callable[[], object]) -> float:
    """Multiply-accumulates of one call of ``fn`` (FLOPs / 2 as counted by FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return counter.get_total_flops() / 2.0


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@contextlib.contextmanager
def num_threads(n: int | None):
    """Run with ``n`` torch threads (None: leave as is)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ConvProbe:
    """A large 3x3 conv (the network's width, at its frame size) in both memory layouts, timed on demand.

    Called right after each timed push, it gives the machine's conv rate at that moment, so each push is
    compared with a conv measured under the same load (the machine may be shared).
    """

    def __init__(self, *, channels: int, size: tuple[int, int], precision: str, clock: str = "wall") -> None:
        torch.manual_seed(0)
        self.precision = precision
        self.clock = CLOCKS[clock]
        self.macs = channels * channels * 9 * size[0] * size[1]
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1).eval()
        x = torch.rand(1, channels, *size)
        self.cases = {
            "contiguous": (conv, x),
            "channels_last": (
                copy.deepcopy(conv).to(memory_format=torch.channels_last),
                x.contiguous(memory_format=torch.channels_last),
            ),
        }
        self.rate(repeats=2)  # create the oneDNN primitives

    def rate(self, repeats: int = 3) -> tuple[float, str]:
        """``(MAC/s, layout)``: the best layout, each timed by its fastest of ``repeats`` calls."""
        best = (0.0, "")
        for layout, (conv, x) in self.cases.items():
            times = []
            for _ in range(repeats):
                t0 = self.clock()
                with torch.inference_mode(), autocast(self.precision):
                    conv(x)
                times.append(self.clock() - t0)
            best = max(best, (self.macs / min(times), layout))
        return best


def stream_timing(
    net,
    frames: torch.Tensor,
    *,
    precision: str,
    warmup: int,
    probe: ConvProbe | None = None,
    clock: str = "wall",
) -> dict:
    """Push ``frames (T, 3, h, w)`` through a fresh StreamingRestorer; time each push after ``warmup``.

    The last frame's push is not timed: its multiply-accumulates are counted instead (a steady-state
    step). With a ``probe``, the conv rate is measured right after each timed push. ``clock`` is
    ``"wall"`` or ``"cpu"`` (this process's CPU time: with one thread, the time it actually ran, which
    other processes on a shared machine do not inflate).

    Returns ``{"ms": median ms per output frame, "outputs": (T, 3, H, W) float32 restored frames,
    "macs": MACs of one steady-state push, "conv_rates": [MAC/s after each timed push], "layout"}``.
    """
    from s2svr_lightning.restore.stream import StreamingRestorer

    if len(frames) < warmup + 2:
        raise ValueError(f"expected at least warmup + 2 = {warmup + 2} frames, got {len(frames)}")
    restorer = StreamingRestorer(net, device="cpu", precision=precision)
    outputs, times, rates, layouts = [], [], [], []
    now = CLOCKS[clock]
    for t, frame in enumerate(frames[:-1]):
        t0 = now()
        ready = restorer.push(frame)
        dt = now() - t0
        if t >= warmup:
            times.append(dt / max(len(ready), 1))
            if probe is not None:
                rate, layout = probe.rate()
                rates.append(rate)
                layouts.append(layout)
        outputs.extend(o.float() for o in ready)
    ready = []
    macs = count_macs(lambda: ready.extend(restorer.push(frames[-1])))
    outputs.extend(o.float() for o in ready)
    outputs.extend(o.float() for o in restorer.flush())
    out = torch.stack([o.reshape(o.shape[-3:]) for o in outputs])
    return {
        "ms": 1000.0 * statistics.median(times),
        "times": times,
        "outputs": out,
        "macs": macs,
        "conv_rates": rates,
        "layout": max(set(layouts), key=layouts.count) if layouts else None,
    }


FLOW_RULES = ("native", "hq", "256x256")  # the flow-input rules compared (models/flow_input.py)


def flow_share(
    net,
    lq: torch.Tensor,
    frame_ms: float,
    *,
    precision: str,
    rules: Sequence[str] = FLOW_RULES,
    repeats: int = 1,
) -> dict[str, float]:
    """The flow net's CPU ms per frame under each flow-input rule and its share of the frame's time.

    A streaming step computes one pair's flows (``S2SVR.pair_flows``, both directions). ``frame_ms`` is
    the whole step's one-thread CPU time under the net's own rule; the rest of the step (the restorer)
    does not depend on the rule, so under rule R the frame costs ``frame_ms - flow(own) + flow(R)`` and
    the share is ``flow(R)`` over that. One thread, CPU time; the fastest of ``repeats`` after a warm-up.
    """
    from s2svr_lightning.models import FlowInput

    own = net.flow_input
    x_prev, x_t = lq[0:1].float(), lq[1:2].float()
    times = {}
    try:
        for rule in (str(own), *rules):
            net.flow_input = own if rule == str(own) else FlowInput.create(rule, scale=net.scale)
            best = float("inf")
            for k in range(repeats + 1):
                t0 = time.process_time()
                with torch.inference_mode(), autocast(precision):
                    net.pair_flows(x_t, x_prev)
                if k:  # the first call creates the oneDNN primitives of this size
                    best = min(best, time.process_time() - t0)
            times[rule] = 1000.0 * best
    finally:
        net.flow_input = own
    rest = max(frame_ms - times[str(own)], 0.0)
    out = {}
    for rule in rules:
        out[f"flow_ms_{rule}"] = times[rule]
        out[f"flow_share_{rule}"] = times[rule] / (rest + times[rule])
    return out


def profile_push(net, frames: torch.Tensor, *, precision: str, top: int = 12) -> list[dict]:
    """Where one steady-state push spends its time: self CPU time per operator, largest first.

    Pushes all but the last frame untimed, profiles the last push. Rows: ``{"op", "ms", "share", "calls"}``.
    """
    from torch.profiler import ProfilerActivity, profile

    from s2svr_lightning.restore.stream import StreamingRestorer

    restorer = StreamingRestorer(net, device="cpu", precision=precision)
    for frame in frames[:-1]:
        restorer.push(frame)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        restorer.push(frames[-1])
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = [
        {
            "op": e.key,
            "ms": e.self_cpu_time_total / 1000.0,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    ]
    return rows


SPECS = {
    # builder: (LQ size, degradation task, note)
    "s2svr_vsr": ((180, 320), "vsr"),
    "s2svr_deblur": ((360, 640), "deblur"),
    "s2svr_cve": ((360, 640), "cve"),
}


def _build(name: str, overrides: dict | None = None):
    from s2svr_lightning.models import build_model

    torch.manual_seed(0)
    return build_model(name, **(overrides or {})).eval()


def make_inputs(task: str, lq_size: tuple[int, int], num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lq, hq)`` clips of a panned photograph degraded with the task's degradation."""
    from s2svr_lightning.data.degradations import degrade

    if task == "vsr":
        hq = photo_clip(num_frames, lq_size[0] * 4, lq_size[1] * 4)
        return degrade("vsr", hq, scale=4).clamp(0, 1), hq
    if task == "deblur":
        k = 5
        sub = photo_clip(num_frames * k, *lq_size, step=(0.4, 0.6))
        lq, hq = degrade("deblur", sub, blur_frames=k, return_target=True)
        return lq, hq
    hq = photo_clip(num_frames, *lq_size)
    return degrade("cve", hq, qp=37), hq


def bench_speed(
    *,
    builders: Sequence[str] = tuple(SPECS),
    frames: int = 3,
    warmup: int = 2,
    sizes: dict | None = None,
    overrides: dict | None = None,
    precisions: Sequence[str] = PRECISIONS,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Measure every builder in every precision; one row per (builder, precision).

    Two passes per row: the efficiency pass on one thread, timed in CPU time (the fraction of the conv
    rate and the bf16 speed-up, robust on a shared machine); the throughput pass on ``threads`` threads
    (default: torch's), timed in wall time (ms per frame, frames/s, and the outputs scored for PSNR).
    """
    from s2svr_lightning.metrics import psnr

    torch.manual_seed(0)
    rows = []
    for name in builders:
        size, task = SPECS[name]
        size = (sizes or {}).get(name, size)
        net = _build(name, overrides)
        lq, hq = make_inputs(task, size, warmup + frames + 1)
        base: dict | None = None
        for precision in precisions:
            if precision == "bf16" and not bf16_supported():
                log(f"{name}: skipping bf16, this CPU has no bf16 units")
                continue
            log(f"{name} {precision} at {size[0]}x{size[1]} LQ: one thread, CPU time ...")
            with num_threads(1):
                probe = ConvProbe(channels=net.channels, size=size, precision=precision, clock="cpu")
                eff = stream_timing(net, lq, precision=precision, warmup=warmup, probe=probe, clock="cpu")
            # each timed push against the conv rate measured right after it, then the median
            fractions = [eff["macs"] / dt / rate for dt, rate in zip(eff["times"], eff["conv_rates"])]
            log(f"{name} {precision}: {threads or torch.get_num_threads()} threads, wall time ...")
            with num_threads(threads):
                wall = stream_timing(net, lq, precision=precision, warmup=warmup, clock="wall")
            out = wall["outputs"]
            with num_threads(1):
                shares = flow_share(net, lq, eff["ms"], precision=precision)
            row = {
                **shares,
                "builder": name,
                "precision": precision,
                "lq_size": f"{size[0]}x{size[1]}",
                "threads": threads or torch.get_num_threads(),
                "ms_per_frame": wall["ms"],
                "fps": 1000.0 / wall["ms"],
                "cpu_ms_per_frame_1thread": eff["ms"],
                "gmacs_per_frame": eff["macs"] / 1e9,
                "conv_gmacs_per_s_1thread": statistics.median(eff["conv_rates"]) / 1e9,
                "conv_layout": eff["layout"],
                "fraction_of_peak": statistics.median(fractions),
                "pct_of_peak": 100.0 * statistics.median(fractions),
                "timed_frames": len(wall["times"]),
                "psnr_vs_hq": float(psnr(out, hq[: out.shape[0]]).mean()),
            }
            if precision == "fp32":
                base = {"row": row, "out": out}
            elif base is not None:
                row["speedup_vs_fp32"] = (
                    base["row"]["cpu_ms_per_frame_1thread"] / row["cpu_ms_per_frame_1thread"]
                )
                row["wall_speedup_vs_fp32"] = base["row"]["ms_per_frame"] / row["ms_per_frame"]
                row["psnr_vs_fp32_output"] = float(psnr(out, base["out"]).mean())
                row["psnr_delta_vs_fp32"] = row["psnr_vs_hq"] - base["row"]["psnr_vs_hq"]
            rows.append(row)
    return rows


COLUMNS = [
    ("builder", "builder"),
    ("precision", "precision"),
    ("lq_size", "LQ size"),
    ("ms_per_frame", "ms / frame"),
    ("fps", "frames/s"),
    ("gmacs_per_frame", "GMAC / frame"),
    ("cpu_ms_per_frame_1thread", "1-thread CPU ms / frame"),
    ("conv_gmacs_per_s_1thread", "1-thread conv GMAC/s"),
    ("pct_of_peak", "% of conv rate"),
    ("speedup_vs_fp32", "x fp32 (1 thread)"),
    ("wall_speedup_vs_fp32", "x fp32 (wall)"),
    ("psnr_delta_vs_fp32", "dPSNR vs fp32 (dB)"),
    *((f"flow_share_{rule}", f"flow share ({rule})") for rule in FLOW_RULES),
]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny networks and frames: a smoke run")
    p.add_argument("--frames", type=int, default=3, help="timed frames per measurement")
    p.add_argument("--threads", type=int, default=None, help="threads of the wall-time pass")
    p.add_argument("--full-size", action="store_true", help="deblurring / compressed video at 720x1280")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    p.add_argument("--profile", default=None, metavar="BUILDER", help="print one push's time per operator")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="precision of --profile")
    args = p.parse_args(argv)
    if args.profile:
        size, task = SPECS[args.profile]
        overrides = quick_settings()["overrides"] if args.quick else {}
        if args.quick:
            size = (32, 48)
        net = _build(args.profile, overrides)
        lq, _ = make_inputs(task, size, 4)
        rows = profile_push(net, lq, precision=args.precision)
        print(
            markdown_table(
                rows, [("op", "operator"), ("ms", "self ms"), ("share", "share"), ("calls", "calls")]
            )
        )
        return 0
    kw = quick_settings() if args.quick else {"frames": args.frames}
    kw["threads"] = args.threads
    if args.full_size and not args.quick:
        kw["sizes"] = {"s2svr_deblur": (720, 1280), "s2svr_cve": (720, 1280)}
    rows = bench_speed(log=lambda m: print(m, file=sys.stderr), **kw)
    print(markdown_table(rows, COLUMNS))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def quick_settings() -> dict:
    """Smoke-run sizes: small widths and frames, a couple of timed frames."""
    return {
        "frames": 2,
        "warmup": 2,
        "sizes": {"s2svr_vsr": (32, 48), "s2svr_deblur": (32, 48), "s2svr_cve": (32, 48)},
        "overrides": {"channels": 16, "num_blocks": 1},
    }


if __name__ == "__main__":
    sys.exit(main())
