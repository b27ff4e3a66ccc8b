"""What the teacher and the student flow stages share (Algorithm 1, steps 1 and 2).

:class:`FlowModuleBase` holds the flow network, Eq. 14 on every consecutive pair of a training sequence
in both directions, the occlusion warm-up, the non-finite guards, and validation by end-point error
against ground-truth flow.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch

from s2svr_lightning.flow_viz import flow_to_color
from s2svr_lightning.lit.guards import raise_if_nonfinite
from s2svr_lightning.lit.image_logging import log_images
from s2svr_lightning.losses import UnsupervisedFlowLoss, photometric_loss
from s2svr_lightning.metrics import endpoint_error
from s2svr_lightning.models import init_flownet_
from s2svr_lightning.models.flow_input import FlowInput
from s2svr_lightning.models.flow_spec import FlowSpec
from s2svr_lightning.utils import expect_shape, to_plain

__all__ = [
    "FlowModuleBase",
    "check_flow_compatible",
    "consecutive_pairs",
]

# the arguments of Eq. 14 and their defaults: one home, the loss (the flow modules take them too)
_LOSS = inspect.signature(UnsupervisedFlowLoss).parameters


def check_flow_compatible(
    theirs: FlowSpec,
    ours: FlowSpec,
    *,
    source: str,
    check_rule: bool = True,
    fix: str = "",
) -> None:
    """Raise ``ValueError`` unless the flow net ``theirs`` (a checkpoint's) is ``ours``: builder and every
    option, and (with ``check_rule``) the flow-input rule."""
    if not theirs.same_net(ours):
        a, b = (theirs.flownet, dict(theirs.options)), (ours.flownet, dict(ours.options))
        diff = sorted(k for k in set(a[1]) | set(b[1]) if a[1].get(k) != b[1].get(k))
        raise ValueError(
            f"expected the flow network {b[0]} {b[1]}, got {a[0]} {a[1]} in {source} (differing: "
            f"{diff or 'the builder'}); the weights would compute another flow{fix}"
        )
    if check_rule and theirs.flow_input != ours.flow_input:
        raise ValueError(
            f"expected a flow net trained under the flow-input rule {ours.flow_input}, got one trained under "
            f"{theirs.flow_input} in {source}{fix}"
        )


def consecutive_pairs(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T, C, H, W)`` -> frames ``t`` and ``t + 1`` of each sequence, each ``(B * (T - 1), C, H, W)``."""
    if frames.dim() != 5 or frames.shape[1] < 2:
        raise ValueError(f"expected frames (B, T, C, H, W) with T >= 2, got {tuple(frames.shape)}")
    return frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1)


