"""``python -m s2svr_lightning.prepare DATASET ROOT`` (or ``s2svr-prepare``): get a benchmark into the
layout its loader reads.

- ``reds``: move the official validation clips (``val_sharp``, ``val_sharp_bicubic/X4``) into the training
  folders as clips 240-269 (BasicSR's regrouping: 270 clips; REDS4 = 000, 011, 015, 020 is held out by the
  loader).
- ``vimeo``: validate ``sep_trainlist.txt`` / ``sep_testlist.txt``; ``--make-lq`` writes the MATLAB-bicubic
  x4 frames (``<root>/BIx4``, or ``--lq-root``).
- ``gopro``: nothing to convert; checks the tree.
- ``mfqe``: HEVC QP37 low-delay-P encodes of ``<split>/raw/*.yuv`` into ``<split>/HM16.5_LDP/QP37/`` by
  x265 (HM16.5 is not available; a note in that folder says so).

Each is idempotent, resumable, shows a progress bar and writes nothing partial. ``--check`` instead walks
the tree and lists every missing, unreadable or mis-sized file with counts per split, and exits non-zero
if there is any.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from s2svr_lightning.commands import command_parser

__all__ = ["main"]

DATASETS = ("reds", "vimeo", "gopro", "mfqe")


def _parser() -> argparse.ArgumentParser:
    p = command_parser(
        prog="python -m s2svr_lightning.prepare",
        description="Prepare a benchmark dataset for training (or --check it).",
    )
    p.add_argument("dataset", choices=DATASETS, help="which benchmark")
    p.add_argument("root", help="the dataset folder (the one dataset.root points at)")
    p.add_argument("--check", action="store_true", help="only check the tree: report every problem")
    p.add_argument("--full", action="store_true", help="with --check: decode every frame (slower)")
    p.add_argument("--make-lq", action="store_true", help="vimeo: write the BIx4 (bicubic x4) frames")
    p.add_argument("--lq-root", default=None, help="vimeo: folder of the BIx4 frames (default ROOT/BIx4)")
    p.add_argument("--qp", type=int, default=37, help="mfqe: HEVC QP (default 37)")
    p.add_argument("--preset", default="medium", help="mfqe: x265 speed preset (default medium)")
    p.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="threads for checks and vimeo LQ"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from s2svr_lightning.data.errors import DatasetError
    from s2svr_lightning.data.prepare import CHECKERS, PREPARERS, CheckReport

    root = Path(os.path.expanduser(args.root))
    options = {
        "full": args.full,
        "make_lq": args.make_lq,
        "lq_root": args.lq_root,
        "qp": args.qp,
        "preset": args.preset,
        "workers": max(1, args.workers),
    }
    try:
        if not args.check:
            PREPARERS[args.dataset](root, **options)
            if args.dataset != "gopro":  # gopro's preparation is its check
                print(f"check it with: python -m s2svr_lightning.prepare --check {args.dataset} {root}")
                return 0
        report = CheckReport()
        CHECKERS[args.dataset](root, report, **options)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary(args.dataset, root))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
