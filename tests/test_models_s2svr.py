import pytest
import torch
from torch import nn

from s2svr_lightning.models import (
    S2SVR,
    ConvGRU,
    LocalAttention,
    ResConvGRU,
    ResidualBlock,
    build_model,
    pwclite,
    s2svr_cve,
    s2svr_deblur,
    s2svr_vsr,
)

TINY = dict(channels=8, num_blocks=1)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class CountingFlow(nn.Module):
    """PWC-Lite wrapper recording every call (batch size, input size, with_backward)."""

    def __init__(self):
        super().__init__()
        self.net = pwclite()
        self.calls = []

    def forward(self, im1, im2, *, with_backward=False):
        self.calls.append((im1.shape[0], tuple(im1.shape[-2:]), with_backward))
        return self.net(im1, im2, with_backward=with_backward)


@pytest.mark.parametrize(
    "builder, paper, exact", [(s2svr_vsr, 13.4e6, 13_483_172), (s2svr_deblur, 8.44e6, 8_487_079)]
)
def test_builder_parameter_counts_match_the_paper(builder, paper, exact):
    net = builder()
    count = n_params(net)
    assert abs(count - paper) / paper < 0.03
    assert count == exact  # the documented layout
    assert n_params(net.flownet) == 2_236_660
    assert n_params(s2svr_cve()) == n_params(s2svr_deblur())


@pytest.mark.parametrize("name, scale", [("s2svr_vsr", 4), ("s2svr_deblur", 1), ("s2svr_cve", 1)])
@pytest.mark.parametrize("t_len", [1, 3])
def test_output_shapes_for_every_builder(name, scale, t_len):
    torch.manual_seed(0)
    net = build_model(name, **TINY)
    assert isinstance(net, S2SVR) and net.scale == scale
    with torch.no_grad():
        y = net(torch.rand(2, t_len, 3, 17, 22))
    assert y.shape == (2, t_len, 3, 17 * scale, 22 * scale)
    assert torch.isfinite(y).all()


def test_real_builders_run_on_a_tiny_clip():
    with torch.no_grad():
        assert s2svr_vsr()(torch.rand(1, 2, 3, 16, 16)).shape == (1, 2, 3, 64, 64)
        assert s2svr_deblur()(torch.rand(1, 2, 3, 16, 16)).shape == (1, 2, 3, 16, 16)


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="expected a model name"):
        build_model("edvr")
    assert n_params(build_model("pwclite")) == 2_236_660
    assert build_model("pwclite", min_level_size=8).min_level_size == 8
    with pytest.raises(ValueError, match=r"among \['min_level_size', 'normalize_features'\].*\['levels'\]"):
        build_model("pwclite", levels=3)


@pytest.mark.parametrize("radius", [1, 2])
def test_causal_output_depends_on_inputs_up_to_t_plus_r(radius):
    torch.manual_seed(0)
    net = s2svr_vsr(radius=radius, **TINY).eval()
    x = torch.rand(1, 7, 3, 16, 20)
    changed = x.clone()
    t = 4
    changed[:, t] = 1 - changed[:, t]
    with torch.no_grad():
        diff = (net(x) - net(changed)).abs().amax(dim=(0, 2, 3, 4))
    assert torch.all(diff[: t - radius] < 1e-6)
    assert torch.all(diff[t - radius :] > 1e-4)


def test_bidirectional_variant_is_not_causal():
    torch.manual_seed(0)
    net = s2svr_deblur(bidirectional_first_layer=True, **TINY).eval()
    x = torch.rand(1, 3, 3, 16, 20)
    changed = x.clone()
    changed[:, 2] = 1 - changed[:, 2]
    with torch.no_grad():
        diff = (net(x) - net(changed)).abs().amax(dim=(0, 2, 3, 4))
    # with r = 1, a causal net's output 0 cannot see frame 2 at all
    assert diff[0] > 1e-6


@pytest.mark.parametrize(
    "builder, kwargs",
    [(s2svr_vsr, {}), (s2svr_deblur, {"radius": 2}), (s2svr_deblur, {"bidirectional_first_layer": True})],
)
def test_every_parameter_gets_a_gradient(builder, kwargs):
    torch.manual_seed(0)
    net = builder(**TINY, **kwargs)
    x = torch.rand(1, 3, 3, 16, 16)
    y = net(x)
    loss = (y - torch.rand_like(y)).abs().mean()
    loss.backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert dead == []


