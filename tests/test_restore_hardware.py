"""Restoring on the hardware people have: ``--device/--precision auto``, ``--tile auto`` with its
out-of-memory retry, and scores that stay finite on identical frames (a fade from black).

Capabilities and out-of-memory errors are injected: the suite runs on a CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from s2svr_lightning.metrics import PSNR_MAX, VideoMetrics, psnr
from s2svr_lightning.models import s2svr_deblur, s2svr_vsr
from s2svr_lightning.restore import main, options
from s2svr_lightning.restore.options import Hardware, RestoreOptions, resolve_hardware
from s2svr_lightning.restore.stream import StreamingRestorer
from s2svr_lightning.restore.tiles import OutOfMemory, is_out_of_memory, memory_estimate

TINY = dict(channels=8, num_blocks=1)
GIB = 2**30


class Translation(torch.nn.Module):
    """Stand-in flow net: the exact flow of a clip that pans ``shift`` px per frame."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift

    def forward(self, im1, im2, *, with_backward=False):
        flow = im1.new_zeros(im1.shape[0], 2, *im1.shape[-2:])
        flow[:, 0] = self.shift
        return (flow, -flow) if with_backward else flow


def panning_clip(t_len, shift, h=32, w=128):
    """A photograph panned ``shift`` px per frame, ``(t_len, 3, h, w)`` float."""
    from skimage import data

    img = torch.from_numpy(np.ascontiguousarray(data.astronaut())).permute(2, 0, 1)
    img = torch.nn.functional.interpolate(img.float()[None] / 255, size=(192, 192), mode="area")[0]
    return torch.stack([img[:, 40 : 40 + h, shift * t : shift * t + w] for t in range(t_len)])


# ---------------------------------------------------------------------------------------------- auto
@pytest.mark.parametrize(
    ("hardware", "device", "precision"),
    [
        (Hardware(cuda_devices=2, cuda_bf16=True, mps=True, cpu_bf16=True), "cuda", "bf16"),
        (Hardware(cuda_devices=1, cuda_bf16=False), "cuda", "fp16"),
        (Hardware(mps=True, cpu_bf16=True), "mps", "fp32"),
        (Hardware(cpu_bf16=True), "cpu", "bf16"),
        (Hardware(cpu_bf16=False), "cpu", "fp32"),
    ],
)
def test_auto_picks_the_device_then_the_fast_precision(hardware, device, precision):
    got_device, got_precision, why = resolve_hardware("auto", "auto", hardware)
    assert (got_device.type, got_precision) == (device, precision)
    assert "\n" not in why and f"device {device}" in why and f"precision {precision}" in why


def test_explicit_choices_are_kept_and_auto_precision_follows_the_given_device():
    hw = Hardware(cuda_devices=1, cuda_bf16=True, cpu_bf16=False)
    assert resolve_hardware("cpu", "auto", hw)[:2] == (torch.device("cpu"), "fp32")
    assert resolve_hardware("cpu", "bf16", hw)[:2] == (torch.device("cpu"), "bf16")
    assert resolve_hardware("auto", "fp32", hw)[:2] == (torch.device("cuda"), "fp32")
    resolved, why = RestoreOptions(device="cuda:0").resolved(hw)
    assert (resolved.device, resolved.precision) == (torch.device("cuda:0"), "bf16")


def test_missing_devices_fail_with_the_fix():
    with pytest.raises(ValueError, match="found no CUDA device; use --device auto or cpu"):
        resolve_hardware("cuda", "auto", Hardware())
    with pytest.raises(ValueError, match="found 1 CUDA device"):
        resolve_hardware("cuda:1", "auto", Hardware(cuda_devices=1))
    with pytest.raises(ValueError, match="found no MPS backend"):
        resolve_hardware("mps", "auto", Hardware())
    with pytest.raises(ValueError, match="expected --precision auto"):
        resolve_hardware("cpu", "int8", Hardware())


