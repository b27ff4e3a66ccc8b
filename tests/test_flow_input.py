"""The flow-input rule: one rule for the student, the restorer and the streaming restorer, carried in
checkpoints with every flow-net option."""

from __future__ import annotations

import pytest
import torch

from s2svr_lightning.lit import StudentFlowModule
from s2svr_lightning.lit.restorer import RestorerModule
from s2svr_lightning.models import FlowInput, build_model
from s2svr_lightning.models.warp import flow_warp
from s2svr_lightning.restore.stream import StreamingRestorer

TINY = {"channels": 8, "num_blocks": 1, "num_layers": 1}


def _student_ckpt(tmp_path, *, name="student.ckpt", **kwargs) -> tuple[StudentFlowModule, str]:
    """A (random, kaiming-initialised with non-zero predictors) student saved as the stage saves it."""
    torch.manual_seed(0)
    student = StudentFlowModule(w_dis=0.0, init_from_teacher=False, scale=4, **kwargs)
    with torch.no_grad():  # a flow net that predicts something: perturb every weight
        for p in student.flownet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    checkpoint = {"state_dict": student.state_dict(), "hyper_parameters": dict(student.hparams)}
    student.on_save_checkpoint(checkpoint)
    path = tmp_path / name
    torch.save(checkpoint, path)
    return student.eval(), str(path)


def _clip(frames: int = 3, size: int = 16) -> torch.Tensor:
    """A textured LQ clip (1, T, 3, size, size) panned by one pixel per frame."""
    g = torch.Generator().manual_seed(1)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12, generator=g), size=(size, size))
    shift = torch.zeros(1, 2, size, size)
    shift[:, 0] = 1.0
    clip = [base]
    for _ in range(frames - 1):
        clip.append(flow_warp(clip[-1], shift, padding_mode="border"))
    return torch.stack(clip, dim=1).clamp(0, 1)


def test_flow_input_specs_sizes_and_storage():
    assert FlowInput.create("hq", scale=4) == FlowInput("scale", factor=4)
    assert FlowInput.create("hq", scale=1) == FlowInput("native")  # one spelling per rule
    assert FlowInput.create([256, 256]) == FlowInput.create("256x256") == FlowInput("fixed", size=(256, 256))
    for rule in (FlowInput("native"), FlowInput("scale", factor=4), FlowInput("fixed", size=(32, 48))):
        assert FlowInput.create(rule.to_dict()) == rule
    assert FlowInput.create("hq", scale=4).flow_size(16, 20) == (64, 80)
    assert FlowInput.create((32, 48)).flow_size(16, 20) == (32, 48)
    with pytest.raises(ValueError, match="expected a flow input 'hq', 'native'"):
        FlowInput.create("bicubic")
    with pytest.raises(ValueError, match="fixed flow size"):
        FlowInput.create([8, 8])


def test_flow_input_scales_the_flow_values_back_to_the_lq_grid():
    rule = FlowInput.create("hq", scale=4)

    class Constant(torch.nn.Module):
        def forward(self, im1, im2, *, with_backward=False):
            assert im1.shape[-2:] == (64, 80)  # it reads the HQ size
            flow = torch.zeros(im1.shape[0], 2, *im1.shape[-2:])
            flow[:, 0] = 8.0  # 8 HQ px = 2 LQ px
            return (flow, -flow) if with_backward else flow

    im = torch.rand(2, 3, 16, 20)
    to2, to1 = rule(Constant(), im, im, with_backward=True)
    assert to2.shape == (2, 2, 16, 20)
    assert torch.allclose(to2[:, 0], torch.full((2, 16, 20), 2.0))
    assert torch.allclose(to2[:, 1], torch.zeros(1))
    assert torch.allclose(to1, -to2)
    assert torch.allclose(FlowInput.resize(to2, (64, 80))[:, 0], torch.full((2, 64, 80), 8.0))


def test_student_restorer_and_stream_compute_the_same_flow(tmp_path):
    """One rule: the student (its validation view), the restorer's S2SVR.pair_flows and the streaming
    restorer give the same LQ flow for the same pair; the restorer takes the student's rule and options."""
    student, path = _student_ckpt(tmp_path, flownet_overrides={"min_level_size": 8})
    clip = _clip()
    expected = student.predict_pairs(clip)  # flows t -> t+1 at the LQ size, (T - 1, 2, 16, 16)
    assert expected.abs().max() > 0.05  # the flow net predicts motion: the comparison means something

    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY, flow_init=path)
    module.load_flownet(path)
    assert module.net.flownet.min_level_size == 8  # the student's option came with its weights
    assert module.net.flow_input == FlowInput.create("hq", scale=4)
    net = module.net.eval()
    with torch.no_grad():
        _, to_next = net.pair_flows(clip[:, 1:].flatten(0, 1), clip[:, :-1].flatten(0, 1))
    assert torch.allclose(to_next, expected, atol=1e-5)

    recorded = []
    pair_flows = net.pair_flows
    net.pair_flows = lambda x_t, x_prev: recorded.append(pair_flows(x_t, x_prev)) or recorded[-1]
    stream = StreamingRestorer(net, device="cpu")
    list(stream.restore(clip[0]))
    assert len(recorded) == 2
    streamed = torch.cat([flows[1] for flows in recorded]).contiguous()
    assert torch.allclose(streamed, expected, rtol=1e-4, atol=1e-4)  # channels_last: rounding only


