"""``torch.compile`` for S2SVR's recurrent layers, with one clear line and eager execution where it cannot.

S2SVR's forward is a Python loop over time (and over the 81 offsets of PWC-Lite's correlation), so
compiling the whole forward or a whole step unrolls every frame and every offset into one graph: on a
2-core CPU, inductor had not finished compiling the step functions of an 8-channel net after 12 minutes.
Almost all of the restorer's work is in its ResConvGRU layers (the GRU's three convs and the residual
blocks: 95 % of the activations of a deblurring step), and every layer of a network has the same code,
so :func:`compile_restorer` compiles ``ResConvGRU.forward`` once, shared by the encoder's and the
decoder's layers: four graphs per input size (the first encoder layer reads 3 channels, and a first
step has no state yet). Inductor fuses the gates' and the blocks' elementwise work around the convs.
The flow net, the warps and the attention stay eager.

Where compilation is impossible (Dynamo unsupported on this Python or platform, no C++ compiler for
inductor on CPU, an error inside the compiler), :func:`compile_restorer` prints one line naming the
reason and the network runs eagerly, with the same results. An error that eager execution raises too
is the input's, not the compiler's, and is raised as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from .models.convgru import ResConvGRU
from .utils import say

__all__ = ["CompiledLayers", "compile_restorer"]

PREFIX = "s2svr-lightning: torch.compile"


def _falls_back(message: str) -> None:
    say(f"{PREFIX} {message}; running eagerly")


def _compiler_errors() -> tuple[type[BaseException], ...]:
    """What a failing compilation raises: Dynamo's errors (which wrap the backend's) and inductor's own.
    Other exceptions pass through untouched (activation checkpointing stops its recomputation with one)."""
    errors: list[type[BaseException]] = [torch._dynamo.exc.TorchDynamoException]
    try:
        from torch._inductor import exc as inductor_exc

        errors += [
            getattr(inductor_exc, n)
            for n in ("CppCompileError", "InvalidCxxCompiler")
            if hasattr(inductor_exc, n)
        ]
    except ImportError:
        pass
    return tuple(errors)


def _backward_now() -> AbstractContextManager:
    """Compile the backward graph with the forward one (AOTAutograd defers it to the first backward
    pass, where a failing compiler would raise inside ``loss.backward()``, out of reach of the fallback)."""
    config = getattr(torch._functorch, "config", None)
    if config is None or not hasattr(config, "force_non_lazy_backward_lowering"):
        return nullcontext()
    return config.patch(force_non_lazy_backward_lowering=True)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).strip().split("\n")[0].split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


class CompiledLayers:
    """The compiled ``ResConvGRU.forward`` shared by a network's layers, and its fallback to eager.

    Calls go to the compiled function while ``enabled`` and while no compilation has failed; the first
    failure prints one line and switches every layer to eager for good.

    Args:
        backend: the ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` traces and runs the
            same graphs without generating code).
        training_only: compiled calls only in training mode (validation at other sizes would compile
            graphs that training never reuses); eager in eval mode.
    """

    def __init__(self, *, backend: str = "inductor", training_only: bool = False) -> None:
        self.backend = backend
        self.training_only = training_only
        self.failed: str | None = None
        self._errors = _compiler_errors()
        try:
            # dynamic=False: one graph per shape; the layers' shapes do not change during a run
            self._compiled = torch.compile(ResConvGRU.forward, backend=backend, dynamic=False)
        except Exception as err:  # unsupported Python / platform, unknown backend
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        self.failed = _one_line(err)
        _falls_back(f"is not available here ({self.failed})")

    def __call__(self, layer: ResConvGRU, h_prev: torch.Tensor | None, x: torch.Tensor) -> Any:
        if self.failed is not None or (self.training_only and not layer.training):
            return ResConvGRU.forward(layer, h_prev, x)
        try:
            with _backward_now():
                return self._compiled(layer, h_prev, x)
        except self._errors as err:
            # the same call eagerly: if it fails too, the error is the input's and is raised as it is
            out = ResConvGRU.forward(layer, h_prev, x)
            self.failed = _one_line(err)
            _falls_back(f"failed ({self.failed})")
            return out


def _bind(layer: ResConvGRU, compiled: CompiledLayers) -> Callable[..., Any]:
    def forward(h_prev: torch.Tensor | None, x: torch.Tensor) -> Any:
        return compiled(layer, h_prev, x)

    forward.s2svr_compiled = compiled  # type: ignore[attr-defined]
    return forward


def compile_restorer(
    net: nn.Module, *, backend: str = "inductor", training_only: bool = False
) -> CompiledLayers | None:
    """Compile every :class:`~s2svr_lightning.models.ResConvGRU` layer of ``net`` in place.

    The layers' ``forward`` becomes the shared compiled function (lazily compiled at the first call,
    for each new input shape); parameters, state dict and results are unchanged. Returns the
    :class:`CompiledLayers` (its ``failed`` says whether compilation fell back to eager), or None when
    Dynamo cannot run here at all (one line says so). Calling it again on the same net is a no-op.
    """
    layers = [m for m in net.modules() if isinstance(m, ResConvGRU)]
    if not layers:
        raise ValueError(f"expected a network with ResConvGRU layers, got {type(net).__name__}")
    bound = getattr(layers[0].__dict__.get("forward"), "s2svr_compiled", None)
    if bound is not None:
        return bound
    if not torch._dynamo.is_dynamo_supported():
        where = f"Python {sys.version.split()[0]} on {sys.platform}"
        _falls_back(f"is not supported with torch {torch.__version__} on {where}")
        return None
    compiled = CompiledLayers(backend=backend, training_only=training_only)
    if compiled.failed is not None:
        return compiled
    for layer in layers:
        layer.forward = _bind(layer, compiled)  # an instance attribute: nn.Module.__call__ finds it first
    return compiled
