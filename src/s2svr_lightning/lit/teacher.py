"""Step 1 of Algorithm 1: the teacher flow network, trained unsupervised on HQ frame pairs (Eq. 11-14)."""

from __future__ import annotations

from s2svr_lightning.lit.flow import FlowModuleBase

__all__ = ["TeacherFlowModule"]


class TeacherFlowModule(FlowModuleBase):
    """Teacher ``F_t`` (Eq. 12): PWC-Lite trained on HQ pairs with Eq. 14, both directions.

    ``TeacherFlowModule.load_from_checkpoint(path)`` needs no other argument; ``module(im1, im2)`` with
    frames ``(B, 3, H, W)`` in [0, 1] returns the flow ``(B, 2, H, W)`` in pixels. See
    :class:`FlowModuleBase` for the arguments.
    """

    frames_key = "hq"
    kind = "teacher"
