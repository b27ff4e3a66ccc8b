"""Getting the benchmarks into the layouts the loaders read, and checking them.

One preparer and one checker per dataset (``reds``, ``vimeo``, ``gopro``, ``mfqe``). Preparers are
idempotent (a second run finds nothing to do and says so), resumable (finished files are kept, an
interrupted one is redone) and never leave a partial file (each is written under a temporary name in its
folder and renamed when complete). Checkers walk a whole tree and collect every missing, unreadable or
mis-sized file in one pass, with counts per split. The command line is ``s2svr_lightning.prepare``.
"""

from __future__ import annotations

from .common import CheckReport
from .gopro import check_gopro, prepare_gopro
from .mfqe import check_mfqe, prepare_mfqe
from .reds import check_reds, prepare_reds
from .vimeo import check_vimeo, prepare_vimeo

__all__ = ["PREPARERS", "CHECKERS", "CheckReport"]

PREPARERS = {"reds": prepare_reds, "vimeo": prepare_vimeo, "gopro": prepare_gopro, "mfqe": prepare_mfqe}
CHECKERS = {"reds": check_reds, "vimeo": check_vimeo, "gopro": check_gopro, "mfqe": check_mfqe}
