"""The restoration task: one definition of what ``vsr``, ``deblur`` and ``cve`` mean.

A :class:`Task` says how LQ frames are made from HQ frames (its degradation), how outputs are scored (the
benchmark's metric conventions), and what every result table is compared with (its baseline). The data,
the LightningModules, the pipeline and ``restore`` all take it from here; a restorer checkpoint stores
``Task.to_dict()`` so that it can be rebuilt without the config that trained it.

Kinds:

- ``vsr``: x4 super-resolution, LQ = MATLAB bicubic down by ``scale``; baseline: bicubic upsampling.
- ``deblur``: LQ = the mean of ``blur_frames`` consecutive sub-frames (the GoPro recipe); baseline: the
  blurred input.
- ``cve``: LQ = HEVC low-delay P at ``qp`` (MFQEv2: QP 37); baseline: the compressed input, so that the
  scores' deltas are the paper's Table 3 metric.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from s2svr_lightning.data.degradations import TASK_KINDS, degrade, degrade_stream, degraded_length, frame_span

__all__ = ["TASK_KINDS", "Task", "default_scale"]

# keyword arguments of the degradations, per kind (anything else in a degradation mapping is refused)
_DEGRADATION_KEYS = {"vsr": ("scale",), "deblur": ("blur_frames", "blur_stride"), "cve": ("qp",)}
_REDUCTIONS = ("sequence", "frame")
_BASELINE_NAMES = {"vsr": "bicubic", "deblur": "blurred input", "cve": "compressed input"}


def _check_kind(kind: Any) -> str:
    if kind not in TASK_KINDS:
        raise ValueError(f"expected a task kind in {TASK_KINDS}, got {kind!r}")
    return str(kind)


def default_scale(kind: str) -> int:
    """Output size / input size of a task kind: 4 for super-resolution, 1 otherwise."""
    return 4 if _check_kind(kind) == "vsr" else 1


@dataclass(frozen=True)
class Task:
    """A restoration task: kind, scale, degradation and metric conventions.

    Attributes:
        kind: ``"vsr"``, ``"deblur"`` or ``"cve"``.
        scale: output size / input size (4 for ``vsr``, 1 otherwise).
        degradation: keyword options of the kind's degradation (``blur_frames``, ``blur_stride`` for
            ``deblur``; ``qp`` for ``cve``; ``scale`` for ``vsr`` is the task's scale).
        y_channel: score on the BT.601 limited-range Y channel instead of RGB.
        border: pixels cropped from each side before scoring.
        reduction: ``"sequence"`` (mean per sequence, then over sequences) or ``"frame"`` (frames pooled).
    """

    kind: str
    scale: int = 0  # 0: the kind's default
    degradation: Mapping[str, Any] = field(default_factory=dict)
    y_channel: bool = False
    border: int = 0
    reduction: str = "sequence"

    def __post_init__(self) -> None:
        kind = _check_kind(self.kind)
        scale = int(self.scale) or default_scale(kind)
        if scale != default_scale(kind):
            raise ValueError(f"expected scale {default_scale(kind)} for the {kind} task, got {self.scale}")
        degradation = {str(k): v for k, v in dict(self.degradation or {}).items() if v is not None}
        unknown = sorted(set(degradation) - set(_DEGRADATION_KEYS[kind]))
        if unknown:
            raise ValueError(
                f"expected degradation options of the {kind} task among {list(_DEGRADATION_KEYS[kind])}, "
                f"got {unknown}"
            )
        if kind == "vsr" and int(degradation.get("scale", scale)) != scale:
            raise ValueError(f"expected degradation scale {scale}, got {degradation['scale']}")
        degradation.pop("scale", None)  # the task's own scale
        if self.reduction not in _REDUCTIONS:
            raise ValueError(f"expected reduction in {_REDUCTIONS}, got {self.reduction!r}")
        if int(self.border) < 0:
            raise ValueError(f"expected border >= 0, got {self.border}")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "degradation", degradation)
        object.__setattr__(self, "y_channel", bool(self.y_channel))
        object.__setattr__(self, "border", int(self.border))

    # ------------------------------------------------------------------ construction / storage
    @classmethod
    def create(
        cls,
        kind: str,
        *,
        scale: int | None = None,
        degradation: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> Task:
        """A task from config-shaped pieces: ``metrics`` holds ``y_channel``, ``border``, ``reduction``;
        ``degradation`` may carry a ``name`` label (``{"name": "hevc", "qp": 37}``), which is dropped."""
        metrics = dict(metrics or {})
        degradation = {k: v for k, v in dict(degradation or {}).items() if k != "name"}
        unknown = sorted(set(metrics) - {"y_channel", "border", "reduction"})
        if unknown:
            raise ValueError(f"expected metric options among y_channel, border, reduction, got {unknown}")
        return cls(kind=kind, scale=int(scale or 0), degradation=degradation, **metrics)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints and ``results.json``); :meth:`from_dict` rebuilds the task."""
        out = asdict(self)
        out["degradation"] = dict(self.degradation)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        return cls(**dict(data))

    @property
    def metric_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~s2svr_lightning.metrics.VideoMetrics`."""
        return {"y_channel": self.y_channel, "border": self.border, "reduction": self.reduction}

    @property
    def baseline_name(self) -> str:
        """What the baseline is, as result tables name it."""
        return _BASELINE_NAMES[self.kind]

    # ------------------------------------------------------------------ degradation
    @property
    def degradation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`s2svr_lightning.data.degradations.degrade` for this task."""
        kwargs = dict(self.degradation)
        if self.kind == "vsr":
            kwargs["scale"] = self.scale
        return kwargs

    def degradation_option(self, key: str) -> Any:
        """The value of one degradation option in effect: the task's, else the degradation's default
        (``blur_frames`` 7, ``qp`` 37); what any dataset making LQ for this task uses."""
        if key not in _DEGRADATION_KEYS[self.kind]:
            raise ValueError(f"expected a degradation option of the {self.kind} task, got {key!r}")
        if key == "scale":
            return self.scale
        if key in self.degradation:
            return self.degradation[key]
        return inspect.signature(degrade).parameters[key].default

    def degrade(
        self, hq: torch.Tensor, *, return_target: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """LQ frames of a whole clip ``(T, 3, H, W)`` (and the frame-aligned HQ target if asked)."""
        return degrade(self.kind, hq, return_target=return_target, **self.degradation_kwargs)

    def degrade_stream(
        self, hq_frames: Iterable[torch.Tensor], *, chunk: int = 32
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(lq, hq_target)`` pairs from HQ frames ``(3, H, W)`` one at a time, in bounded memory."""
        return degrade_stream(self.kind, hq_frames, chunk=chunk, **self.degradation_kwargs)

    def degraded_length(self, num_frames: int) -> int:
        """Number of LQ frames the degradation makes from ``num_frames`` HQ frames."""
        # only the blur options change the count (a cve task's qp is no option of degraded_length)
        return degraded_length(self.kind, num_frames, **(self.degradation if self.kind == "deblur" else {}))

    @property
    def frame_span(self) -> tuple[int, int]:
        """``(window, stride)``: LQ frame ``i`` is made from HQ frames ``i * stride`` to
        ``i * stride + window - 1`` (the blur window for deblurring; ``(1, 1)`` otherwise)."""
        return frame_span(self.kind, **self.degradation) if self.kind == "deblur" else (1, 1)

    # ------------------------------------------------------------------ baseline
    def baseline(self, lq: torch.Tensor) -> torch.Tensor:
        """The reference every benchmark table starts from, ``(..., 3, h, w)`` -> ``(..., 3, H, W)``.

        Super-resolution: bicubic upsampling (the "Bicubic" rows of Table 1; PyTorch's bicubic kernel,
        a = -0.75, clamped to [0, 1]). Deblurring and compressed video: the degraded input itself.
        """
        if lq.dim() < 3:
            raise ValueError(f"expected lq frames (..., 3, h, w), got {tuple(lq.shape)}")
        if self.kind != "vsr":
            return lq
        import torch.nn.functional as F

        lead, (c, h, w) = lq.shape[:-3], lq.shape[-3:]
        up = F.interpolate(
            lq.reshape(-1, c, h, w), scale_factor=self.scale, mode="bicubic", align_corners=False
        )
        return up.clamp(0.0, 1.0).reshape(*lead, c, h * self.scale, w * self.scale)
