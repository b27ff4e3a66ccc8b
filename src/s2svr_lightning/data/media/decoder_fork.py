"""Video decoders across ``fork``: what a forked DataLoader worker must not touch of its parent's decoders.

Freeing, in a forked child, a decoder or a scaler copied from the parent (whose threads stayed there) hangs
PyAV in ``pthread_cond_destroy`` and crashes decord. Every ``VideoReader`` adds itself to
:data:`open_readers`; at a fork, the child takes their open decoders out of their reach (they open their
own), and the parent's garbage is frozen so that the child never frees it. The fork hook is registered
when this module is first imported (by ``video_io``).
"""

from __future__ import annotations

import gc
import os
import sys
import weakref
from typing import Any

__all__ = ["DECODER_HANDLES", "open_readers"]

# the attributes of a VideoReader that hold decoders or a scaler
DECODER_HANDLES = ("_container", "_decord", "_iter", "_seek_iter", "_seq_container", "_scaler")
open_readers: weakref.WeakSet[Any] = weakref.WeakSet()  # every VideoReader (it adds itself)
_INHERITED: list[tuple] = []


def _drop_inherited_decoders() -> None:
    """In a forked child (a DataLoader worker): take every reader's open decoders and scaler out of its
    reach, so that it makes its own; the copies stay referenced here until the process exits (freeing
    them there is what hangs). PyAV's own per-thread scaler (``VideoFrame.reformat`` / ``to_ndarray``
    keep one since PyAV 18.1.1) is set aside the same way, for frames converted by code other than ours."""
    for reader in list(open_readers):
        _INHERITED.append(tuple(getattr(reader, name, None) for name in DECODER_HANDLES))
        for name in DECODER_HANDLES:
            setattr(reader, name, None)
    frame_module = sys.modules.get("av.video.frame")
    cache = getattr(frame_module, "_thread_local", None)
    inherited = getattr(cache, "reformatter", None)
    if inherited is not None:
        _INHERITED.append((inherited,))
        cache.reformatter = None


_FROZE = [False]


def _freeze_before_fork() -> None:
    # a freeze of the caller's own (gc.freeze before forking workers) is left as it is
    _FROZE[0] = gc.get_freeze_count() == 0
    if _FROZE[0]:
        gc.freeze()


def _unfreeze_in_parent() -> None:
    if _FROZE[0]:
        gc.unfreeze()


# Freeing, in a forked child, a decoder or a scaler copied from the parent (whose threads stayed there)
# hangs PyAV in pthread_cond_destroy and crashes decord. Live readers drop theirs as above; the parent's
# garbage (closed containers not yet collected) is frozen at the fork, so the child's garbage collector
# never frees it. Our readers also scale with one thread (no slice threads to inherit), and the DataModule
# starts the workers of datasets that decode video with forkserver, where nothing is inherited at all.
os.register_at_fork(
    before=_freeze_before_fork, after_in_parent=_unfreeze_in_parent, after_in_child=_drop_inherited_decoders
)
