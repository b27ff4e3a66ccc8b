"""What a flow net is, as plain data that travels with its weights: :class:`FlowSpec`.

A flow net's weights compute the flow they were trained to compute only with the same builder, the same
options and the same flow-input rule (:class:`~s2svr_lightning.models.flow_input.FlowInput`). Teacher,
student and restorer checkpoints therefore store their flow net's spec under ``s2svr_flow``
(:data:`CHECKPOINT_KEY`): ``{"flownet", "options", "flow_input", "reads"}``. This module is the one
place that writes it, reads it back, describes the checkpoints made before it travelled with them, and
builds the network it names. Checkpoints are passed in as loaded dicts: nothing here opens a file.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .flow_input import FlowInput

__all__ = ["CHECKPOINT_KEY", "FLOW_READS", "FlowSpec"]

CHECKPOINT_KEY = "s2svr_flow"
# the frames a flow net reads: the teacher HQ frames, the student and the restorer LQ frames
FLOW_READS = ("hq", "lq")


@dataclass(frozen=True)
class FlowSpec:
    """A flow net: builder name, every keyword option of the builder (defaults filled in, so that ``{}``
    and ``{"min_level_size": 1}`` are one spec), the flow-input rule and the frames it reads.

    Build with :meth:`create` (from a builder name and overrides), :meth:`from_checkpoint` or
    :meth:`from_dict`; :meth:`to_dict` is what checkpoints store and :meth:`build` the network.
    """

    flownet: str = "pwclite"
    options: Mapping[str, Any] = field(default_factory=dict)
    flow_input: FlowInput = field(default_factory=FlowInput)
    reads: str = "lq"

    def __post_init__(self) -> None:
        if self.reads not in FLOW_READS:
            raise ValueError(f"expected reads in {FLOW_READS}, got {self.reads!r}")
        object.__setattr__(self, "options", dict(self.options))
        object.__setattr__(self, "flow_input", FlowInput.create(self.flow_input))

    @classmethod
    def create(
        cls,
        flownet: str = "pwclite",
        overrides: Mapping[str, Any] | None = None,
        *,
        flow_input: Any = "native",
        scale: int = 1,
        reads: str = "lq",
    ) -> FlowSpec:
        """The spec of builder ``flownet`` with ``overrides`` (checked: an unknown option is a
        ``ValueError``), the rule ``flow_input`` (a :meth:`FlowInput.create` spec, ``"hq"`` meaning x
        ``scale``) and ``reads``."""
        return cls(
            str(flownet),
            builder_options(str(flownet), overrides),
            FlowInput.create(flow_input, scale=scale),
            reads,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowSpec:
        """The spec a checkpoint stores (:meth:`to_dict`)."""
        return cls(
            str(data["flownet"]),
            dict(data.get("options") or {}),
            FlowInput.create(data.get("flow_input")),
            str(data.get("reads", "lq")),
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> FlowSpec:
        """The flow net of a loaded teacher, student or restorer checkpoint.

        A checkpoint made before the spec travelled with the weights (no ``s2svr_flow``) read its frames
        at their native size: a flow checkpoint's net is the one its hyperparameters name, a restorer's a
        default PWC-Lite (whatever its student was).
        """
        stored = checkpoint.get(CHECKPOINT_KEY)
        if stored is not None:
            return cls.from_dict(stored)
        kind = checkpoint.get("s2svr_kind")
        if kind == "restorer":
            return cls.create("pwclite")
        hp = checkpoint.get("hyper_parameters") or {}
        reads = "hq" if kind == "teacher" else "lq"
        return cls.create(hp.get("flownet", "pwclite"), hp.get("flownet_overrides"), reads=reads)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints (``checkpoint["s2svr_flow"]``)."""
        return {
            "flownet": self.flownet,
            "options": dict(self.options),
            "flow_input": self.flow_input.to_dict(),
            "reads": self.reads,
        }

    def write(self, checkpoint: dict[str, Any]) -> None:
        """Store the spec in a checkpoint being saved."""
        checkpoint[CHECKPOINT_KEY] = self.to_dict()

    def same_net(self, other: FlowSpec) -> bool:
        """Whether ``other`` names the same network (builder and every option; rules may differ)."""
        return (self.flownet, dict(self.options)) == (other.flownet, dict(other.options))

    def build(self) -> nn.Module:
        """A fresh network of this spec (weights as the builder initialises them)."""
        from . import build_model

        return build_model(self.flownet, **dict(self.options))


def builder_options(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every keyword option of builder ``name``, defaults filled in and ``overrides`` applied (checked)."""
    from ..utils import to_plain
    from . import BUILDERS, check_overrides

    check_overrides(name, dict(overrides or {}))
    params = inspect.signature(BUILDERS[name]).parameters
    options = {
        k: p.default
        for k, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }
    options.update(to_plain(dict(overrides or {})))
    return options
