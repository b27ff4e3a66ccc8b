"""torch.compile of the restorer's recurrent layers: the same training step as eager, and one clear line
with eager execution wherever compilation is impossible.

The compiled path is tested with the ``aot_eager`` backend: it traces the same graphs through Dynamo and
AOTAutograd (forward and backward) as inductor but runs them with eager kernels. Inductor itself took 75 s
to compile an 8-channel restorer's training step on a 2-core CPU, too slow for the suite;
``benchmarks/train_step.py`` covers it at the recipe sizes (its ``compiled`` rows).
"""

from __future__ import annotations

import pytest
import torch

from s2svr_lightning.compilation import PREFIX, compile_restorer
from s2svr_lightning.models import s2svr_deblur

TINY = {"channels": 8, "num_blocks": 1, "num_layers": 2}


def _step(net, x, target):
    """Loss and gradients of one training step."""
    net.zero_grad()
    loss = (net(x) - target).abs().mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in net.parameters()]


def _pair(checkpointing="none"):
    torch.manual_seed(0)
    eager = s2svr_deblur(**TINY, checkpointing=checkpointing).train()
    compiled = s2svr_deblur(**TINY, checkpointing=checkpointing).train()
    compiled.load_state_dict(eager.state_dict())
    g = torch.Generator().manual_seed(1)
    x, target = torch.rand(1, 3, 3, 32, 32, generator=g), torch.rand(1, 3, 3, 32, 32, generator=g)
    return eager, compiled, x, target


@pytest.mark.parametrize("checkpointing", ["none", "step"])
def test_compiled_training_step_equals_eager(checkpointing, capsys):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # compile afresh: the counters below then see this test's graphs
    counters.clear()
    eager, compiled, x, target = _pair(checkpointing)
    handle = compile_restorer(compiled, backend="aot_eager")
    assert handle is not None and handle.failed is None
    assert compile_restorer(compiled, backend="aot_eager") is handle  # once per net
    loss, grads = _step(eager, x, target)
    for _ in range(2):  # the second step runs the cached graphs
        loss_c, grads_c = _step(compiled, x, target)
        torch.testing.assert_close(loss_c, loss, rtol=1e-6, atol=0)
        for a, b in zip(grads_c, grads):
            # the traced graph evaluates the gates' arithmetic in another order: float rounding
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))
    assert handle.failed is None and PREFIX not in capsys.readouterr().err
    # the layers really ran compiled: one graph each for the first encoder layer (3 input channels) and
    # the others, with and without a previous state
    assert counters["stats"]["unique_graphs"] == 4


def test_impossible_compilation_says_so_in_one_line_and_runs_eagerly(monkeypatch, capsys):
    eager, compiled, x, target = _pair()

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this platform\nsecond line")

    monkeypatch.setattr(torch, "compile", no_compiler)
    handle = compile_restorer(compiled)
    assert handle.failed == "RuntimeError: Dynamo is not supported on this platform"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{PREFIX} is not available here ({handle.failed}); running eagerly"]
    assert torch.equal(_step(compiled, x, target)[0], _step(eager, x, target)[0])


def test_a_compiler_error_at_the_first_call_falls_back_once(monkeypatch, capsys):
    eager, compiled, x, target = _pair()
    calls = []

    def failing_compile(fn, **kwargs):
        def run(*args):
            calls.append(1)
            raise torch._dynamo.exc.InternalTorchDynamoError("InvalidCxxCompiler: no working C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    handle = compile_restorer(compiled)
    loss_c, grads_c = _step(compiled, x, target)
    loss, grads = _step(eager, x, target)
    assert torch.equal(loss_c, loss) and all(torch.equal(a, b) for a, b in zip(grads_c, grads))
    _step(compiled, x, target)
    assert len(calls) == 1  # eager for good after the first failure
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{PREFIX} failed (InternalTorchDynamoError: InvalidCxx")
    assert err[0].endswith("; running eagerly") and handle.failed is not None


def test_an_error_of_the_input_is_raised_as_eager_raises_it(monkeypatch, capsys):
    _, compiled, _, _ = _pair()

    def failing_compile(fn, **kwargs):
        def run(*args):
            raise torch._dynamo.exc.TorchRuntimeError("shape mismatch while tracing")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    compile_restorer(compiled)
    layer = compiled.encoder[1]
    with pytest.raises(RuntimeError, match="channels"):  # conv's own message, not the compiler's
        layer(None, torch.rand(1, 5, 16, 16))
    assert PREFIX not in capsys.readouterr().err


def test_compile_rejects_a_network_without_recurrent_layers():
    with pytest.raises(ValueError, match="expected a network with ResConvGRU layers, got Linear"):
        compile_restorer(torch.nn.Linear(2, 2))