def test_flow_of_each_pair_is_computed_once_and_shared():
    flow = CountingFlow()
    net = s2svr_vsr(flownet=flow, **TINY)
    with torch.no_grad():
        net(torch.rand(2, 5, 3, 16, 20))
    # the default flow-input rule: the LQ pair upsampled to the HQ size (x4)
    assert flow.calls == [(2 * 4, (64, 80), True)]
    flow.calls.clear()
    with torch.no_grad():
        net(torch.rand(1, 1, 3, 16, 20))
    assert flow.calls == []  # a single frame needs no flow


def test_flow_input_runs_the_flow_net_on_a_resized_pair():
    flow = CountingFlow()
    net = s2svr_deblur(flownet=flow, flow_input=(32, 48), **TINY)
    with torch.no_grad():
        y = net(torch.rand(1, 3, 3, 20, 24))
    assert y.shape == (1, 3, 3, 20, 24)
    assert flow.calls == [(2, (32, 48), True)]


def test_align_window_composes_flows_and_duplicates_at_the_ends():
    net = s2svr_deblur(radius=2, **TINY)
    z_i, z_a, z_b = torch.rand(3, 1, 8, 16, 20).unbind(0)
    one_px = torch.zeros(1, 2, 16, 20)
    one_px[:, 0] = 1.0  # content one pixel to the right
    window = net.align_window(z_i, past=[(z_a, one_px), (z_b, one_px)], future=[])
    assert window.shape == (1, 5, 8, 16, 20)
    # z_{i-2} is reached by two one-pixel steps: a shift by 2
    assert torch.allclose(window[:, 0, :, :, :-2], z_b[..., 2:], atol=1e-5)
    assert torch.allclose(window[:, 1, :, :, :-1], z_a[..., 1:], atol=1e-5)
    # no future: both slots repeat the centre
    assert torch.equal(window[:, 3], z_i) and torch.equal(window[:, 4], z_i)
    # a single past item fills both past slots
    window = net.align_window(z_i, past=[(z_a, one_px)], future=[])
    assert torch.equal(window[:, 0], window[:, 1])


def test_convgru_update_rule():
    gru = ConvGRU(input_channels=2, hidden_channels=3)
    h, x = torch.rand(1, 3, 5, 5), torch.rand(1, 2, 5, 5)
    with torch.no_grad():
        gru.conv_z.weight.zero_()
        gru.conv_z.bias.fill_(-50.0)  # z = 0: keep the state
        assert torch.allclose(gru(h, x), h, atol=1e-6)
        gru.conv_z.bias.fill_(50.0)  # z = 1: take the candidate
        r = torch.sigmoid(gru.conv_r(torch.cat((h, x), 1)))
        q = torch.tanh(gru.conv_q(torch.cat((r * h, x), 1)))
        assert torch.allclose(gru(h, x), q, atol=1e-6)
        assert torch.equal(gru(None, x), gru(torch.zeros(1, 3, 5, 5), x))


def test_resconvgru_residual_across_layers():
    layer = ResConvGRU(input_channels=4, hidden_channels=4, num_blocks=2)
    x = torch.rand(1, 4, 6, 6)
    out, hidden = layer(None, x)
    assert torch.allclose(out, x + hidden)
    first = ResConvGRU(input_channels=3, hidden_channels=4, num_blocks=1)
    out, hidden = first(None, torch.rand(1, 3, 6, 6))
    assert torch.equal(out, hidden)


