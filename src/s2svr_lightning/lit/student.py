"""Step 2 of Algorithm 1: the student flow network on LQ, distilled from the frozen teacher (Eq. 15-17)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from s2svr_lightning.checkpoint import read_checkpoint, sub_state_dict
from s2svr_lightning.console import ExpectedEvalModules
from s2svr_lightning.lit.flow import (
    FlowModuleBase,
    check_flow_compatible,
    consecutive_pairs,
)
from s2svr_lightning.lit.guards import raise_if_nonfinite
from s2svr_lightning.losses import distillation_loss, forward_backward_occlusion
from s2svr_lightning.models.flow_input import FlowInput
from s2svr_lightning.models.flow_spec import CHECKPOINT_KEY, FlowSpec

__all__ = ["StudentFlowModule"]


class StudentFlowModule(FlowModuleBase):
    """Student ``F_o`` (Eq. 10): PWC-Lite on LQ pairs with ``w_ph L_ph + w_sm L_sm + w_dis L_dis`` (Eq. 17).

    The student reads each LQ pair under the flow-input rule (:class:`~s2svr_lightning.models.flow_input.
    FlowInput`, default ``"hq"``: upsampled to the HQ size), the very rule the restorer and the streaming
    restorer apply; Eq. 14 is computed on the pair it reads. The teacher (the teacher stage's PWC-Lite,
    frozen, in eval mode, no gradient) sees the HQ pair; Eq. 16 compares its flow with the student's
    flow on the HQ grid (resized from the flow grid, values scaled; no resize at all under ``"hq"``), in
    both directions. By default the student starts from the teacher's weights.

    The teacher's weights live in the student's state dict (``teacher.*``), so a student checkpoint
    is self-contained: ``StudentFlowModule.load_from_checkpoint(path)`` (and resuming a fit) no longer
    needs the teacher's file. The file is read at construction when it exists; otherwise the weights
    must come from a student checkpoint, and ``fit`` stops with a clear error if they did not.

    Args:
        teacher_checkpoint: path of the teacher stage's checkpoint (``s2svr_kind == "teacher"``, same
            flow network). Required when ``w_dis > 0`` or ``init_from_teacher``, not read otherwise.
        w_dis: weight of Eq. 16 (the paper: 0.1); 0 trains the student without distillation.
        init_from_teacher: start the student from the teacher's weights (False: from scratch).
        flow_input: the flow-input rule: ``"hq"`` (the LQ pair upsampled x ``scale``), ``"native"``, or
            a fixed ``[H, W]`` (the authors: 256x256). Stored in the checkpoint; the restorer refuses a
            student trained under another rule unless told otherwise.
        scale: HQ size / LQ size of the task (4 for super-resolution); None: read from the first batch.
        distill_mask: weight Eq. 16 by the teacher's own forward-backward check (0 where the teacher's
            two flows disagree, i.e. where its pseudo-label is occluded or unreliable).
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
        flow_input: Any = "hq",
        scale: int | None = None,
        distill_mask: bool = False,
        **kwargs: Any,
    ) -> None:
        if w_dis < 0:
            raise ValueError(f"expected w_dis >= 0, got {w_dis}")
        if scale is not None and int(scale) < 1:
            raise ValueError(f"expected scale >= 1 or None, got {scale}")
        FlowInput.create(flow_input, scale=scale or 1)  # a bad spec fails here, not at the first batch
        if teacher_checkpoint is None and (w_dis > 0 or init_from_teacher):
            raise ValueError(
                f"expected teacher_checkpoint (the teacher stage's checkpoint) for w_dis={w_dis} and "
                f"init_from_teacher={init_from_teacher}, got None; pass w_dis=0, init_from_teacher=False "
                "to train a student without a teacher"
            )
        if w_dis == 0 and not init_from_teacher:
            teacher_checkpoint = None  # no teacher to read (the config hands the teacher stage's on anyway)
        if teacher_checkpoint is not None:
            teacher_checkpoint = str(teacher_checkpoint)  # saved in the hparams: a plain str, not a Path
        super().__init__(**kwargs)
        self.teacher: torch.nn.Module | None = None
        self._teacher_loaded = False
        self._frozen_teacher_in_eval = ExpectedEvalModules()
        if teacher_checkpoint is not None:
            self.teacher = FlowSpec.create(self.hparams.flownet, self.hparams.flownet_overrides).build()
            self.teacher.requires_grad_(False)
            self.teacher.eval()
            if Path(teacher_checkpoint).is_file():
                self.load_teacher(teacher_checkpoint)

    # ---------------------------------------------------------------- what the flow net reads
    @property
    def flow_input(self) -> FlowInput:
        if self.hparams.flow_input == "hq" and self.hparams.scale is None:
            raise ValueError(
                "expected the student's scale (HQ size / LQ size) for flow_input 'hq', got None and no "
                "batch to read it from; pass scale=4 for super-resolution, 1 otherwise"
            )
        return FlowInput.create(self.hparams.flow_input, scale=self.hparams.scale or 1)

    def _check_scale(self, batch: Mapping[str, torch.Tensor]) -> None:
        """The batch's HQ / LQ ratio is the student's scale (read from the first batch when not given)."""
        lq, hq = self._frames(batch, "lq"), self._frames(batch, "hq")
        ratio = hq.shape[-1] // lq.shape[-1]
        if hq.shape[-1] != ratio * lq.shape[-1] or hq.shape[-2] != ratio * lq.shape[-2]:
            raise ValueError(
                f"expected HQ frames an integer multiple of the LQ frames, got {tuple(hq.shape)} and "
                f"{tuple(lq.shape)}"
            )
        if self.hparams.scale is None:
            self.hparams.scale = int(ratio)
        elif ratio != self.hparams.scale:
            raise ValueError(
                f"expected batches with HQ / LQ = scale {self.hparams.scale}, got {ratio} "
                f"({tuple(hq.shape)} and {tuple(lq.shape)})"
            )

    def flow_pairs(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_scale(batch)
        return super().flow_pairs(batch)

    # ---------------------------------------------------------------- teacher
    def load_teacher(self, path: str | Path) -> None:
        """Load the teacher's flow network from a teacher checkpoint (and the student's, if configured)."""
        checkpoint = read_checkpoint(path, kind="teacher", what="teacher checkpoint")
        if self.teacher is None:
            raise ValueError("expected a student built with teacher_checkpoint, got one without a teacher")
        hp = self.hparams
        check_flow_compatible(
            FlowSpec.from_checkpoint(checkpoint),
            FlowSpec.create(hp.flownet, hp.flownet_overrides),
            source=str(path),
            check_rule=False,  # the teacher reads HQ frames as they are; the student's rule is its own
            fix="; train the student with the teacher's flownet_overrides",
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
        if CHECKPOINT_KEY not in checkpoint:  # made before the flow-input rule travelled with the weights
            self.hparams.flow_input = FlowSpec.from_checkpoint(checkpoint).flow_input.to_dict()

    def on_fit_start(self) -> None:
        needs_teacher = self.hparams.w_dis > 0 or self.hparams.init_from_teacher
        if needs_teacher and not self._teacher_loaded:
            raise FileNotFoundError(
                f"teacher checkpoint not found: {self.hparams.teacher_checkpoint} (the student needs the "
                "teacher stage's checkpoint, or a student checkpoint to resume from)"
            )
        # the frozen teacher is in eval mode on purpose: no "modules in eval mode" warning for it
        if self.teacher is not None:
            self._frozen_teacher_in_eval.start(sum(1 for _ in self.teacher.modules()))

    def on_train_start(self) -> None:
        self._frozen_teacher_in_eval.stop()
        super().on_train_start()

    def teardown(self, stage: str) -> None:
        self._frozen_teacher_in_eval.stop()
        super().teardown(stage)

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
        valid12 = valid21 = None
        if self.hparams.distill_mask:
            hp = self.hparams
            occ12 = forward_backward_occlusion(
                teacher12, teacher21, alpha1=hp.occlusion_alpha1, alpha2=hp.occlusion_alpha2
            )
            occ21 = forward_backward_occlusion(
                teacher21, teacher12, alpha1=hp.occlusion_alpha1, alpha2=hp.occlusion_alpha2
            )
            valid12, valid21 = 1.0 - occ12, 1.0 - occ21
        # Eq. 16 on the HQ grid: the student's flow brought there by the rule's own resize
        size = tuple(hq1.shape[-2:])
        rule = self.flow_input
        distill = 0.5 * (
            distillation_loss(rule.resize(flow12, size), teacher12, valid=valid12)
            + distillation_loss(rule.resize(flow21, size), teacher21, valid=valid21)
        )
        return {"distillation": (float(self.hparams.w_dis), distill)}
