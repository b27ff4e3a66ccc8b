"""``python -m s2svr_lightning.restore``: the ``s2svr-restore`` command."""

import sys

from s2svr_lightning.restore.cli import main

sys.exit(main())
