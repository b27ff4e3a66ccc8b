"""The checkpoints of the three stages, read without Lightning.

Each stage's LightningModule stamps its checkpoint with ``s2svr_kind`` (``"teacher"``, ``"student"`` or
``"restorer"``) next to Lightning's ``state_dict`` and ``hyper_parameters``. The hyperparameters are plain
data, so a checkpoint loads with ``torch.load(weights_only=True)``: tensors and containers only, no code
from an unknown file. This module reads a checkpoint (clear errors for a missing, corrupt or foreign
file), checks its kind, takes a sub-network's weights out of it by prefix (``flownet.``, ``teacher.``,
``net.``), and rebuilds a restorer's network and :class:`~s2svr_lightning.task.Task` from the builder name
and overrides it stores -- which is what ``restore`` needs, and why it never imports Lightning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .task import Task

__all__ = [
    "CHECKPOINT_KINDS",
    "check_kind",
    "load_restorer",
    "peek",
    "read_checkpoint",
    "restorer_task",
    "sub_state_dict",
]

CHECKPOINT_KINDS = ("teacher", "student", "restorer")

# what to use instead, when a checkpoint of another stage is given
_WHERE = {
    "teacher": "the teacher stage's checkpoint (<run dir>/teacher/checkpoints/final.ckpt)",
    "student": "the student stage's checkpoint (<run dir>/student/checkpoints/final.ckpt)",
    "restorer": "the restorer stage's checkpoint (<run dir>/restorer/checkpoints/final.ckpt)",
}


def read_checkpoint(
    path: str | os.PathLike, *, kind: str | tuple[str, ...] | None = None, what: str = "checkpoint"
) -> dict[str, Any]:
    """Load a checkpoint file to a dict on the CPU.

    Args:
        path: the ``.ckpt`` file.
        kind: the ``s2svr_kind`` (or kinds) it must have; ``None`` accepts any file of dict type.
        what: how messages name the file (``"teacher checkpoint"``, ...).

    Raises:
        FileNotFoundError: no such file (the message says which stage's checkpoint was expected).
        ValueError: not readable as a checkpoint, not a dict, or of another kind (see :func:`check_kind`).
    """
    path = Path(path)
    if not path.is_file():
        kinds = (kind,) if isinstance(kind, str) else tuple(kind or ())
        expected = f" (expected {_WHERE[kinds[0]]})" if kinds and kinds[0] in _WHERE else ""
        raise FileNotFoundError(f"{what} {path} does not exist{expected}")
    try:
        # weights_only: tensors and plain containers only, no arbitrary code from an unknown file
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types (UnpicklingError, RuntimeError, EOFError, ...)
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"expected a Lightning checkpoint (a dict) in {path}, got {type(ckpt).__name__}")
    if kind is not None:
        check_kind(ckpt, kind, path)
    return ckpt


def peek(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at ``path``, memory-mapped: reading its small entries (``s2svr_kind``,
    ``global_step``, the callbacks' states) does not read the weights. Any error is :func:`torch.load`'s
    (use :func:`read_checkpoint` for one-line messages and the kind check)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def check_kind(ckpt: Mapping[str, Any], kind: str | tuple[str, ...], path: str | os.PathLike) -> str:
    """The checkpoint's ``s2svr_kind``; ``ValueError`` (with what to pass instead) unless it is ``kind``
    or one of ``kind``."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    found = ckpt.get("s2svr_kind")
    if found in kinds:
        return str(found)
    wanted = " or ".join(kinds)
    quoted = " or ".join(repr(k) for k in kinds)
    hint = ""
    if "restorer" in kinds and found in ("teacher", "student"):
        hint = f": {path} is a {found} optical-flow checkpoint; restore needs {_WHERE['restorer']}"
    elif found in CHECKPOINT_KINDS:
        hint = f": {path} is the {found} stage's; pass {_WHERE[kinds[0]]}"
    raise ValueError(
        f"expected a {wanted} checkpoint (s2svr_kind {quoted}) in {path}, got s2svr_kind={found!r}{hint}"
    )


def sub_state_dict(
    ckpt: Mapping[str, Any], prefix: str, *, path: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """The weights under ``prefix`` (``"flownet."``, ``"net."``, ``"teacher."``) with the prefix removed.

    ``ckpt`` is a checkpoint (its ``state_dict`` is used) or a state dict. With ``path`` given, finding no
    such weights is a ``ValueError`` naming the file; without it, an empty dict is returned.
    """
    state = ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), Mapping) else ckpt
    out = {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    if not out and path is not None:
        raise ValueError(f"expected {prefix}* weights in {path}, found none")
    return out


def restorer_task(hparams: Mapping[str, Any], *, path: str | os.PathLike | None = None) -> Task:
    """The :class:`Task` a restorer's hyperparameters describe (``kind``, ``scale``, ``degradation``,
    ``metrics``: what :class:`~s2svr_lightning.lit.RestorerModule` stores)."""
    try:
        return Task.create(
            hparams.get("kind"),
            scale=hparams.get("scale"),
            degradation=hparams.get("degradation"),
            metrics=hparams.get("metrics"),
        )
    except ValueError as err:
        where = f" in {path}" if path is not None else ""
        raise ValueError(f"{err}{where}") from None


def load_restorer(path: str | os.PathLike, *, map_location: str | torch.device = "cpu"):
    """Build the restoration network of a restorer checkpoint, with its task (no Lightning import).

    Returns:
        ``(net, task)``: the :class:`~s2svr_lightning.models.S2SVR` in eval mode and its :class:`Task`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint, not a restorer's (a teacher or student flow checkpoint), or weights
            that do not fit the network its hyperparameters describe.
    """
    from .models import FlowSpec, build_model

    ckpt = read_checkpoint(path, kind="restorer")
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or "model" not in hparams:
        raise ValueError(f"expected the restorer's hyper_parameters (model, kind, ...) in {path}, got none")
    task = restorer_task(hparams, path=path)
    flow = FlowSpec.from_checkpoint(ckpt)
    net = build_model(
        str(hparams["model"]),
        **dict(hparams.get("model_overrides") or {}),
        flownet=flow.build(),
        flow_input=flow.flow_input,
    )
    if int(net.scale) != task.scale:
        raise ValueError(f"expected a network of scale {task.scale} in {path}, got {net.scale}")
    try:
        net.load_state_dict(sub_state_dict(ckpt, "net.", path=path), strict=True)
    except RuntimeError as err:
        raise ValueError(f"expected weights of the network {hparams['model']} in {path}: {err}") from err
    return net.to(map_location).eval(), task