def test_detected_hardware_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(options, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert options.detect_hardware().cpu_bf16
    monkeypatch.setattr(options, "_cpu_flags", lambda: {"avx2", "fma"})
    assert not options.detect_hardware().cpu_bf16
    monkeypatch.setattr(options, "_cpu_flags", lambda: {"amx_bf16", "amx_tile"})
    assert options.detect_hardware().cpu_bf16


def test_command_line_prints_the_choice_once_and_refuses_a_missing_device_before_loading(
    tmp_path, restorer_ckpt, write_frames, monkeypatch, capsys
):
    src = write_frames(tmp_path / "lq", np.zeros((2, 16, 24, 3), np.uint8))
    monkeypatch.setattr(options, "detect_hardware", lambda: Hardware(cpu_bf16=False, cpu_name="AVX2"))
    assert main(["--ckpt", str(restorer_ckpt), str(src), str(tmp_path / "out"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("device cpu, precision fp32") == 1
    missing = tmp_path / "no.ckpt"  # never read: the device is refused first
    assert main(["--ckpt", str(missing), str(src), str(tmp_path / "o2"), "--device", "cuda"]) == 2
    assert "found no CUDA device; use --device auto or cpu" in capsys.readouterr().err


def test_streaming_restorer_takes_auto(monkeypatch):
    monkeypatch.setattr(options, "detect_hardware", lambda: Hardware(cpu_bf16=True))
    restorer = StreamingRestorer(s2svr_deblur(**TINY), device="auto", precision="auto")
    assert (restorer.device.type, restorer.precision) == ("cpu", "bf16")


# ---------------------------------------------------------------------------------------------- scores
def test_a_fade_from_black_scores_finite_everywhere(
    tmp_path, restorer_ckpt, write_frames, monkeypatch, capsys
):
    # the first two frames are black in the reference and so in the LQ: bicubic equals the reference there
    from skimage import data

    monkeypatch.setattr(options, "detect_hardware", lambda: Hardware())
    photo = data.astronaut()[100:164, 140:236]
    hq = np.stack([(photo * gain).astype(np.uint8) for gain in (0.0, 0.0, 0.3, 0.7, 1.0)])
    src = write_frames(tmp_path / "lq", np.ascontiguousarray(hq[:, ::4, ::4]))
    ref = write_frames(tmp_path / "hq", hq)
    report = tmp_path / "m.json"
    args = ["--ckpt", str(restorer_ckpt), str(src), str(tmp_path / "out"), "--reference", str(ref)]
    assert main([*args, "--metrics-json", str(report), "--no-progress"]) == 0
    text = report.read_text()
    assert "null" not in text.split('"warp_error"')[0] and "Infinity" not in text and "NaN" not in text
    m = json.loads(text)
    assert m["baseline_psnr"] is not None and m["baseline_psnr"] <= PSNR_MAX
    assert m["baseline_psnr"] > 35.0  # the two capped frames count, at 60 dB
    assert "inf" not in capsys.readouterr().out
    # the test stage's accumulator scores the same frames the same way
    lq = torch.from_numpy(hq[:, ::4, ::4]).permute(0, 3, 1, 2).float().div(255)
    target = torch.from_numpy(hq).permute(0, 3, 1, 2).float().div(255)
    bicubic = torch.nn.functional.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False)
    assert psnr(bicubic.clamp(0, 1), target)[:2].tolist() == [PSNR_MAX, PSNR_MAX]
    metrics = VideoMetrics()
    metrics.update(bicubic[None].clamp(0, 1), target[None], "fade")
    assert float(metrics.compute()["psnr"]) == pytest.approx(m["baseline_psnr"], abs=1e-9)


# ---------------------------------------------------------------------------------------------- tiles
def test_oom_errors_are_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_auto_tile_from_the_free_memory():
    net = s2svr_deblur(**TINY)
    frame = memory_estimate(net, 64 * 128)
    roomy = StreamingRestorer(net, tile="auto", memory=lambda device: 8 * GIB, log=lambda line: None)
    assert roomy.choose_tile(64, 128) is None
    notes = []
    tight = StreamingRestorer(net, tile="auto", memory=lambda device: int(frame / 2), log=notes.append)
    tile = tight.choose_tile(64, 128)
    assert tile is not None and tight.min_tile <= tile < 128 and tile % 8 == 0
    assert memory_estimate(net, tile * tile) <= 0.7 * frame / 2 < memory_estimate(net, (tile + 8) ** 2)
    tight.push(torch.rand(3, 64, 128))
    assert tight.tile == tile and len(notes) == 1
    unknown = StreamingRestorer(net, tile="auto", memory=lambda device: None)
    assert unknown.choose_tile(64, 128) is None
    # the x4 model counts output-sized tensors: per LQ pixel it costs more than same-size restoration
    assert memory_estimate(s2svr_vsr(**TINY), 1) > memory_estimate(s2svr_deblur(), 1)


class FailingAt:
    """Makes ``net.encode_step`` raise torch.OutOfMemoryError for frames wider than ``width`` on the
    calls listed in ``calls`` (numbered from 0 among such frames), as a device that runs short would."""

    def __init__(self, net, width: int, calls: set[int]):
        self.step, self.width, self.calls, self.count = net.encode_step, width, calls, 0
        net.encode_step = self

    def __call__(self, x_t, *args, **kwargs):
        if x_t.shape[-1] > self.width:
            self.count += 1
            if self.count - 1 in self.calls:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.step(x_t, *args, **kwargs)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("fail_at", [0, 3])
def test_out_of_memory_shrinks_the_tile_and_redoes_the_frame(bidirectional, fail_at):
    # Known motion keeps the flow out of the comparison, as in test_restore_stream's tiling test: what
    # is left is tiling's error. Failing at frame 0 tiles from the start; at frame 3 the streams carry
    # three frames of state (encoder, decoder, window; or a bidirectional chunk's buffer) into the tiles.
    torch.manual_seed(0)
    net = s2svr_deblur(flownet=Translation(2), bidirectional_first_layer=bidirectional, **TINY).eval()
    clip = panning_clip(6, 2)
    untiled = torch.stack(list(StreamingRestorer(net, chunk=4, chunk_overlap=1).restore(clip)))
    failing = FailingAt(net, width=100, calls={fail_at})
    notes = []
    restorer = StreamingRestorer(
        net, tile="auto", memory=lambda d: 64 * GIB, log=notes.append, chunk=4, chunk_overlap=1
    )
    got = torch.stack(list(restorer.restore(clip)))
    assert failing.count > 0 and notes == ["out of memory at whole frames: the frame again in tiles of 96"]
    assert got.shape == untiled.shape == (6, 3, 32, 128)  # no frame lost or duplicated
    assert (got - untiled).abs().max() < 1e-5
    assert restorer._size is None and restorer.tile == 96  # flushed; the tile stays for the next video


def test_out_of_memory_keeps_shrinking_then_says_what_to_try():
    net = s2svr_deblur(**TINY).eval()
    net.encode_step = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
    notes = []
    restorer = StreamingRestorer(net, tile="auto", memory=lambda d: 64 * GIB, log=notes.append)
    with pytest.raises(OutOfMemory, match="try --tile-flow tile"):
        restorer.push(torch.rand(3, 32, 128))
    assert notes[-1].endswith("tiles of 48") and len(notes) == 3  # 128 -> 96 -> 72 -> 48 (the smallest)
    fixed = StreamingRestorer(net, tile=None)
    with pytest.raises(OutOfMemory, match="use --tile auto"):
        fixed.push(torch.rand(3, 32, 128))


def test_other_errors_pass_through():
    net = s2svr_deblur(**TINY).eval()
    net.encode_step = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        StreamingRestorer(net, tile="auto", memory=lambda d: 64 * GIB).push(torch.rand(3, 32, 64))


# -------------------------------------------------------------------------------------- stage=predict
def _predict_cfg(*overrides: str):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    import s2svr_lightning

    conf = Path(s2svr_lightning.__file__).parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="config", overrides=["+task=demo", "stage=predict", *overrides])


def _cli_options(*args: str) -> RestoreOptions:
    from s2svr_lightning.restore.cli import build_parser, options_from_args

    return options_from_args(build_parser().parse_args(["--ckpt", "c", "in.mp4", "out.mp4", *args]))


def test_stage_predict_builds_the_command_lines_options_auto_defaults_included():
    from s2svr_lightning.pipeline import ConfigError
    from s2svr_lightning.pipeline.stages import predict_options

    defaults = _cli_options("--no-progress")
    assert (defaults.device, defaults.precision, defaults.tile) == ("auto", "auto", "auto")
    assert predict_options(_predict_cfg()) == defaults
    chosen = ["predict.device=cpu", "predict.precision=bf16", "predict.tile=64", "predict.overwrite=true"]
    expected = _cli_options(
        "--no-progress", "--device", "cpu", "--precision", "bf16", "--tile", "64", "--overwrite"
    )
    assert predict_options(_predict_cfg(*chosen)) == expected
    assert predict_options(_predict_cfg("predict.tile=off")).tile is None
    with pytest.raises(
        ConfigError, match=r"^predict.tile: expected auto, off or a number of LQ pixels, got 'big'$"
    ):
        predict_options(_predict_cfg("predict.tile=big"))
