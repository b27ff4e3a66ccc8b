"""Step 2 of Algorithm 1: the student flow network on LQ, distilled from the frozen teacher (Eq. 15-17)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from s2svr_lightning.checkpoint import read_checkpoint, sub_state_dict
from s2svr_lightning.lit.flow import FlowModuleBase, build_flownet, consecutive_pairs
from s2svr_lightning.lit.guards import raise_if_nonfinite
from s2svr_lightning.losses import distillation_loss

__all__ = ["StudentFlowModule"]


class StudentFlowModule(FlowModuleBase):
    """Student ``F_o`` (Eq. 10): PWC-Lite on LQ pairs with ``w_ph L_ph + w_sm L_sm + w_dis L_dis`` (Eq. 17).

    The teacher (the teacher stage's PWC-Lite, frozen, in eval mode, no gradient) sees the HQ pair of
    each LQ pair; Eq. 16 compares its flow with the student's flow resized to the HQ size, values
    scaled (x4 for super-resolution), in both directions. By default the student starts from the
    teacher's weights.

    The teacher's weights live in the student's state dict (``teacher.*``), so a student checkpoint
    is self-contained: ``StudentFlowModule.load_from_checkpoint(path)`` (and resuming a fit) no longer
    needs the teacher's file. The file is read at construction when it exists; otherwise the weights
    must come from a student checkpoint, and ``fit`` stops with a clear error if they did not.

    Args:
        teacher_checkpoint: path of the teacher stage's checkpoint (``s2svr_kind == "teacher"``, same
            flow network). Required when ``w_dis > 0`` or ``init_from_teacher``.
        w_dis: weight of Eq. 16 (the paper: 0.1); 0 trains the student without distillation.
        init_from_teacher: start the student from the teacher's weights.
        **kwargs: the arguments of :class:`FlowModuleBase` (flow network, Eq. 14 weights, optimiser).
    """

    frames_key = "lq"
    kind = "student"

    def __init__(
        self,
        *,
        teacher_checkpoint: str | None = None,
        w_dis: float = 0.1,
        init_from_teacher: bool = True,
        **kwargs: Any,
    ) -> None:
        if w_dis < 0:
            raise ValueError(f"expected w_dis >= 0, got {w_dis}")
        if teacher_checkpoint is None and (w_dis > 0 or init_from_teacher):
            raise ValueError(
                f"expected teacher_checkpoint (the teacher stage's checkpoint) for w_dis={w_dis} and "
                f"init_from_teacher={init_from_teacher}, got None; pass w_dis=0, init_from_teacher=False "
                "to train a student without a teacher"
            )
        if teacher_checkpoint is not None:
            teacher_checkpoint = str(teacher_checkpoint)  # saved in the hparams: a plain str, not a Path
        super().__init__(**kwargs)
        self.teacher: torch.nn.Module | None = None
        self._teacher_loaded = False
        if teacher_checkpoint is not None:
            self.teacher = build_flownet(self.hparams.flownet, self.hparams.flownet_overrides)
            self.teacher.requires_grad_(False)
            self.teacher.eval()
            if Path(teacher_checkpoint).is_file():
                self.load_teacher(teacher_checkpoint)

    # ---------------------------------------------------------------- teacher
    def load_teacher(self, path: str | Path) -> None:
        """Load the teacher's flow network from a teacher checkpoint (and the student's, if configured)."""
        checkpoint = read_checkpoint(path, kind="teacher", what="teacher checkpoint")
        if self.teacher is None:
            raise ValueError("expected a student built with teacher_checkpoint, got one without a teacher")
        hp = checkpoint.get("hyper_parameters", {})
        theirs = (hp.get("flownet", "pwclite"), dict(hp.get("flownet_overrides") or {}))
        ours = (self.hparams.flownet, dict(self.hparams.flownet_overrides or {}))
        if theirs != ours:
            raise ValueError(
                f"expected a teacher with the student's flow network {ours}, got {theirs} in {path}"
            )
        state = sub_state_dict(checkpoint, "flownet.", path=path)
        self.teacher.load_state_dict(state)
        if self.hparams.init_from_teacher:
            self.flownet.load_state_dict(state)
        self._teacher_loaded = True

    def train(self, mode: bool = True) -> StudentFlowModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: always in eval mode
        return self

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a student checkpoint carries the teacher's weights: the teacher file is not needed any more
        if sub_state_dict(checkpoint.get("state_dict", {}), "teacher."):
            self._teacher_loaded = True

    def on_fit_start(self) -> None:
        needs_teacher = self.hparams.w_dis > 0 or self.hparams.init_from_teacher
        if needs_teacher and not self._teacher_loaded:
            raise FileNotFoundError(
                f"teacher checkpoint not found: {self.hparams.teacher_checkpoint} (the student needs the "
                "teacher stage's checkpoint, or a student checkpoint to resume from)"
            )

    # ---------------------------------------------------------------- Eq. 16
    def extra_losses(
        self, batch: Mapping[str, torch.Tensor], flow12: torch.Tensor, flow21: torch.Tensor
    ) -> dict[str, tuple[float, torch.Tensor]]:
        if self.hparams.w_dis == 0 or self.teacher is None:
            return {}
        hq1, hq2 = consecutive_pairs(self._frames(batch, "hq"))
        with torch.no_grad():
            teacher12, teacher21 = self.teacher(hq1, hq2, with_backward=True)
        # the pseudo-labels are checked like the student's own flows
        raise_if_nonfinite((teacher12, teacher21), what="teacher flow", step=self.global_step, batch=batch)
        distill = 0.5 * (distillation_loss(flow12, teacher12) + distillation_loss(flow21, teacher21))
        return {"distillation": (float(self.hparams.w_dis), distill)}
