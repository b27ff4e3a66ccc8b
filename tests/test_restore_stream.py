import resource

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from torch import nn

from s2svr_lightning.models import build_model, s2svr_deblur
from s2svr_lightning.restore.stream import StreamingRestorer
from s2svr_lightning.restore.tiles import reuse_freed_memory

TINY = dict(channels=8, num_blocks=1)


def tiny(name="s2svr_deblur", **kwargs):
    torch.manual_seed(0)
    return build_model(name, **TINY, **kwargs).eval()


def stream(restorer, clip):
    """Push ``clip (T, 3, h, w)`` frame by frame; returns the outputs and how many came out per push."""
    outputs, counts = [], []
    for frame in clip:
        ready = restorer.push(frame)
        counts.append(len(ready))
        outputs += ready
    outputs += restorer.flush()
    return torch.stack(outputs), counts


class Translation(nn.Module):
    """Stand-in flow net giving the exact flow of a clip that pans ``shift`` px per frame."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift

    def forward(self, im1, im2, *, with_backward=False):
        flow = im1.new_zeros(im1.shape[0], 2, *im1.shape[-2:])
        flow[:, 0] = self.shift  # frame t shows img(p + shift * t): content of t is at p + shift in t-1
        return (flow, -flow) if with_backward else flow


def panning_clip(t_len, shift, h=32, w=128):
    img = torch.from_numpy(np.ascontiguousarray(skimage.data.astronaut())).permute(2, 0, 1)
    img = F.interpolate(img.float()[None] / 255, size=(192, 192), mode="area")[0]
    return torch.stack([img[:, 40 : 40 + h, shift * t : shift * t + w] for t in range(t_len)])


@pytest.mark.parametrize("name", ["s2svr_vsr", "s2svr_deblur", "s2svr_cve"])
@pytest.mark.parametrize("t_len", [1, 2, 5])
def test_streaming_equals_whole_sequence(name, t_len):
    net = tiny(name)
    clip = torch.rand(t_len, 3, 16, 20)
    with torch.no_grad():
        expected = net(clip[None])[0]
    got, counts = stream(StreamingRestorer(net), clip)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max() < 1e-5
    # frame t is emitted when frame t + r arrives (r = 1)
    assert counts == [0] + [1] * (t_len - 1)


@pytest.mark.parametrize("t_len", [1, 3, 4, 8])
def test_streaming_equals_whole_sequence_radius_2(t_len):
    net = tiny("s2svr_vsr", radius=2)
    clip = torch.rand(t_len, 3, 16, 16)
    with torch.no_grad():
        expected = net(clip[None])[0]
    got, counts = stream(StreamingRestorer(net), clip)
    assert (got - expected).abs().max() < 1e-5
    assert counts == [0, 0][:t_len] + [1] * max(t_len - 2, 0)


def test_reuse_freed_memory_stops_page_faults_in_a_steady_loop():
    # glibc serves blocks above 32 MiB with fresh mmaps: without the setting, every iteration below
    # page-faults its 2 x 36 MiB anew (~18k faults); with it, the freed blocks are reused
    if not reuse_freed_memory():
        pytest.skip("the C library is not glibc")

    def step():
        a = torch.empty(9 * 2**20).fill_(1.0)
        return float((a + 1)[0])

    faults = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert min(faults[2:]) < 1000, faults


def test_memory_does_not_grow_with_length():
    net = tiny(radius=2)
    restorer = StreamingRestorer(net)
    sizes = []
    for frame in torch.rand(12, 3, 16, 16):
        restorer.push(frame)
        state = restorer._streams[0].window
        sizes.append(max(len(state.latents), len(state.frames), len(state.to_prev), len(state.to_next)))
    assert max(sizes) <= 2 * net.radius + 1
    assert sizes[-1] == sizes[-4]


def test_restorer_is_reusable_and_takes_uint8():
    net = tiny()
    restorer = StreamingRestorer(net)
    clip8 = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    frames = list(restorer.restore(clip8))
    assert all(f.is_contiguous() for f in frames)  # plain (3, H, W) frames; the net runs channels_last
    first = torch.stack(frames)
    second = torch.stack(list(restorer.restore(clip8.float() / 255)))
    assert torch.allclose(first, second, atol=1e-6)
    # a new video may have another size after flush()
    assert torch.stack(list(restorer.restore(torch.rand(2, 1, 3, 20, 24)))).shape == (2, 3, 20, 24)


def test_bidirectional_net_streams_in_documented_chunks():
    net = tiny(bidirectional_first_layer=True)
    chunk, overlap = 6, 1
    stride = chunk - 2 * overlap
    for t_len in (5, 10, 11):
        clip = torch.rand(t_len, 3, 16, 16)
        got, _ = stream(StreamingRestorer(net, chunk=chunk, chunk_overlap=overlap), clip)
        # reference: chunks start every `stride` frames; a frame comes from the chunk whose kept part
        # (all but `overlap` frames at each inner end) holds it
        starts = [0]
        while starts[-1] + chunk < t_len:
            starts.append(starts[-1] + stride)
        expected = []
        with torch.no_grad():
            for k, s in enumerate(starts):
                out = net(clip[None, s : s + chunk])[0]
                lo = 0 if k == 0 else overlap
                hi = len(out) if k == len(starts) - 1 else chunk - overlap
                expected += list(out[lo:hi])
        assert got.shape[0] == t_len
        assert (got - torch.stack(expected)).abs().max() < 1e-5
    with torch.no_grad():  # a clip within one chunk is the whole-sequence output
        clip = torch.rand(chunk, 3, 16, 16)
        whole = net(clip[None])[0]
    assert (
        stream(StreamingRestorer(net, chunk=chunk, chunk_overlap=overlap), clip)[0] - whole
    ).abs().max() < 1e-5


@pytest.mark.parametrize("bidirectional", [False, True])
def test_tiled_equals_untiled_away_from_tile_edges(bidirectional):
    # Exactly known motion (2 px per frame) keeps the flow out of the comparison: the flow is shared
    # by all tiles anyway (tile_flow="frame"). What remains is the convs' zero padding at tile edges:
    # its influence decays below 1e-5 within ~8 px and travels with the motion, 2 px per frame, so a
    # 16 px overlap hides it for this clip, while a 4 px one does not.
    torch.manual_seed(0)
    net = s2svr_deblur(flownet=Translation(2), bidirectional_first_layer=bidirectional, **TINY).eval()
    clip = panning_clip(4, 2)
    untiled, _ = stream(StreamingRestorer(net), clip)
    tiled, _ = stream(StreamingRestorer(net, tile=64, tile_overlap=16), clip)
    assert tiled.shape == untiled.shape
    assert (tiled - untiled).abs().max() < 1e-5
    thin, _ = stream(StreamingRestorer(net, tile=64, tile_overlap=4), clip)
    assert (thin - untiled).abs().max() > 1e-4


def test_tiled_super_resolution_and_per_tile_flow():
    net = tiny("s2svr_vsr")
    clip = torch.rand(3, 3, 40, 52)
    untiled, _ = stream(StreamingRestorer(net), clip)
    tiled, _ = stream(StreamingRestorer(net, tile=32, tile_overlap=8, tile_flow="tile"), clip)
    assert tiled.shape == untiled.shape == (3, 3, 160, 208)
    # per-tile flows differ from whole-frame ones, but stitching keeps every pixel in place
    assert (tiled - untiled).abs().mean() < 0.05


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_cpu(precision):
    net = tiny("s2svr_vsr")
    clip = torch.rand(3, 3, 16, 16)
    reference, _ = stream(StreamingRestorer(net), clip)
    got, _ = stream(StreamingRestorer(net, precision=precision), clip)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - reference).abs().mean() < 2e-2
    assert not torch.equal(got, reference)  # autocast really ran


def test_bad_arguments_raise_value_error():
    net = tiny()
    with pytest.raises(ValueError, match="expected an S2SVR network"):
        StreamingRestorer(nn.Conv2d(3, 3, 3))
    with pytest.raises(ValueError, match="expected precision"):
        StreamingRestorer(net, precision="int8")
    with pytest.raises(ValueError, match="expected tile >= 16"):
        StreamingRestorer(net, tile=24, tile_overlap=12)
    with pytest.raises(ValueError, match="expected chunk > 2 \\* chunk_overlap"):
        StreamingRestorer(net, chunk=4, chunk_overlap=2)
    restorer = StreamingRestorer(net)
    with pytest.raises(ValueError, match=r"expected a frame of shape \(3, h, w\)"):
        restorer.push(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"expected a frame of shape \(3, h, w\)"):
        restorer.push(torch.rand(3, 8, 16))
    restorer.push(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="expected every frame of size"):
        restorer.push(torch.rand(3, 16, 20))
