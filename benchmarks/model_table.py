"""Parameters and multiply-accumulates per output frame of every network builder, as a markdown table.

    python benchmarks/model_table.py            # the README table
    python benchmarks/model_table.py --json out.json

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2) on the ``meta``
device, so nothing is computed and the full sizes (180x320 LQ for VSR, 720x1280 for deblurring) cost
seconds. Per output frame is the steady-state cost: MACs(T = n + 1) - MACs(T = n), i.e. one more frame
through encoder and decoder plus one more consecutive pair through the flow net (both directions).
FlopCounterMode counts convolutions and matrix products only: the correlation layer (81 channel means
of products), ``grid_sample`` warps and element-wise gates are not included (they are a few per cent).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from s2svr_lightning.models import build_model

# (builder, overrides, LQ size, paper parameters)
ROWS = [
    ("s2svr_vsr", {}, (180, 320), 13.4e6),
    ("s2svr_vsr", {"bidirectional_first_layer": True}, (180, 320), None),
    ("s2svr_deblur", {}, (720, 1280), 8.44e6),
    ("s2svr_deblur", {"bidirectional_first_layer": True}, (720, 1280), None),
    ("s2svr_cve", {}, (480, 832), None),
]


def _parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def count_macs(net: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """MACs of ``net(x)`` in total and inside ``net.flownet``."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    counts = counter.get_flop_counts()
    flow = sum(counts.get(f"{type(net).__name__}.flownet", {}).values())
    return counter.get_total_flops() // 2, flow // 2


def measure(name: str, overrides: dict, size: tuple[int, int], *, frames: int, device: str) -> dict:
    net = build_model(name, **overrides)
    params = sum(p.numel() for p in net.parameters())
    flow_params = sum(p.numel() for p in net.flownet.parameters())
    net = net.to(device)
    h, w = size
    totals = []
    for t_len in (frames, frames + 1):
        x = torch.rand(1, t_len, 3, h, w, device=device)
        totals.append(count_macs(net, x))
    macs = totals[1][0] - totals[0][0]
    flow_macs = totals[1][1] - totals[0][1]
    return {
        "model": name + ("" if not overrides else " " + ",".join(f"{k}={v}" for k, v in overrides.items())),
        "lq_size": f"{h}x{w}",
        "out_size": f"{h * net.scale}x{w * net.scale}",
        "params": params,
        "flow_params": flow_params,
        "macs_per_frame": macs,
        "flow_macs_per_frame": flow_macs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vsr-size", type=_parse_size, default=(180, 320), help="LQ HxW for VSR rows")
    parser.add_argument("--deblur-size", type=_parse_size, default=(720, 1280), help="HxW for deblur rows")
    parser.add_argument("--frames", type=int, default=2, help="n in MACs(T=n+1) - MACs(T=n)")
    parser.add_argument("--device", default="meta", help="meta (count only) or a real device")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    rows = []
    for name, overrides, size, paper in ROWS:
        if name == "s2svr_vsr":
            size = args.vsr_size
        elif name == "s2svr_deblur":
            size = args.deblur_size
        row = measure(name, overrides, size, frames=args.frames, device=args.device)
        row["paper_params"] = paper
        rows.append(row)

    print("| model | LQ input | output | params | paper | MACs / frame | flow net share |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        paper = "-" if row["paper_params"] is None else f"{row['paper_params'] / 1e6:.2f}M"
        print(
            f"| {row['model']} | {row['lq_size']} | {row['out_size']} | {row['params'] / 1e6:.2f}M "
            f"(flow {row['flow_params'] / 1e6:.2f}M) | {paper} | {row['macs_per_frame'] / 1e9:.1f} G "
            f"| {row['flow_macs_per_frame'] / 1e9:.1f} G |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
