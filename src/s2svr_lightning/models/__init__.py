"""Networks of S2SVR: plain ``nn.Module`` s, no training logic, no I/O."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .attention import LocalAttention
from .convgru import ConvGRU, ResConvGRU, ResidualBlock
from .flow_input import FlowInput, ZeroFlow, zero_flow
from .flow_spec import FlowSpec
from .pwclite import PWCLite, init_flownet_, pwclite
from .s2svr import S2SVR, s2svr_cve, s2svr_deblur, s2svr_vsr
from .warp import flow_warp, pixel_grid, resize_flow

__all__ = [
    "BUILDERS",
    "ConvGRU",
    "FlowInput",
    "FlowSpec",
    "LocalAttention",
    "PWCLite",
    "ResConvGRU",
    "ResidualBlock",
    "S2SVR",
    "build_model",
    "check_overrides",
    "flow_warp",
    "init_flownet_",
    "pixel_grid",
    "pwclite",
    "resize_flow",
    "s2svr_cve",
    "s2svr_deblur",
    "s2svr_vsr",
    "ZeroFlow",
    "zero_flow",
]

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "pwclite": pwclite,
    "zero_flow": zero_flow,
    "s2svr_vsr": s2svr_vsr,
    "s2svr_deblur": s2svr_deblur,
    "s2svr_cve": s2svr_cve,
}


def build_model(name: str, **overrides) -> nn.Module:
    """Build a network by builder name (``pwclite``, ``s2svr_vsr``, ``s2svr_deblur``, ``s2svr_cve``).

    ``zero_flow`` is the flow net of S2SVR without alignment. ``overrides`` go to the builder as keyword
    arguments (``pwclite``: ``normalize_features``, ``min_level_size``); an unknown one is a
    ``ValueError`` that lists the builder's arguments (:func:`check_overrides`).
    """
    check_overrides(name, overrides)
    return BUILDERS[name](**overrides)


def check_overrides(name: str, overrides: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for an unknown builder name or an override its builder does not take.

    Without building anything: a build draws the initial weights from the global RNG, and a check made
    while training (every checkpoint records its flow net's options) must not change the batches drawn
    after it.
    """
    if name not in BUILDERS:
        raise ValueError(f"expected a model name in {sorted(BUILDERS)}, got {name!r}")
    params = inspect.signature(BUILDERS[name]).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(overrides) - set(params))
    if unknown and not takes_any:  # builders with **kwargs check their own
        accepted = sorted(params)
        raise ValueError(f"expected overrides of {name!r} among {accepted}, got unknown {unknown}")
