"""Export of one streaming step (TorchScript / ONNX): the exported step's host loop equals streaming."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_RESTORER

from s2svr_lightning.restore import main
from s2svr_lightning.restore.export import StreamingStep, run_exported_step
from s2svr_lightning.restore.stream import StreamingRestorer


def test_exported_step_reproduces_streaming(
    tmp_path, restorer_ckpt, restorer_net, moving_photo, write_frames
):
    lq = moving_photo(4, 16, 24)
    frames = torch.from_numpy(lq).permute(0, 3, 1, 2).float() / 255
    src = write_frames(tmp_path / "lq", lq)
    path = tmp_path / "step.pt"
    assert main(["--ckpt", str(restorer_ckpt), str(src), str(path), "--export", "torchscript"]) == 0
    step = torch.jit.load(str(path))
    layers, radius = len(restorer_net.encoder), restorer_net.radius
    for n in (1, 4):  # a clip shorter than the attention window, and a longer one
        with torch.inference_mode():
            want = torch.stack(list(StreamingRestorer(restorer_net).restore(frames[:n])))
            got = run_exported_step(step, list(frames[:n]), layers=layers, radius=radius, channels=8, scale=4)
            got = torch.stack(list(got))
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5)


def test_streaming_step_refuses_a_bidirectional_net():
    from s2svr_lightning.models import build_model

    with pytest.raises(ValueError, match="causal"):
        StreamingStep(build_model("s2svr_deblur", **TINY_RESTORER, bidirectional_first_layer=True))


def test_onnx_export_without_the_onnx_packages_says_what_to_install(
    tmp_path, restorer_ckpt, capsys, moving_photo, write_frames, monkeypatch
):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "onnxscript" else find_spec(name)
    )
    src = write_frames(tmp_path / "lq", moving_photo(1, 16, 24))
    assert (
        main(["--ckpt", str(restorer_ckpt), str(src), str(tmp_path / "step.onnx"), "--export", "onnx"]) == 2
    )
    err = capsys.readouterr().err
    assert "onnxscript for --export onnx" in err and "pip install 's2svr-lightning[onnx]'" in err
    assert not (tmp_path / "step.onnx").exists()


def test_torch_export_step_reproduces_streaming_and_leaves_eager_runs_alone(
    tmp_path, restorer_ckpt, restorer_net, moving_photo, write_frames
):
    lq = moving_photo(3, 16, 24)
    frames = torch.from_numpy(lq).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        before = torch.stack(list(StreamingRestorer(restorer_net).restore(frames)))
    src = write_frames(tmp_path / "lq", lq)
    path = tmp_path / "step.pt2"
    assert main(["--ckpt", str(restorer_ckpt), str(src), str(path), "--export", "pt2"]) == 0
    step = torch.export.load(str(path)).module()
    layers, radius = len(restorer_net.encoder), restorer_net.radius
    with torch.inference_mode():
        got = torch.stack(
            list(run_exported_step(step, list(frames), layers=layers, radius=radius, channels=8, scale=4))
        )
        after = torch.stack(list(StreamingRestorer(restorer_net).restore(frames)))
    assert torch.allclose(got, before, atol=1e-5)
    # tracing must not leave fake tensors in flow_warp's grid cache for later eager runs
    assert type(after) is torch.Tensor and torch.equal(after, before)


def test_onnx_step_under_onnx_runtime_equals_the_eager_step(tmp_path, restorer_net):
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module, reason="the onnx extra")
    from s2svr_lightning.restore.export import OnnxStep, export_step

    path = export_step(restorer_net, tmp_path / "step.onnx", size=(16, 24), fmt="onnx")
    frames = torch.rand(3, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    layers, radius = len(restorer_net.encoder), restorer_net.radius
    with torch.inference_mode():
        want = torch.stack(list(StreamingRestorer(restorer_net).restore(frames)))
    got = run_exported_step(OnnxStep(path), list(frames), layers=layers, radius=radius, channels=8, scale=4)
    assert torch.allclose(torch.stack(list(got)), want, atol=1e-4)


def test_onnx_runtime_runner_feeds_inputs_in_order_and_returns_tensors(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from s2svr_lightning.restore.export import OnnxStep

    # out = a - b, sum = a + b: a swapped feed would change the first output's sign
    graph = helper.make_graph(
        [helper.make_node("Sub", ["a", "b"], ["out"]), helper.make_node("Add", ["a", "b"], ["sum"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in ("out", "sum")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "g.onnx"))
    step = OnnxStep(tmp_path / "g.onnx")
    out, total = step(torch.tensor([[3.0, 5.0]]), torch.tensor([[1.0, 1.0]]))
    assert isinstance(out, torch.Tensor) and out.tolist() == [[2.0, 4.0]] and total.tolist() == [[4.0, 6.0]]
    with pytest.raises(ValueError, match="expected 2 input tensors"):
        step(torch.zeros(1, 2))