def test_a_checkpoint_refuses_another_rule_unless_overridden(tmp_path):
    student, path = _student_ckpt(tmp_path, flow_input="hq")
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY, flow_init=path, flow_input="native")
    with pytest.raises(ValueError, match=r"flow-input rule native, got one trained under x4 \(HQ size\)"):
        module.load_flownet(path)
    forced = RestorerModule(
        model="s2svr_vsr", model_overrides=TINY, flow_init=path, flow_input="native", flow_input_override=True
    )
    forced.load_flownet(path)
    assert forced.net.flow_input == FlowInput("native")
    # a student trained under a fixed size passes it on as well
    _, fixed = _student_ckpt(tmp_path, name="fixed.ckpt", flow_input=[32, 32])
    assert RestorerModule(model="s2svr_vsr", model_overrides=TINY, flow_init=fixed).net.flow_input == (
        FlowInput("fixed", size=(32, 32))
    )


def test_flow_net_options_travel_with_the_weights(tmp_path):
    """The bug: a min_level_size=8 student loaded into a default PWC-Lite without a word."""
    _, path = _student_ckpt(tmp_path, flownet_overrides={"min_level_size": 8})
    explicit = RestorerModule(model="s2svr_vsr", model_overrides=TINY, flow_init=path, flownet_overrides={})
    with pytest.raises(ValueError, match=r"differing: \['min_level_size'\]"):
        explicit.load_flownet(path)
    # equal options spelled differently are the same flow net
    _, plain = _student_ckpt(tmp_path, name="plain.ckpt")
    same = RestorerModule(
        model="s2svr_vsr", model_overrides=TINY, flow_init=plain, flownet_overrides={"min_level_size": 1}
    )
    same.load_flownet(plain)
    # and the restorer's own checkpoint rebuilds the same flow net and rule, without the student file
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY, flow_init=path)
    import lightning

    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["s2svr_flow"]["options"]["min_level_size"] == 8
    restorer_path = tmp_path / "restorer.ckpt"
    torch.save(checkpoint, restorer_path)
    (tmp_path / "student.ckpt").unlink()
    loaded = RestorerModule.load_from_checkpoint(restorer_path, weights_only=True)
    assert loaded.net.flownet.min_level_size == 8 and loaded.net.flow_input == module.net.flow_input
    # a checkpoint from before the rule: its default PWC-Lite read the LQ pair natively
    del checkpoint["s2svr_flow"]
    for key in ("flownet", "flownet_overrides", "flow_input", "flow_input_override"):
        del checkpoint["hyper_parameters"][key]
    torch.save(checkpoint, restorer_path)
    old = RestorerModule.load_from_checkpoint(restorer_path, weights_only=True)
    assert old.net.flow_input == FlowInput("native") and old.net.flownet.min_level_size == 1


def test_distillation_mask_drops_the_teachers_inconsistent_pixels(tmp_path):
    """Eq. 16 with the teacher's own forward-backward check: where its two flows disagree, no label."""
    student = StudentFlowModule(w_dis=0.0, init_from_teacher=False, scale=4, distill_mask=True)
    student.hparams.w_dis = 1.0
    student.teacher = build_model("zero_flow")  # stands in for the frozen teacher
    hq = torch.rand(1, 2, 3, 64, 64)
    batch = {"hq": hq, "lq": torch.rand(1, 2, 3, 16, 16)}
    flow = torch.ones(1, 2, 64, 64)
    masked = student.extra_losses(batch, flow, flow)["distillation"][1]
    assert float(masked) == pytest.approx(2.0)  # zero flows agree: every pixel is a label, |1| + |1|

    class Inconsistent(torch.nn.Module):
        def forward(self, im1, im2, *, with_backward=False):
            f12 = torch.zeros(im1.shape[0], 2, *im1.shape[-2:])
            return f12, f12 + 5.0  # there and back do not meet: occluded everywhere

    student.teacher = Inconsistent()
    assert float(student.extra_losses(batch, flow, flow)["distillation"][1]) == 0.0
    student.hparams.distill_mask = False
    assert float(student.extra_losses(batch, flow, flow)["distillation"][1]) > 1.0


def test_student_refuses_a_batch_of_another_scale():
    student = StudentFlowModule(w_dis=0.0, init_from_teacher=False, scale=4)
    batch = {"hq": torch.rand(1, 2, 3, 32, 32), "lq": torch.rand(1, 2, 3, 16, 16)}
    with pytest.raises(ValueError, match="HQ / LQ = scale 4, got 2"):
        student.flow_pairs(batch)
    inferred = StudentFlowModule(w_dis=0.0, init_from_teacher=False)
    im1, _ = inferred.flow_pairs(batch)
    assert inferred.hparams.scale == 2 and im1.shape[-2:] == (32, 32)