def test_local_attention_is_a_convex_combination():
    torch.manual_seed(0)
    att = LocalAttention(channels=4, radius=1)
    query = torch.rand(2, 4, 6, 6)
    levels = torch.tensor([0.0, 1.0, 5.0]).view(1, 3, 1, 1, 1)
    neighbours = levels.expand(2, 3, 4, 6, 6)
    context = att(query, neighbours)
    assert context.shape == (2, 4, 6, 6)
    assert context.min() > 0.0 and context.max() < 5.0
    same = torch.rand(2, 1, 4, 6, 6).expand(2, 3, 4, 6, 6)
    assert torch.allclose(att(query, same), same[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match=r"expected neighbours of shape \(B, 3, 4, H, W\)"):
        att(query, neighbours[:, :2])


def test_local_attention_equals_eq_5_to_7_written_out():
    # W_a on cat[s_{i-1}, z_j] for each neighbour, softmax over j, weighted sum of the z_j; the module
    # splits W_a to share the query's half between neighbours
    torch.manual_seed(0)
    att = LocalAttention(channels=4, radius=1)
    query, neighbours = torch.rand(2, 4, 6, 7), torch.rand(2, 3, 4, 6, 7)
    with torch.no_grad():
        scores = torch.stack(
            [att.v_a(torch.tanh(att.w_a(torch.cat((query, neighbours[:, j]), 1)))) for j in range(3)], dim=1
        )
        expected = (torch.softmax(scores, dim=1) * neighbours).sum(dim=1)
        assert torch.allclose(att(query, neighbours), expected, atol=1e-6)


def test_residual_block_leaves_its_input_unchanged():
    block = ResidualBlock(channels=4)
    x = torch.rand(1, 4, 6, 6)
    before = x.clone()
    with torch.no_grad():
        y = block(x)
        assert torch.equal(x, before)  # the residual is added in place to the conv output, not to x
        assert torch.allclose(y, x + block.conv2(torch.relu(block.conv1(x))), atol=1e-6)


@pytest.mark.parametrize("name", ["s2svr_vsr", "s2svr_deblur"])
def test_step_functions_keep_channels_last(name):
    # every op keeps the layout it is given, so a channels_last stream never converts in between
    torch.manual_seed(0)
    net = build_model(name, **TINY).eval().to(memory_format=torch.channels_last)
    x0, x1 = (f.contiguous(memory_format=torch.channels_last) for f in torch.rand(2, 1, 3, 16, 20))
    with torch.no_grad():
        to_prev, to_next = net.pair_flows(x1, x0)
        z0, states = net.encode_step(x0, None, None)
        decoder_states, y = net.init_decoder(x0, states)
        z1, states = net.encode_step(x1, states, to_prev)
        window = net.align_window(z1, [(z0, to_prev)], [])
        y, decoder_states = net.decode_step(x1, window, decoder_states, y, to_prev)
    # the window flattens to a (B * K, C, h, w) channels_last view, not a copy
    assert window.flatten(0, 1).data_ptr() == window.data_ptr()
    for t in [z1, *states, window.flatten(0, 1), y, *decoder_states]:
        assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize(
    "x",
    [
        torch.rand(3, 3, 16, 16),  # no batch axis
        torch.rand(1, 2, 1, 16, 16),  # grey
        torch.rand(1, 2, 3, 12, 16),  # too small
        torch.rand(1, 0, 3, 16, 16),  # empty clip
        torch.randint(0, 255, (1, 2, 3, 16, 16), dtype=torch.uint8),
    ],
)
def test_bad_input_raises_value_error(x):
    net = s2svr_vsr(**TINY)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, T, 3, H, W\) with T >= 1 and H, W >= 16"):
        net(x)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="expected scale 1 or 4"):
        S2SVR(scale=2, **TINY)
    with pytest.raises(ValueError, match="fixed flow size"):
        S2SVR(flow_input=(8, 8), **TINY)


