"""``python -m s2svr_lightning.restore``: the ``s2svr-restore`` command."""

import sys

from s2svr_lightning.restore.cli import main

if __name__ == "__main__":  # not in a process that multiprocessing spawns
    sys.exit(main())
