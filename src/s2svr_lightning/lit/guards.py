"""Fail loudly on NaN: the check every LightningModule runs on flows before they warp and on losses
before ``backward``, with a message that names the step and the batch's sequences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["NonFiniteError", "describe_batch", "raise_if_nonfinite"]


class NonFiniteError(FloatingPointError):
    """A loss, flow or output became NaN or infinite: training stops instead of going on silently."""


def describe_batch(batch: Any, *, max_keys: int = 8) -> str:
    """Short description of a batch for error messages: its keys and its sequence ids (``key``)."""
    if isinstance(batch, Mapping):
        parts = [f"batch keys {sorted(map(str, batch.keys()))}"]
        keys = batch.get("key")
        if isinstance(keys, str):
            keys = [keys]
        if isinstance(keys, Sequence) and len(keys) > 0:
            shown = ", ".join(map(str, list(keys)[:max_keys]))
            more = f" and {len(keys) - max_keys} more" if len(keys) > max_keys else ""
            parts.append(f"sequences [{shown}{more}]")
        return ", ".join(parts)
    if batch is None:
        return "no batch"
    return f"batch of type {type(batch).__name__}"


def _tensors(value: Any, name: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [(name, value)]
    if isinstance(value, (int, float)):
        return [(name, torch.tensor(float(value)))]
    if isinstance(value, Mapping):
        return [item for k, v in value.items() for item in _tensors(v, f"{name}[{k!r}]")]
    if isinstance(value, (list, tuple)):
        return [item for i, v in enumerate(value) for item in _tensors(v, f"{name}[{i}]")]
    raise TypeError(f"expected a tensor, a number, or a dict/list of them, got {type(value).__name__}")


def raise_if_nonfinite(value: Any, *, what: str, step: int, batch: Any = None) -> None:
    """Raise :class:`NonFiniteError` when ``value`` holds a NaN or an infinity.

    Call it on flows before they warp anything (``grid_sample`` with a NaN grid can crash in
    backward) and on losses before ``backward``.

    Args:
        value: a tensor, a number, or a (nested) dict / list / tuple of them.
        what: the quantity, as the message should name it (``"teacher loss"``, ``"flow 1->2"``).
        step: the global step (named in the message).
        batch: the batch being processed; its keys and sequence ids are named in the message.
    """
    for name, tensor in _tensors(value, what):
        if tensor.is_floating_point() or tensor.is_complex():
            finite = torch.isfinite(tensor.detach())
            if not bool(finite.all()):
                n_nan = int(torch.isnan(tensor.detach()).sum())
                n_bad = int((~finite).sum())
                raise NonFiniteError(
                    f"non-finite {name} at step {step} ({describe_batch(batch)}): {n_nan} NaN and "
                    f"{n_bad - n_nan} infinite of {tensor.numel()} values. Training stopped rather than "
                    "continue on NaN; try a lower learning rate, a longer occlusion warm-up "
                    "(occlusion_warmup_steps), or check the input frames of these sequences."
                )
