"""Flow estimators of the temporal metrics: TV-L1 (scikit-image) or a checkpoint's flow net.

:func:`flow_estimator` turns ``test.flow`` / ``--flow`` into a batched ``(im1, im2) -> flow 1 -> 2``
(:data:`~s2svr_lightning.temporal.FlowFn`) for :mod:`s2svr_lightning.temporal`. It sits above
``checkpoint`` because :class:`NetworkFlow` reads a teacher, student or restorer checkpoint; the metrics
themselves (:mod:`s2svr_lightning.temporal`) know nothing of checkpoints.

``"tvl1"``: scikit-image's ``optical_flow_tvl1`` on the BT.601 luma (no weights needed; CPU: about 20 ms
per flow at 64x64, 0.3 s at 256x256, 3.7 s at 1280x720). A checkpoint path: its PWC-Lite flow net runs on
the full-size frames, on the frames' device (use a GPU for large videos); with ``rule=True``
(``s2svr-flow``) it reads them as its checkpoint's flow-input rule says (the student's and the
restorer's: the LQ pair resized to the flow size, the flow resized back).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from s2svr_lightning.temporal import TEMPORAL_MODES, FlowFn, TemporalMetrics
from s2svr_lightning.utils import expect_shape

__all__ = ["NetworkFlow", "TVL1Flow", "flow_estimator", "temporal_metrics"]


class TVL1Flow:
    """scikit-image's TV-L1 optical flow on the BT.601 luma, as a batched ``(im1, im2) -> flow 1 -> 2``.

    ``(N, 3, H, W)`` RGB in [0, 1] -> ``(N, 2, H, W)`` float32 pixels (channel 0 = x), on the input's
    device (computed on the CPU). ``flow_warp(im2, flow)`` approximates ``im1``.
    """

    name = "tvl1"

    def __call__(self, im1: torch.Tensor, im2: torch.Tensor) -> torch.Tensor:
        from skimage.registration import optical_flow_tvl1

        expect_shape(im1, "(N, 3, H, W)", "im1")
        if im2.shape != im1.shape:
            raise ValueError(
                f"expected im1 and im2 of one shape, got {tuple(im1.shape)} and {tuple(im2.shape)}"
            )
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(1, 3, 1, 1)
        g1 = (im1.detach().float().cpu() * weights).sum(dim=1).numpy()
        g2 = (im2.detach().float().cpu() * weights).sum(dim=1).numpy()
        flows = []
        for a, b in zip(g1, g2):
            vy, vx = optical_flow_tvl1(a, b)  # rows then columns; im2 sampled at p + flow matches im1
            flows.append(torch.stack((torch.from_numpy(vx), torch.from_numpy(vy))).float())
        return torch.stack(flows).to(im1.device)


class NetworkFlow:
    """A flow network (PWC-Lite) as a batched ``(im1, im2) -> flow 1 -> 2`` on the frames' device.

    Args:
        net: ``net(im1, im2) -> (N, 2, H, W)``, RGB in [0, 1].
        name: how messages and results name it (the checkpoint path).
        flow_input: a :class:`~s2svr_lightning.models.FlowInput` rule the frames go through (resized to
            the flow size, the flow resized back to their grid); None: the net reads them as they are.
        spec: the checkpoint's :class:`~s2svr_lightning.models.FlowSpec`, when it came from one.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        name: str = "network",
        *,
        flow_input: Any | None = None,
        spec: Any | None = None,
    ) -> None:
        self.net = net.eval()
        self.name = name
        self.flow_input = flow_input
        self.spec = spec

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, rule: bool = False) -> NetworkFlow:
        """The flow net of a teacher, student or restorer checkpoint, run on full-size frames (``rule``:
        through the checkpoint's flow-input rule, as training and restoring run it)."""
        from s2svr_lightning.checkpoint import check_kind, read_checkpoint, sub_state_dict
        from s2svr_lightning.models import FlowSpec

        ckpt = read_checkpoint(path, what="flow checkpoint")
        kind = check_kind(ckpt, ("teacher", "student", "restorer"), path)
        spec = FlowSpec.from_checkpoint(ckpt)
        net = spec.build()
        prefix = "net.flownet." if kind == "restorer" else "flownet."
        try:
            net.load_state_dict(sub_state_dict(ckpt, prefix, path=path), strict=True)
        except RuntimeError as err:
            raise ValueError(f"expected the weights of a {spec.flownet} flow net in {path}: {err}") from err
        return cls(net, name=str(path), flow_input=spec.flow_input if rule else None, spec=spec)

    @torch.no_grad()
    def __call__(self, im1: torch.Tensor, im2: torch.Tensor) -> torch.Tensor:
        expect_shape(im1, "(N, 3, H, W)", "im1")
        self.net.to(im1.device)
        im1, im2 = im1.float(), im2.float().to(im1.device)
        if self.flow_input is not None:
            return self.flow_input(self.net, im1, im2).float()
        return self.net(im1, im2).float()


def flow_estimator(spec: str | os.PathLike | None) -> FlowFn | None:
    """``"tvl1"`` -> :class:`TVL1Flow`; ``None`` / ``"none"`` -> None; a checkpoint path ->
    :class:`NetworkFlow` of its flow net (teacher, student or restorer checkpoint)."""
    if spec is None or str(spec).lower() == "none":
        return None
    if str(spec).lower() == "tvl1":
        return TVL1Flow()
    if not Path(spec).is_file():
        raise FileNotFoundError(
            f"flow estimator {spec}: expected 'tvl1', 'none' or a teacher / student / restorer checkpoint "
            "file, got no such file"
        )
    return NetworkFlow.from_checkpoint(spec)


def temporal_metrics(
    metrics: Mapping[str, Any], mode: str = "auto", flow: str | os.PathLike | None = "tvl1"
) -> TemporalMetrics:
    """A :class:`TemporalMetrics` from config values: the task's ``metrics`` conventions, the mode
    (``test.temporal``) and the estimator (``test.flow``), loaded only for the modes that use it."""
    if mode not in TEMPORAL_MODES:
        raise ValueError(f"expected a temporal mode in {TEMPORAL_MODES}, got {mode!r}")
    estimator = flow_estimator(flow) if mode in ("warp", "full") else None
    if mode in ("warp", "full") and estimator is None:
        raise ValueError(f"expected a flow estimator (tvl1 or a checkpoint) for temporal mode {mode!r}")
    return TemporalMetrics(**dict(metrics), mode=mode, estimator=estimator)
