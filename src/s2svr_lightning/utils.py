"""Small helpers every layer uses: shape guards, 8-bit frame conversion, OmegaConf to plain data, a line
for the user.

Nothing here imports Lightning or the data stack, so the networks, ``restore`` and the LightningModules
can all use it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["check_frames", "expect_shape", "say", "to_float_frames", "to_plain", "to_uint8_frames"]


def say(message: str) -> None:
    """A line for the user on stderr (like the progress bars, so stdout stays clean for scripts).

    The pipeline's messages go through :func:`s2svr_lightning.pipeline.common.log_message` instead
    (global rank zero only, and into the run's log file).
    """
    print(message, file=sys.stderr, flush=True)


def expect_shape(x: Any, shape: str, name: str) -> torch.Tensor:
    """Check a tensor against a shape written as in the docstrings, e.g. ``"(B, T, 3, H, W)"``; returns it.

    Each entry of ``shape`` is a number (that size exactly), a name (any size), or a leading ``...`` (any
    number of leading dims).

    Raises:
        ValueError: ``expected <name> of shape <shape>, got <its shape>`` (or its type if not a tensor).
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {name} of shape {shape}, got {type(x).__name__}")
    entries = [e.strip() for e in shape.strip().strip("()").split(",")]
    lead = entries[0] == "..."
    if lead:
        entries = entries[1:]
    ok = x.dim() >= len(entries) if lead else x.dim() == len(entries)
    if ok:
        sizes = x.shape[x.dim() - len(entries) :]
        ok = all(not e.isdigit() or size == int(e) for e, size in zip(entries, sizes))
    if not ok:
        raise ValueError(f"expected {name} of shape {shape}, got {tuple(x.shape)}")
    return x


def to_float_frames(frames: Any, *, channels_last: bool = False) -> torch.Tensor:
    """8-bit frames -> float32 in [0, 1], channels first.

    ``frames``: a uint8 numpy array or tensor ``(..., C, H, W)``, or ``(..., H, W, C)`` (the layout of
    decoded video and images) with ``channels_last=True``. A float input is taken as already in [0, 1].
    """
    t = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"expected a uint8 array or tensor of frames, got {type(frames).__name__}")
    if t.dim() < 3:
        raise ValueError(f"expected frames of shape (..., H, W, C) or (..., C, H, W), got {tuple(t.shape)}")
    if channels_last:
        t = t.movedim(-1, -3)
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if not t.is_floating_point():
        raise ValueError(f"expected uint8 or float frames, got {t.dtype}")
    return t.float()


def to_uint8_frames(frames: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """Float frames in [0, 1] ``(..., C, H, W)`` -> uint8, clamped and rounded to the nearest level (as
    :func:`s2svr_lightning.metrics.quantize_8bit` rounds; NaN becomes 0); uint8 passes through.

    ``channels_last=True`` returns ``(..., H, W, C)`` (the layout of images and video writers), contiguous.
    """
    if not isinstance(frames, torch.Tensor) or frames.dim() < 3:
        got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"expected frames of shape (..., C, H, W), got {got}")
    x = frames.detach()
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise ValueError(f"expected uint8 or float frames in [0, 1], got {x.dtype}")
        # rounded in float32 as BasicSR's tensor2img (x * 255 can fall on the other side of .5 in float64);
        # float64 input stays float64
        x = x if x.dtype == torch.float64 else x.float()
        x = x.nan_to_num(0.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return x.movedim(-3, -1).contiguous() if channels_last else x


def to_plain(value: Any) -> Any:
    """OmegaConf containers, mappings and tuples -> plain dicts and lists (resolving interpolations), so
    that hyperparameters load with ``torch.load(weights_only=True)`` and compare with ``==``."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra, a dependency
        pass
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def check_frames(x: object, *, name: str = "x") -> torch.Tensor:
    """Raise ``ValueError`` unless ``x`` is float ``(B, T, 3, H, W)`` with T >= 1 and H, W >= 16: the frames
    a network (:class:`~s2svr_lightning.models.S2SVR`) takes."""
    if (
        not isinstance(x, torch.Tensor)
        or x.dim() != 5
        or x.shape[1] < 1
        or x.shape[2] != 3
        or x.shape[-2] < 16
        or x.shape[-1] < 16
        or not x.is_floating_point()
    ):
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"expected {name} of shape (B, T, 3, H, W) with T >= 1 and H, W >= 16, float in [0, 1], got {got}"
        )
    return x