class FlowModuleBase(L.LightningModule):
    """Unsupervised training of a flow network on consecutive frames of ``batch[frames_key]``.

    Subclasses set ``frames_key`` (``"hq"`` or ``"lq"``) and ``kind`` (written to checkpoints as
    ``s2svr_kind``), and may add loss terms with :meth:`extra_losses`.

    Args:
        flownet: builder name in ``s2svr_lightning.models`` (``"pwclite"``).
        flownet_overrides: keyword arguments for the builder.
        flownet_init: ``"kaiming"`` (the untrained network predicts zero flow) or ``"default"``
            (PyTorch's init, ARFlow's in practice, which starts from a constant flow of several pixels
            that the photometric loss cannot see past on small frames); see :func:`init_flownet_`. A
            checkpoint loaded afterwards replaces the weights anyway.
        lr, betas, weight_decay: Adam (the paper: lr 1e-4).
        scheduler: None (constant lr, the paper and ARFlow) or ``"cosine"`` (to ``min_lr`` over the
            trainer's total steps).
        min_lr: final lr of the cosine schedule.
        w_ph ... scale_weights: Eq. 14's options, passed on to ``UnsupervisedFlowLoss`` with its defaults.
        w_ph, w_sm: weights of Eq. 14, l1 photometric and smoothness (the paper: 0.15 and 50).
        w_ssim, w_census: ARFlow's SSIM and census photometric terms; the paper's weights are ARFlow's,
            whose l1 weight 0.15 comes with SSIM 0.85 (see ``UnsupervisedFlowLoss``).
        edge_alpha: edge weight ``exp(-edge_alpha |dI|)`` of Eq. 13 (ARFlow: 10, for images in [0, 1]).
        smooth_normalize: smoothness on ``flow / min(H, W)`` (ARFlow's scale for ``w_sm = 50``).
        occlusion: mask Eq. 11 by the forward-backward check.
        occlusion_warmup_steps: optimizer steps without the mask first; from random weights the check
            marks every pixel occluded, so the masked loss is 0/0 = NaN at step 0 (ARFlow issue #21).
        occlusion_alpha1, occlusion_alpha2: tolerances of the check.
        occlusion_min_visible: pairs with a smaller visible share are not masked (a guard against the
            all-occluded dead end; see ``UnsupervisedFlowLoss``).
        scale_weights: photometric weight per pyramid level, finest first; ``[1.0]`` = final flow only
            (the paper); longer lists read ``return_pyramid=True`` (ARFlow's multi-scale loss).
        val_chunk_pairs: frame pairs per network call at validation (bounds memory on long sequences).
        val_log_images: validation batches drawn as colour-coded flow strips each validation epoch.
    """

    frames_key = "hq"
    kind = "teacher"

    def __init__(
        self,
        *,
        flownet: str = "pwclite",
        flownet_overrides: Mapping[str, Any] | None = None,
        flownet_init: str = "kaiming",
        lr: float = 1e-4,
        betas: Sequence[float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        scheduler: str | None = None,
        min_lr: float = 1e-7,
        w_ph: float = _LOSS["w_ph"].default,
        w_sm: float = _LOSS["w_sm"].default,
        w_ssim: float = _LOSS["w_ssim"].default,
        w_census: float = _LOSS["w_census"].default,
        edge_alpha: float = _LOSS["edge_alpha"].default,
        smooth_normalize: bool = _LOSS["smooth_normalize"].default,
        occlusion: bool = True,
        occlusion_warmup_steps: int = 1000,
        occlusion_alpha1: float = _LOSS["occlusion_alpha1"].default,
        occlusion_alpha2: float = _LOSS["occlusion_alpha2"].default,
        occlusion_min_visible: float = _LOSS["min_visible"].default,
        scale_weights: Sequence[float] = _LOSS["scale_weights"].default,
        val_chunk_pairs: int = 8,
        val_log_images: int = 1,
    ) -> None:
        super().__init__()
        if scheduler not in (None, "none", "cosine"):
            raise ValueError(f"expected scheduler None or 'cosine', got {scheduler!r}")
        if lr <= 0 or occlusion_warmup_steps < 0 or val_chunk_pairs < 1:
            raise ValueError(
                f"expected lr > 0, occlusion_warmup_steps >= 0, val_chunk_pairs >= 1, got {lr}, "
                f"{occlusion_warmup_steps}, {val_chunk_pairs}"
            )
        self.save_hyperparameters()
        # Hydra passes DictConfig / ListConfig: store plain containers so checkpoints load with weights_only
        for key, value in list(self.hparams.items()):
            self.hparams[key] = to_plain(value)
        self.flownet = init_flownet_(
            FlowSpec.create(flownet, self.hparams.flownet_overrides).build(), flownet_init
        )
        # Eq. 14's options are the loss's own arguments, passed on by name (one renamed here)
        shared = {name: self.hparams[name] for name in _LOSS if name in self.hparams}
        self.criterion = UnsupervisedFlowLoss(**shared, min_visible=occlusion_min_visible)

    # ---------------------------------------------------------------- inference
    def forward(self, im1: torch.Tensor, im2: torch.Tensor) -> torch.Tensor:
        """Flow ``im1 -> im2`` ``(B, 2, H, W)`` in pixels for frames ``(B, 3, H, W)`` in [0, 1]."""
        for name, x in (("im1", im1), ("im2", im2)):
            expect_shape(x, "(B, 3, H, W)", name)
        return self.flownet(im1, im2)

    # ---------------------------------------------------------------- training
    @property
    def occlusion_active(self) -> bool:
        """Whether Eq. 11 is masked at the current step (after the warm-up)."""
        return bool(self.hparams.occlusion) and self.global_step >= self.hparams.occlusion_warmup_steps

    def _frames(self, batch: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
        if key not in batch:
            raise KeyError(
                f"expected the batch to hold {key!r} frames (B, T, 3, H, W), got keys {sorted(batch)}"
            )
        return batch[key]

    def _bidirectional(
        self, im1: torch.Tensor, im2: torch.Tensor, *, what: str, batch: Any
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Flow pyramids (finest first, as many levels as the loss reads) in both directions, checked."""
        pyramid = self.criterion.num_scales > 1
        out = self.flownet(im1, im2, with_backward=True, return_pyramid=pyramid)
        levels = out if pyramid else [out]
        flows12 = [f12 for f12, _ in levels]
        flows21 = [f21 for _, f21 in levels]
        # before any warp: on CPU, grid_sample with border padding and a NaN in the grid returns finite
        # values forward and then crashes in backward
        raise_if_nonfinite(flows12, what=f"{what} flow 1->2", step=self.global_step, batch=batch)
        raise_if_nonfinite(flows21, what=f"{what} flow 2->1", step=self.global_step, batch=batch)
        return flows12, flows21

    # ---------------------------------------------------------------- what the flow net reads
    @property
    def flow_input(self) -> FlowInput:
        """The flow-input rule (the teacher: its HQ frames as they are)."""
        return FlowInput("native")

    def flow_pairs(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The consecutive pairs the flow net reads, ``(B * (T - 1), 3, H', W')`` each, under the rule."""
        return self.flow_input.prepare(*consecutive_pairs(self._frames(batch, self.frames_key)))

    def flow_spec(self) -> FlowSpec:
        """What this stage's flow net is (stored in its checkpoints)."""
        hp = self.hparams
        return FlowSpec.create(
            hp.flownet, hp.flownet_overrides, flow_input=self.flow_input, reads=self.frames_key
        )

    def extra_losses(
        self, batch: Mapping[str, torch.Tensor], flow12: torch.Tensor, flow21: torch.Tensor
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """``{name: (weight, term)}`` to add to Eq. 14 (the student's distillation); none for the teacher."""
        return {}

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        im1, im2 = self.flow_pairs(batch)
        flows12, flows21 = self._bidirectional(im1, im2, what=self.kind, batch=batch)
        terms = self.criterion(im1, im2, flows12, flows21, use_occlusion=self.occlusion_active)
        loss = terms["loss"]
        logs = {f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"}
        for name, (weight, value) in self.extra_losses(batch, flows12[0], flows21[0]).items():
            loss = loss + weight * value
            logs[f"train/{name}"] = value.detach()
        raise_if_nonfinite(loss, what=f"{self.kind} loss", step=self.global_step, batch=batch)
        logs["train/loss"] = loss.detach()
        logs["train/occlusion_on"] = float(self.occlusion_active)
        self.log_dict(logs, prog_bar=False, batch_size=im1.shape[0])
        self.log("train/loss_step", loss.detach(), prog_bar=True, logger=False, batch_size=im1.shape[0])
        return loss

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def predict_pairs(
        self, frames: torch.Tensor, *, chunk: int | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Forward flows of consecutive pairs of ``frames (B, T, 3, H, W)`` under the flow-input rule:
        ``(B * (T - 1), 2, H, W)``, or resized to ``size`` (e.g. the HQ size) straight from the flow grid."""
        im1, im2 = self.flow_input.prepare(*consecutive_pairs(frames))
        size = tuple(frames.shape[-2:]) if size is None else tuple(size)
        chunk = chunk or self.hparams.val_chunk_pairs
        flows = [self.flownet(im1[i : i + chunk], im2[i : i + chunk]) for i in range(0, im1.shape[0], chunk)]
        return self.flow_input.resize(torch.cat(flows, dim=0), size)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        hq = self._frames(batch, "hq")
        n_seq = hq.shape[0]
        im1, im2 = self.flow_pairs(batch)
        chunk = self.hparams.val_chunk_pairs
        preds, totals = [], {}
        for i in range(0, im1.shape[0], chunk):
            a, b = im1[i : i + chunk], im2[i : i + chunk]
            flows12, flows21 = self._bidirectional(a, b, what=f"{self.kind} validation", batch=batch)
            terms = self.criterion(a, b, flows12, flows21, use_occlusion=bool(self.hparams.occlusion))
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + v * a.shape[0]
            preds.append(flows12[0])
        logs = {f"val/{k}": v / im1.shape[0] for k, v in totals.items()}
        # compare at the HQ size (the flow grid resized, values scaled)
        hq1, hq2 = consecutive_pairs(hq)
        pred = self.flow_input.resize(torch.cat(preds, dim=0), tuple(hq1.shape[-2:]))
        valid = batch["flow_valid"].flatten(0, 1) if "flow_valid" in batch else None
        occluded = None if valid is None else (valid <= 0).to(hq1.dtype)
        # photometric error of the HQ frames aligned by this flow (a proxy that needs no labels)
        logs["val/photometric_hq"] = photometric_loss(hq1, hq2, pred, occlusion=occluded)
        gt = batch["flow"].flatten(0, 1) if "flow" in batch else None
        if gt is not None:
            logs["val/epe"] = endpoint_error(pred, gt, valid)
            logs["val/epe_zero"] = endpoint_error(torch.zeros_like(gt), gt, valid)
        self.log_dict(logs, batch_size=n_seq, sync_dist=True)
        if batch_idx < self.hparams.val_log_images and not self.trainer.sanity_checking:
            norm = None if gt is None else torch.linalg.vector_norm(gt[:1], dim=1).max()
            strip = [hq1[0], flow_to_color(pred[0], max_norm=norm)]
            if gt is not None:
                strip.append(flow_to_color(gt[0], max_norm=norm))
            log_images(self.trainer, f"val/{self.kind}_flow_{batch_idx}", strip, step=self.global_step)

    # ---------------------------------------------------------------- optimisation / checkpoints
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.flownet.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        if hp.scheduler in (None, "none"):
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=hp.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["s2svr_kind"] = self.kind
        self.flow_spec().write(checkpoint)
