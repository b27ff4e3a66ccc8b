"""Export one streaming step of a restorer for deployment (torch.export, TorchScript, ONNX), and its
host loop.

:class:`StreamingStep` is one call of the streaming loop of :mod:`s2svr_lightning.restore.stream` as a pure
function of tensors, so that a traced graph with fixed shapes serves every frame of a video;
:func:`export_step` traces it at one LQ frame size; :func:`run_exported_step` is the reference host loop
that carries the states and keeps the attention window (the same
:class:`~s2svr_lightning.restore.stream.LatentWindow` the streaming restorer keeps). Its outputs equal the
streaming restorer's to float rounding.

Formats: ``"pt2"`` is ``torch.export`` (``torch.export.load(path).module()`` runs it; the graph that
PyTorch's current compilers and exporters start from); ``"onnx"`` goes through PyTorch's current ONNX
exporter (``dynamo=True``, which needs ``onnx`` and ``onnxscript``: the TorchScript-based exporter used
before cannot export PWC-Lite's adaptive average pooling, so it never wrote a file for these networks);
``"torchscript"`` is a traced module. :class:`OnnxStep` runs an ONNX step with ONNX Runtime (the ``onnx``
extra: ``pip install 's2svr-lightning[onnx]'``) behind the same call as the others, so
:func:`run_exported_step` drives any of them.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .window import LatentWindow

__all__ = ["FORMATS", "OnnxStep", "StreamingStep", "export_step", "run_exported_step"]

FORMATS = ("pt2", "onnx", "torchscript")


class StreamingStep(torch.nn.Module):
    """One call of the streaming loop as a pure function of tensors, for TorchScript / ONNX export.

    A call encodes the new frame t and decodes frame ``i = t - r - 1``, whose window ``z_{i-r} .. z_{i+r}``
    was completed by the previous calls (one frame more latency than :class:`StreamingRestorer`, so that
    the two halves are independent and one graph serves every call). It runs the network's own step
    functions (``pair_flows``, ``encode_step``, ``align_window``, ``decode_step``). The host keeps the
    carried tensors; :func:`run_exported_step` is the reference host loop. Sequence starts and ends are
    expressed with tensors only: zero states and ``has_prev = 0`` (zero flows) for the first frame;
    missing neighbours of the window given as the nearest available latent with a zero flow (which is
    what :meth:`S2SVR.align_window` repeats); a dummy frame for the encoder half during the last calls.

    Inputs (``C`` channels, ``L`` layers, ``r`` radius, frames ``(1, 3, h, w)``, features ``(1, C, h, w)``,
    flows ``(1, 2, h, w)``), flat in this order:
        ``x_t``, ``x_prev``, ``has_prev (1,)``, L encoder states, ``x_i``, ``o_i`` (``o_j`` = flow
        j -> j-1, zeros for i = 0), 2r+1 latents ``z_{i-r}..z_{i+r}``, r past flows ``o_i, o_{i-1}, ...``,
        r future flows ``F_{i->i+1}, ...``, L decoder states, ``y_prev (1, 3, s*h, s*w)``.
    Outputs:
        ``z_t``, ``o_t``, ``F_{t-1->t}``, ``base(x_t)``, L encoder states, ``y_i``, L decoder states.
    """

    def __init__(self, net) -> None:
        super().__init__()
        if net.bidirectional_first_layer:
            raise ValueError("expected a causal network, got bidirectional_first_layer=True (not streamable)")
        self.net = net
        self.layers = len(net.encoder)
        self.radius = net.radius

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        L, r = self.layers, self.radius
        expected = 3 + L + 2 + (2 * r + 1) + 2 * r + L + 1
        if len(inputs) != expected:
            raise ValueError(f"expected {expected} input tensors, got {len(inputs)}")
        x_t, x_prev, has_prev = inputs[0], inputs[1], inputs[2]
        k = 3
        enc_states = list(inputs[k : k + L])
        k += L
        x_i, o_i = inputs[k], inputs[k + 1]
        k += 2
        latents = list(inputs[k : k + 2 * r + 1])
        k += 2 * r + 1
        past_flows = list(inputs[k : k + r])
        k += r
        future_flows = list(inputs[k : k + r])
        k += r
        dec_states = list(inputs[k : k + L])
        y_prev = inputs[k + L]

        net = self.net
        gate = has_prev.reshape(1, 1, 1, 1)
        to_prev, to_next = net.pair_flows(x_t, x_prev)
        to_prev, to_next = to_prev * gate, to_next * gate
        z_t, new_enc = net.encode_step(x_t, enc_states, to_prev)
        past = [(latents[r - 1 - j], past_flows[j]) for j in range(r)]
        future = [(latents[r + 1 + j], future_flows[j]) for j in range(r)]
        window = net.align_window(latents[r], past, future)
        y_i, new_dec = net.decode_step(x_i, window, dec_states, y_prev, o_i)
        return (z_t, to_prev, to_next, net.base(x_t), *new_enc, y_i, *new_dec)


def _example_step_inputs(net, h: int, w: int) -> tuple[torch.Tensor, ...]:
    c, L, r, s = net.channels, len(net.encoder), net.radius, net.scale
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    return (
        rand(1, 3, h, w),
        rand(1, 3, h, w),
        torch.ones(1),
        *[rand(1, c, h, w) for _ in range(L)],
        rand(1, 3, h, w),
        torch.zeros(1, 2, h, w),
        *[rand(1, c, h, w) for _ in range(2 * r + 1)],
        *[torch.zeros(1, 2, h, w) for _ in range(2 * r)],
        *[rand(1, c, h, w) for _ in range(L)],
        rand(1, 3, s * h, s * w),
    )


def export_step(net, path: str | os.PathLike, *, size: tuple[int, int], fmt: str = "torchscript") -> Path:
    """Write :class:`StreamingStep` of ``net`` for frames of ``size = (h, w)`` (LQ) to ``path``.

    ``fmt`` is ``"pt2"`` (``torch.export``; ``torch.export.load``), ``"torchscript"`` (a traced module,
    ``torch.jit.load``) or ``"onnx"`` (opset 18, ``torch.onnx.export(dynamo=True)``: needs ``onnx`` and
    ``onnxscript``). The graph is traced at
    this frame size; export again for another size.
    """
    if fmt not in FORMATS:
        raise ValueError(f"expected fmt in {FORMATS}, got {fmt!r}")
    step = StreamingStep(net.float().eval())
    example = _example_step_inputs(net, *size)
    path = Path(path)
    if fmt == "pt2":
        with torch.no_grad():
            exported = torch.export.export(step, example, strict=False)
        torch.export.save(exported, str(path))
        return path
    with torch.no_grad(), warnings.catch_warnings():
        # the size checks in the models become constants of the trace: that is what "traced at this
        # frame size" means, so the tracer's warnings about them say nothing new
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if fmt == "torchscript":
            traced = torch.jit.trace(step, example, check_trace=False)
            torch.jit.save(traced, str(path))
        elif fmt == "onnx":
            missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
            if missing:  # the TorchScript-based exporter cannot export PWC-Lite's adaptive pooling
                raise ValueError(
                    f"expected {' and '.join(missing)} for --export onnx (torch.onnx.export(dynamo=True)): "
                    "pip install 's2svr-lightning[onnx]'"
                )
            L, r = len(net.encoder), net.radius
            names = [
                "x_t",
                "x_prev",
                "has_prev",
                *[f"enc_state_{k}" for k in range(L)],
                "x_i",
                "flow_i_to_prev",
            ]
            names += [f"latent_{k}" for k in range(2 * r + 1)] + [f"past_flow_{k}" for k in range(r)]
            names += (
                [f"future_flow_{k}" for k in range(r)] + [f"dec_state_{k}" for k in range(L)] + ["y_prev"]
            )
            outs = [
                "z_t",
                "flow_to_prev",
                "flow_prev_to_t",
                "base_t",
                *[f"new_enc_state_{k}" for k in range(L)],
            ]
            outs += ["y_i", *[f"new_dec_state_{k}" for k in range(L)]]
            program = torch.onnx.export(
                step, example, input_names=names, output_names=outs, opset_version=18, dynamo=True
            )
            program.save(str(path))
    return path


class OnnxStep:
    """An exported ONNX step run by ONNX Runtime, called as :class:`StreamingStep` is (tensors in, a tuple
    of tensors out), so :func:`run_exported_step` drives it. CPU unless ``providers`` says otherwise."""

    def __init__(
        self, path: str | os.PathLike, *, providers: Sequence[str] = ("CPUExecutionProvider",)
    ) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise ValueError(
                "expected onnxruntime to run an ONNX step: pip install 's2svr-lightning[onnx]'"
            ) from err
        self.session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(tensors) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} input tensors, got {len(tensors)}")
        feed = {name: t.detach().cpu().float().numpy() for name, t in zip(self.inputs, tensors)}
        return tuple(torch.from_numpy(out) for out in self.session.run(None, feed))


def run_exported_step(
    step, frames: Sequence[torch.Tensor], *, layers: int, radius: int, channels: int, scale: int
) -> Iterator[torch.Tensor]:
    """Reference host loop for an exported :class:`StreamingStep`: yields ``(3, s*h, s*w)`` outputs in order.

    ``step`` is any callable with the step's signature (the module, a ``torch.jit.load``-ed one, or an ONNX
    session wrapped to take and return tensors). Holds only the window's tensors, as the restorer does.
    """
    L, r = layers, radius
    n = len(frames)
    frames = [f.reshape(1, *f.shape[-3:]).float() for f in frames]
    h, w = frames[0].shape[-2:]
    zeros_state = torch.zeros(1, channels, h, w)
    zero_flow = torch.zeros(1, 2, h, w)
    window = LatentWindow(r)
    enc = [zeros_state] * L
    dec: list[torch.Tensor] = [zeros_state] * L
    y_prev = torch.zeros(1, 3, scale * h, scale * w)
    for call in range(n + r + 1):
        t = min(call, n - 1)
        x_t = frames[t]
        x_prev = frames[t - 1] if 0 < call < n else x_t
        has_prev = torch.ones(1) if 0 < call < n else torch.zeros(1)
        i = call - r - 1  # the frame this call decodes: its window z_{i-r} .. z_{i+r} is complete
        decoding = 0 <= i < n
        if decoding:
            latents, past, future = window.padded(i, n - 1, zero_flow)
            x_i, o_i = frames[i], window.to_prev.get(i, zero_flow)
        else:
            latents, past, future = [zeros_state] * (2 * r + 1), [zero_flow] * r, [zero_flow] * r
            x_i, o_i = x_t, zero_flow
        out = step(x_t, x_prev, has_prev, *enc, x_i, o_i, *latents, *past, *future, *dec, y_prev)
        z_t, o_t, f_t, base_t = out[:4]
        new_enc, y_i, new_dec = list(out[4 : 4 + L]), out[4 + L], list(out[5 + L : 5 + 2 * L])
        if call < n:
            window.add(t, z_t, (o_t, f_t) if t > 0 else None)
            enc = new_enc
            if t == 0:  # decoder start: the encoder's states after frame 0, y_0 = base(x_0)
                dec, y_prev = list(new_enc), base_t
        if decoding:
            dec, y_prev = new_dec, y_i
            yield y_i[0]
            window.forget(i, t)
