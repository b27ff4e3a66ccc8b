"""The restoration stage: S2SVR trained end to end, its flow net starting from the student flow stage.

Training follows the paper (Section 4.1) and the authors' public re-implementation (linjing7/VR-Baseline,
its S2SVR training options): Charbonnier loss on every output frame, Adam with betas (0.9, 0.99) and no
weight decay, learning rate 2e-4 for the network and 5e-5 for the flow net, the flow net frozen for the
first ``flow_freeze_steps`` steps (``fix_iter`` there: 10,000; 5,000 in early GoPro options), then a
cosine decay of both rates to 1e-7 over the whole run (one period = the total iterations), stepped per
iteration.

Validation and test run the network on whole sequences (or the DataModule's chunks of them) and score
the outputs with :class:`~s2svr_lightning.metrics.VideoMetrics` under the task's benchmark conventions,
together with the baseline every paper table starts from: bicubic upsampling for super-resolution, the
degraded input itself for deblurring and compressed video (whose delta is the paper's Table 3 metric).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from s2svr_lightning.checkpoint import read_checkpoint, restorer_task, sub_state_dict
from s2svr_lightning.lit.flow import check_flow_compatible
from s2svr_lightning.lit.guards import raise_if_nonfinite
from s2svr_lightning.lit.image_logging import log_images
from s2svr_lightning.losses import charbonnier_loss
from s2svr_lightning.metrics import VideoMetrics
from s2svr_lightning.models.flow_spec import CHECKPOINT_KEY, FlowSpec
from s2svr_lightning.task import Task
from s2svr_lightning.temporal import TemporalMetrics
from s2svr_lightning.utils import to_float_frames, to_plain

__all__ = ["RestorerModule"]


def _step_outputs(batch: Mapping[str, Any], out: torch.Tensor, keys: list[str]) -> dict[str, Any]:
    """A test / predict step's return: the output, its keys, and the batch's frame bookkeeping."""
    result: dict[str, Any] = {"output": out, "key": keys}
    for name in ("frames", "score", "frame_names"):
        if name in batch:
            result[name] = batch[name]
    return result


def restorer_flow_options(
    flownet: str | None,
    flownet_overrides: Mapping[str, Any] | None,
    flow_input: Any,
    *,
    flow_init: str | Path | None,
    override: bool = False,
) -> dict[str, Any]:
    """The restorer's flow-net hyperparameters, unset ones taken from the ``flow_init`` checkpoint.

    Returns ``{"flownet", "flownet_overrides", "flow_input", "flow_input_override"}`` as plain data. A
    student's rule and options thus follow its weights into the restorer; an explicit value that
    differs from the checkpoint's is refused when the weights are loaded
    (:meth:`RestorerModule.load_flownet`).
    """
    theirs = None
    if flow_init is not None and Path(flow_init).is_file() and (flownet is None or flow_input is None):
        theirs = FlowSpec.from_checkpoint(read_checkpoint(flow_init))
    if flownet is None:
        flownet = theirs.flownet if theirs else "pwclite"
        if flownet_overrides is None and theirs:
            flownet_overrides = dict(theirs.options)
    if flow_input is None:
        # a teacher read HQ frames natively: its rule says nothing about LQ; the default applies
        flow_input = theirs.flow_input.to_dict() if theirs and theirs.reads == "lq" else "hq"
    if not isinstance(flow_input, (str, Mapping)):
        flow_input = [int(v) for v in flow_input]  # (H, W) as a plain list
    return {
        "flownet": str(flownet),
        "flownet_overrides": to_plain(flownet_overrides) or {},
        "flow_input": to_plain(flow_input),
        "flow_input_override": bool(override),
    }


def mirrored_forward(forward: Any, lq: torch.Tensor) -> torch.Tensor:
    """The mirror test protocol: ``forward`` on the clip followed by its reverse (``2T`` frames, one pass),
    frame t the mean of its forward-half and mirrored-half outputs, ``(B, T, 3, H, W)``.

    The authors score Vimeo-90K-T so (im1..im7, im7..im1; im4 averaged): the mirrored half's im4 has
    seen the whole clip, where a single causal pass gives it r frames of look-ahead.
    """
    t = lq.shape[1]
    out = forward(torch.cat((lq, lq.flip(1)), dim=1))
    return 0.5 * (out[:, :t] + out[:, t:].flip(1))


class RestorerModule(L.LightningModule):
    """Train, validate and test an S2SVR restorer.

    Args:
        model: builder name in :mod:`s2svr_lightning.models` (``s2svr_vsr``, ``s2svr_deblur``, ``s2svr_cve``).
        model_overrides: keyword overrides for the builder (channels, blocks, ...), stored as plain data so
            that a checkpoint rebuilds the network by itself.
        kind: the restoration task the checkpoint serves, ``"vsr"``, ``"deblur"`` or ``"cve"``.
        scale: the task's scale (default: the kind's, 4 for vsr, 1 otherwise); must be the network's.
        degradation: how the LQ input was made (the kind's options, e.g. ``{"qp": 37}``), for ``restore``.
            ``kind``, ``scale``, ``degradation`` and ``metrics`` make the module's
            :class:`~s2svr_lightning.task.Task` (:attr:`task`).
        flow_init: a student (or teacher) flow checkpoint whose ``flownet.*`` weights initialise the flow
            net when a fresh fit starts (not when resuming, not on ``load_from_checkpoint``).
        lr: learning rate of everything but the flow net (paper: 2e-4).
        flow_lr: learning rate of the flow net (paper: 5e-5).
        betas: Adam betas (0.9, 0.99).
        weight_decay: Adam weight decay (0 in the reference recipe).
        flow_freeze_steps: steps during which the flow net gets no gradient and no update.
        total_steps: length of the cosine schedule; ``None`` uses ``trainer.max_steps``.
        min_lr: the cosine schedule's final learning rate (1e-7).
        charbonnier_eps: Charbonnier epsilon (``sqrt(d^2 + eps^2)``).
        metrics: :class:`~s2svr_lightning.metrics.VideoMetrics` options: ``y_channel``, ``border``,
            ``reduction`` (the benchmark's convention).
        num_log_images: sequences per validation whose middle frame is logged as LQ | output | HQ.
        flownet, flownet_overrides: the flow net's builder and options; None: those of ``flow_init``'s
            checkpoint (else ``pwclite`` with its defaults). Given explicitly, they must equal the
            checkpoint's: a flow net's weights are only meaningful with the options they were trained with.
        flow_input: the flow-input rule (``"hq"``, ``"native"``, ``[H, W]``); None: the student's (from
            ``flow_init``; ``"hq"`` without a student); see :class:`~s2svr_lightning.models.FlowInput`.
        flow_input_override: allow a ``flow_input`` other than the one the student was trained under.
        eval_protocol: how validation and test run the network on a clip: ``"single"`` (one causal pass;
            frame t sees r frames ahead) or ``"mirror"`` (the clip followed by its reverse in one pass,
            each frame the mean of its two outputs: the authors' Vimeo-90K-T protocol, see
            :func:`mirrored_forward`).
        compile: compile the network's recurrent layers for training (``torch.compile``, see
            :func:`~s2svr_lightning.compilation.compile_restorer`; validation and test run eagerly):
            True (inductor) or a backend name (``"aot_eager"``). A run-time choice like the precision,
            not stored in the checkpoint. Where it cannot compile, one line says so and training runs
            eagerly.
        test_temporal: the test stage's warping error / tOF accumulator
            (:func:`~s2svr_lightning.flow_estimators.temporal_metrics` of ``test.temporal`` /
            ``test.flow``); default: mode ``auto`` with the task's conventions. Not stored either.

    Activation checkpointing is the network's option (``model_overrides={"checkpointing": "step"}``,
    :class:`~s2svr_lightning.models.S2SVR`); mixed precision is the Trainer's (``precision="bf16-mixed"``),
    under which the loss is computed in float32.
    """

    def __init__(
        self,
        *,
        model: str = "s2svr_vsr",
        model_overrides: Mapping[str, Any] | None = None,
        kind: str = "vsr",
        scale: int | None = None,
        degradation: Mapping[str, Any] | None = None,
        flow_init: str | None = None,
        lr: float = 2e-4,
        flow_lr: float = 5e-5,
        betas: tuple[float, float] | list[float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        flow_freeze_steps: int = 5000,
        total_steps: int | None = None,
        min_lr: float = 1e-7,
        charbonnier_eps: float = 1e-6,
        metrics: Mapping[str, Any] | None = None,
        num_log_images: int = 1,
        flownet: str | None = None,
        flownet_overrides: Mapping[str, Any] | None = None,
        flow_input: Any = None,
        flow_input_override: bool = False,
        eval_protocol: str = "single",
        compile: bool | str = False,
        test_temporal: TemporalMetrics | None = None,
    ) -> None:
        super().__init__()
        from s2svr_lightning.models import build_model

        if eval_protocol not in ("single", "mirror"):
            raise ValueError(f"expected eval_protocol 'single' or 'mirror', got {eval_protocol!r}")
        if flow_freeze_steps < 0:
            raise ValueError(f"expected flow_freeze_steps >= 0, got {flow_freeze_steps}")
        if lr <= 0 or flow_lr < 0 or min_lr < 0:
            raise ValueError(f"expected lr > 0, flow_lr >= 0 and min_lr >= 0, got {lr}, {flow_lr}, {min_lr}")
        model_overrides = to_plain(model_overrides) or {}
        degradation, metrics = to_plain(degradation) or {}, to_plain(metrics) or {}
        task = restorer_task({"kind": kind, "scale": scale, "degradation": degradation, "metrics": metrics})
        self.task: Task = task
        # plain data, so that a checkpoint rebuilds the network and the task without a config
        self.save_hyperparameters(
            {
                "model": model,
                "model_overrides": model_overrides,
                "kind": task.kind,
                "scale": task.scale,
                "degradation": degradation,
                "flow_init": None if flow_init is None else str(flow_init),
                "lr": float(lr),
                "flow_lr": float(flow_lr),
                "betas": [float(b) for b in betas],
                "weight_decay": float(weight_decay),
                "flow_freeze_steps": int(flow_freeze_steps),
                "total_steps": None if total_steps is None else int(total_steps),
                "min_lr": float(min_lr),
                "charbonnier_eps": float(charbonnier_eps),
                "metrics": metrics,
                "num_log_images": int(num_log_images),
                "eval_protocol": str(eval_protocol),
                **restorer_flow_options(
                    flownet, flownet_overrides, flow_input, flow_init=flow_init, override=flow_input_override
                ),
            }
        )
        self.net = build_model(model, **model_overrides, **self._flow_parts())
        if int(self.net.scale) != task.scale:
            raise ValueError(
                f"expected a network of scale {task.scale} for the {task.kind} task, got {model} of scale "
                f"{self.net.scale} (pass the kind of the model's task, or its scale)"
            )
        self.compiled = None
        if compile:
            from s2svr_lightning.compilation import compile_restorer

            backend = compile if isinstance(compile, str) else "inductor"
            self.compiled = compile_restorer(self.net, backend=backend, training_only=True)
        self.val_metrics = VideoMetrics(**task.metric_options)
        self.test_metrics = VideoMetrics(**task.metric_options)
        # warping error / tOF of the test stage (s2svr_lightning.temporal); "auto": only where the test
        # data has exact flow (cheap); the pipeline passes one built from test.temporal / test.flow
        if test_temporal is None:
            test_temporal = TemporalMetrics(**task.metric_options, mode="auto")
        self.test_temporal = test_temporal
        self.test_per_sequence: dict[str, dict[str, float]] = {}
        self._flow_trainable: bool | None = None

    # ------------------------------------------------------------------ network
    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, h, w)`` LQ in [0, 1] -> ``(B, T, 3, scale h, scale w)`` restored frames."""
        return self.net(lq)

    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def scale(self) -> int:
        return self.task.scale

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """Whether DDP must tolerate parameters without a gradient: the flow net gets none while it is
        frozen (the first ``flow_freeze_steps``)."""
        return int(self.hparams.flow_freeze_steps) > 0

    def load_flownet(self, path: str | Path) -> None:
        """Copy a flow stage checkpoint's ``flownet.*`` weights into ``self.net.flownet``."""
        ckpt = read_checkpoint(path, kind=("student", "teacher"), what="flow checkpoint")
        state = sub_state_dict(ckpt, "flownet.", path=path)
        check_flow_compatible(
            FlowSpec.from_checkpoint(ckpt),
            self.flow_spec(),
            source=str(path),
            check_rule=ckpt.get("s2svr_kind") == "student" and not self.hparams.flow_input_override,
            fix=(
                "; leave restorer flownet / flownet_overrides / flow_input unset to take the student's, or "
                "set flow_input_override=true to use another flow-input rule on purpose"
            ),
        )
        self.net.flownet.load_state_dict(state, strict=True)

    def _flow_parts(self) -> dict[str, Any]:
        """The flow net and its input rule from the hyperparameters (also on ``load_from_checkpoint``)."""
        hp = self.hparams
        spec = FlowSpec.create(
            hp.flownet, hp.flownet_overrides, flow_input=hp.flow_input, scale=self.task.scale
        )
        return {"flownet": spec.build(), "flow_input": spec.flow_input}

    def flow_spec(self) -> FlowSpec:
        """What the restorer's flow net is (stored in its checkpoints)."""
        hp = self.hparams
        return FlowSpec.create(hp.flownet, hp.flownet_overrides, flow_input=self.net.flow_input)

    def setup(self, stage: str) -> None:
        # Only a fresh fit takes the student's flow net; a resumed fit restores its own weights afterwards
        # and a checkpoint loaded for inference must not need the student file any more.
        if stage == "fit" and self.hparams.flow_init and self.trainer.ckpt_path is None:
            self.load_flownet(self.hparams.flow_init)

    # ------------------------------------------------------------------ training
    def _set_flow_trainable(self, trainable: bool) -> None:
        if self._flow_trainable is trainable:
            return
        # requires_grad False removes the flow net from the backward pass entirely (no gradient through
        # PWC-Lite at all during the freeze, which is most of its cost); under DDP the pipeline sets
        # find_unused_parameters so the reducer tolerates the frozen parameters.
        for p in self.net.flownet.parameters():
            p.requires_grad_(trainable)
        self._flow_trainable = trainable

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._set_flow_trainable(self.global_step >= self.hparams.flow_freeze_steps)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        lq, hq = batch["lq"], batch["hq"]
        out = self(lq)
        if out.shape != hq.shape:
            raise ValueError(
                f"expected the output shape {tuple(out.shape)} to equal the HQ shape {tuple(hq.shape)}"
            )
        # float32 whatever the autocast precision: the loss is a mean over millions of small differences
        out, hq = out.float(), hq.float()
        loss = charbonnier_loss(out, hq, eps=self.hparams.charbonnier_eps)
        raise_if_nonfinite(loss, what="restorer loss", step=self.global_step, batch=batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=lq.shape[0])
        with torch.no_grad():
            mse = (out.detach().clamp(0, 1) - hq).square().mean().clamp_min(1e-12)
        self.log("train/psnr", -10.0 * torch.log10(mse), batch_size=lq.shape[0])
        self.log("train/flow_frozen", float(not self._flow_trainable), batch_size=lq.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        flow_params = list(self.net.flownet.parameters())
        flow_ids = {id(p) for p in flow_params}
        other = [p for p in self.net.parameters() if id(p) not in flow_ids]
        optimizer = torch.optim.Adam(
            [
                {"params": other, "lr": self.hparams.lr, "name": "restorer"},
                {"params": flow_params, "lr": self.hparams.flow_lr, "name": "flownet"},
            ],
            betas=tuple(self.hparams.betas),
            weight_decay=self.hparams.weight_decay,
        )
        total = self.hparams.total_steps
        if total is None:
            total = self.trainer.max_steps if self.trainer is not None else -1
        if total is None or total <= 0:
            raise ValueError(
                f"expected total_steps > 0 (or a trainer with max_steps) for the cosine schedule, got {total}"
            )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total, eta_min=self.hparams.min_lr
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def _evaluate(
        self, batch: Mapping[str, Any], batch_idx: int, metrics: VideoMetrics, prefix: str
    ) -> tuple[torch.Tensor, list[str]]:
        lq, hq = batch["lq"], batch["hq"]
        out = (mirrored_forward(self, lq) if self.hparams.eval_protocol == "mirror" else self(lq)).float()
        raise_if_nonfinite(out, what=f"{prefix} output", step=self.global_step, batch=batch)
        base = self.task.baseline(lq.float())
        keys = batch.get("key", [f"{prefix}_{batch_idx}_{i}" for i in range(lq.shape[0])])
        # "frames" / "score": the DataModule's frame numbers and the frames this sample must count
        metrics.update(
            out, hq.float(), keys, baseline=base, frame_index=batch.get("frames"), mask=batch.get("score")
        )
        if (
            batch_idx < self.hparams.num_log_images
            and self.trainer is not None
            and not self.trainer.sanity_checking
        ):
            self._log_strip(prefix, batch_idx, lq, out, hq)
        return out, list(keys)

    def _log_strip(
        self, prefix: str, batch_idx: int, lq: torch.Tensor, out: torch.Tensor, hq: torch.Tensor
    ) -> None:
        t = lq.shape[1] // 2
        size = hq.shape[-2:]
        lq_up = F.interpolate(lq[:1, t].float(), size=size, mode="nearest")
        images = [lq_up[0], out[0, t].clamp(0, 1), hq[0, t].float()]
        log_images(self.trainer, f"{prefix}/lq_output_hq_{batch_idx}", images, self.global_step)
        if lq.shape[1] > 1:
            from s2svr_lightning.flow_viz import flow_to_color

            flow = self.net.pair_flows(lq[:1, t].float(), lq[:1, t - 1].float())[1]  # t-1 -> t, as trained
            color = to_float_frames(flow_to_color(flow))
            log_images(
                self.trainer, f"{prefix}/flow_{batch_idx}", [lq[0, t - 1].float(), color[0]], self.global_step
            )

    def _log_metrics(self, metrics: VideoMetrics, prefix: str) -> dict[str, float]:
        values = metrics.compute()  # synced across ranks by torchmetrics
        logged = {f"{prefix}/{k}": float(v) for k, v in values.items()}
        # identical on every rank after the sync: no second reduction
        self.log_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in logged.items()}, sync_dist=False)
        return logged

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer is not None and self.trainer.sanity_checking:
            self.val_metrics.reset()
            return
        self._log_metrics(self.val_metrics, "val")
        self.val_metrics.reset()

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Score a batch; returns what :class:`~s2svr_lightning.lit.evaluation.TestOutputWriter` saves:
        ``output`` ``(B, T, 3, H, W)`` (unclamped), ``key`` and the batch's ``frames``, ``score`` and
        ``frame_names`` where it has them."""
        out, keys = self._evaluate(batch, batch_idx, self.test_metrics, "test")
        self.test_temporal.update(
            out, batch["hq"].float(), keys, frame_index=batch.get("frames"), mask=batch.get("score"),
            flow=batch.get("flow"), flow_valid=batch.get("flow_valid"),
        )  # fmt: skip
        return _step_outputs(batch, out, keys)

    def predict_step(self, batch: Mapping[str, Any] | torch.Tensor, batch_idx: int) -> dict[str, Any]:
        """Restore a batch of the DataModule's evaluation loaders (a dict with ``lq``; ``hq`` is not
        needed) or a bare ``(B, T, 3, h, w)`` LQ tensor: ``{"output": (B, T, 3, H, W) clamped to [0, 1],
        "key": B keys, ...}`` with the batch's ``frames``, ``score`` and ``frame_names`` where present."""
        if isinstance(batch, torch.Tensor):
            batch = {"lq": batch}
        if not isinstance(batch, Mapping) or "lq" not in batch:
            got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(f"expected a predict batch with an 'lq' tensor (B, T, 3, h, w), got {got}")
        lq = batch["lq"]
        if lq.dim() != 5:
            raise ValueError(f"expected lq of shape (B, T, 3, h, w), got {tuple(lq.shape)}")
        out = self(lq).float().clamp_(0.0, 1.0)
        keys = batch.get("key", [f"predict_{batch_idx}_{i}" for i in range(lq.shape[0])])
        return _step_outputs(batch, out, list(keys))

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")
        self.test_per_sequence = self.test_metrics.per_sequence()
        self.test_metrics.reset()
        temporal = {f"test/{k}": v for k, v in self.test_temporal.summary().items()}
        self.log_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in temporal.items()}, sync_dist=False)
        for key, row in self.test_temporal.per_sequence().items():
            self.test_per_sequence.setdefault(key, {}).update(row)
        self.test_temporal.reset()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_KEY not in checkpoint:  # made before the flow-input rule travelled with the weights
            spec = FlowSpec.from_checkpoint(checkpoint)
            flow_input = spec.flow_input.to_dict()
            self.hparams.update(
                flownet=spec.flownet, flownet_overrides=dict(spec.options), flow_input=flow_input
            )
            self.net.flownet, self.net.flow_input = spec.build(), spec.flow_input

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["s2svr_kind"] = "restorer"
        self.flow_spec().write(checkpoint)
