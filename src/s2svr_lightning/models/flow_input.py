"""What the flow network reads: one rule shared by the student stage, the restorer and the streaming restorer.

S2SVR's flow network ``F_o`` works on LQ frames (Eq. 10), but it need not see them at their native size.
A :class:`FlowInput` resizes each LQ pair to a *flow size*, runs the flow network there, and brings the
flow back to the LQ grid with its values scaled (``resize_flow``, the one place that resizes flows):

- ``"hq"``: the HQ size, i.e. the LQ size times the task's scale (x4 for super-resolution; for
  same-size tasks this is the native size). The default: on 64 px synthetic video an untrained teacher
  reading the bicubic-upsampled LQ pair beats students trained on the native 16 px pair (held-out EPE
  1.06 against 1.19-1.35 HQ px), because PWC-Lite's finest decoded level is 1/4 of its input and a
  16 px input leaves it a 4x4 grid to match on.
- ``(H, W)``: a fixed size, as the authors' code does (256x256 for every task).
- ``"native"``: the LQ frames as they are.

The rule is plain data (:meth:`FlowInput.to_dict`) and travels in every flow and restorer checkpoint, so
that a student trained under one rule is not used under another without saying so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .warp import resize_flow

__all__ = ["FLOW_INPUT_MODES", "FlowInput", "ZeroFlow", "zero_flow"]

FLOW_INPUT_MODES = ("native", "scale", "fixed")
Tensor = torch.Tensor


@dataclass(frozen=True)
class FlowInput:
    """The flow-input rule: resize the LQ pair, run the flow net, resize the flow back (values scaled).

    Build with :meth:`create` from a user spec; ``mode`` is ``"native"``, ``"scale"`` (the LQ size
    times ``factor``) or ``"fixed"`` (``size = (H, W)``).

    Images are resized bicubically (``align_corners=False``, the convention of the bicubic degradation;
    antialiased when shrinking) and clamped to [0, 1]; flows are resized with ``area`` when shrinking and
    bilinearly (``align_corners=False``) when enlarging, which keeps pixel centres where the image
    resize put them, and their values are scaled per axis.
    """

    mode: str = "native"
    factor: int = 1
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.mode not in FLOW_INPUT_MODES:
            raise ValueError(f"expected a flow-input mode in {FLOW_INPUT_MODES}, got {self.mode!r}")
        if self.mode == "scale" and int(self.factor) < 1:
            raise ValueError(f"expected a flow-input factor >= 1, got {self.factor}")
        if self.mode == "fixed":
            if self.size is None or len(self.size) != 2 or min(int(s) for s in self.size) < 16:
                raise ValueError(f"expected a fixed flow size (H, W) with H, W >= 16, got {self.size}")
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        else:
            object.__setattr__(self, "size", None)
        object.__setattr__(self, "factor", int(self.factor) if self.mode == "scale" else 1)
        if self.mode == "scale" and self.factor == 1:  # x1 is the native size: one spelling per rule
            object.__setattr__(self, "mode", "native")

    # ------------------------------------------------------------------ construction / storage
    @classmethod
    def create(cls, spec: Any = "hq", *, scale: int = 1) -> FlowInput:
        """A rule from a user spec: ``"hq"`` (x ``scale``), ``"native"``, ``(H, W)`` / ``"HxW"``, or a rule.

        Also accepts the stored form (:meth:`to_dict`).
        """
        if isinstance(spec, FlowInput):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dict(spec)
        if spec is None or spec == "native":
            return cls("native")
        if spec == "hq":
            return cls("scale", factor=int(scale))
        if isinstance(spec, str) and "x" in spec:
            try:
                h, w = (int(v) for v in spec.lower().split("x"))
            except ValueError:
                raise ValueError(f"expected a flow input 'hq', 'native' or 'HxW', got {spec!r}") from None
            return cls("fixed", size=(h, w))
        if isinstance(spec, Sequence) and not isinstance(spec, str) and len(spec) == 2:
            return cls("fixed", size=(int(spec[0]), int(spec[1])))
        if isinstance(spec, int) and not isinstance(spec, bool):
            return cls("fixed", size=(spec, spec))
        raise ValueError(f"expected a flow input 'hq', 'native', [H, W] or 'HxW', got {spec!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints; :meth:`from_dict` rebuilds the rule."""
        return {
            "mode": self.mode,
            "factor": self.factor,
            "size": None if self.size is None else list(self.size),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowInput:
        size = data.get("size")
        return cls(
            str(data.get("mode", "native")), int(data.get("factor", 1)), None if size is None else tuple(size)
        )

    def __str__(self) -> str:
        if self.mode == "scale":
            return f"x{self.factor} (HQ size)"
        if self.mode == "fixed":
            return f"{self.size[0]}x{self.size[1]}"
        return "native"

    # ------------------------------------------------------------------ the rule
    def flow_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the flow network reads for LQ frames of ``height x width``."""
        if self.mode == "scale":
            return height * self.factor, width * self.factor
        if self.mode == "fixed":
            return self.size  # type: ignore[return-value]
        return height, width

    def prepare(self, *frames: Tensor) -> tuple[Tensor, ...]:
        """Frames ``(B, 3, h, w)`` resized to the flow size (unchanged under ``native``)."""
        h, w = frames[0].shape[-2:]
        size = self.flow_size(h, w)
        if size == (h, w):
            return frames
        shrink = size[0] < h or size[1] < w
        return tuple(
            F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrink).clamp(0.0, 1.0)
            for x in frames
        )

    @staticmethod
    def resize(flow: Tensor, size: tuple[int, int]) -> Tensor:
        """A flow ``(B, 2, H, W)`` on the flow grid resized to ``size`` (LQ or HQ), values scaled."""
        h, w = flow.shape[-2:]
        if (h, w) == tuple(size):
            return flow
        if size[0] <= h and size[1] <= w:
            return resize_flow(flow, size, mode="area")
        return resize_flow(flow, size, mode="bilinear", align_corners=False)

    def __call__(
        self, flownet: nn.Module, im1: Tensor, im2: Tensor, *, with_backward: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Flow ``im1 -> im2`` (and back, with ``with_backward``) on the grid of ``im1 (B, 3, h, w)``."""
        h, w = im1.shape[-2:]
        a, b = self.prepare(im1, im2)
        out = flownet(a, b, with_backward=with_backward)
        if with_backward:
            return self.resize(out[0], (h, w)), self.resize(out[1], (h, w))
        return self.resize(out, (h, w))


class ZeroFlow(nn.Module):
    """A flow "network" that predicts zero motion everywhere: S2SVR without alignment (the paper's Fig. 7).

    Same call as PWC-Lite: ``(im1, im2, with_backward=False, return_pyramid=False)``; no parameters.
    """

    def forward(
        self, im1: Tensor, im2: Tensor, *, with_backward: bool = False, return_pyramid: bool = False
    ) -> Any:
        if im1.dim() != 4 or im1.shape != im2.shape:
            raise ValueError(
                f"expected im1 and im2 of the same shape (B, 3, H, W), got {tuple(im1.shape)} and "
                f"{tuple(im2.shape)}"
            )
        zero = im1.new_zeros(im1.shape[0], 2, *im1.shape[-2:])
        out = (zero, zero.clone()) if with_backward else zero
        return [out] if return_pyramid else out


def zero_flow() -> ZeroFlow:
    """No alignment: zero flow for every pair (the ablation of Fig. 7)."""
    return ZeroFlow()