# ------------------------------------------------------------------------ activation checkpointing
def _loss_and_grads(name: str, checkpointing: str, *, flow_trainable: bool, bf16: bool = False, **kwargs):
    """Loss and every parameter's gradient of one training step of a tiny net (same weights and data
    whatever the checkpointing), optionally under bfloat16 autocast (as ``precision="bf16-mixed"``)."""
    torch.manual_seed(0)
    net = build_model(name, **TINY, num_layers=2, checkpointing=checkpointing, **kwargs).train()
    net.flownet.requires_grad_(flow_trainable)
    g = torch.Generator().manual_seed(1)
    size = 16 if net.scale == 4 else 32
    x = torch.rand(1, 3, 3, size, size, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = net(x)
    loss = (y.float() - torch.rand(y.shape, generator=g)).abs().mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("flow_trainable", [True, False], ids=["flow_trained", "flow_frozen"])
@pytest.mark.parametrize(
    "name, kwargs",
    [("s2svr_vsr", {}), ("s2svr_deblur", {}), ("s2svr_deblur", {"bidirectional_first_layer": True})],
)
def test_checkpointing_gives_the_gradients_of_a_plain_backward(name, kwargs, flow_trainable):
    loss, grads = _loss_and_grads(name, "none", flow_trainable=flow_trainable, **kwargs)
    assert any(k.startswith("flownet.") for k in grads) == flow_trainable
    # "step" recomputes the same ops on the same values: the same bits
    loss_step, grads_step = _loss_and_grads(name, "step", flow_trainable=flow_trainable, **kwargs)
    assert torch.equal(loss_step, loss) and grads_step.keys() == grads.keys()
    assert all(torch.equal(grads_step[k], grads[k]) for k in grads)
    # "step_flow" runs the flow net pair by pair (not as one batch of pairs) while it trains: the flow
    # net's gradients are sums in another order, equal to 1e-5 of each gradient's largest entry
    loss_flow, grads_flow = _loss_and_grads(name, "step_flow", flow_trainable=flow_trainable, **kwargs)
    assert torch.allclose(loss_flow, loss, rtol=1e-6, atol=0) and grads_flow.keys() == grads.keys()
    for k in grads:
        tol = 1e-5 * float(grads[k].abs().max())
        torch.testing.assert_close(grads_flow[k], grads[k], rtol=0, atol=tol, msg=k)
        if not flow_trainable:
            assert torch.equal(grads_flow[k], grads[k])  # frozen: the batched flows, as without


def test_checkpointing_under_bf16_autocast_recomputes_in_bf16():
    # the recomputation in the backward pass (outside autocast) runs under the forward's autocast state
    loss, grads = _loss_and_grads("s2svr_deblur", "none", flow_trainable=True, bf16=True)
    loss_step, grads_step = _loss_and_grads("s2svr_deblur", "step", flow_trainable=True, bf16=True)
    assert torch.equal(loss_step, loss) and all(torch.equal(grads_step[k], grads[k]) for k in grads)
    fp32_loss, _ = _loss_and_grads("s2svr_deblur", "none", flow_trainable=True)
    assert not torch.equal(loss, fp32_loss)  # bf16 really ran


@pytest.mark.parametrize(
    "checkpointing, train, grad, flow_trainable, calls",
    [
        ("step", True, True, True, 2 * 4),  # every encoder and decoder step of T = 4
        ("step_flow", True, True, True, 2 * 4 + 3),  # and each of the 3 pairs' flows
        ("step_flow", True, True, False, 2 * 4),  # a frozen flow net keeps no activations
        ("step", False, True, True, 0),  # eval mode: untouched
        ("step", True, False, True, 0),  # no gradients: untouched
        ("none", True, True, True, 0),
    ],
)
def test_checkpointing_runs_only_where_a_backward_pass_follows(
    monkeypatch, checkpointing, train, grad, flow_trainable, calls
):
    import s2svr_lightning.models.s2svr as s2svr_module

    seen = []
    real = s2svr_module.checkpoint

    def counting(fn, *args, **kwargs):
        seen.append(fn.__name__)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(s2svr_module, "checkpoint", counting)
    torch.manual_seed(0)
    net = s2svr_deblur(**TINY, checkpointing=checkpointing).train(train)
    net.flownet.requires_grad_(flow_trainable)
    x = torch.rand(1, 4, 3, 16, 16)
    with torch.set_grad_enabled(grad):
        y = net(x)
    assert len(seen) == calls
    # the same output whatever runs under checkpointing
    plain = s2svr_deblur(**TINY).train(train)
    plain.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.allclose(y, plain(x), rtol=0, atol=1e-6)


def test_checkpointing_rejects_an_unknown_granularity():
    with pytest.raises(
        ValueError, match=r"expected checkpointing in \('none', 'step', 'step_flow'\), got 'layer'"
    ):
        s2svr_deblur(**TINY, checkpointing="layer")
