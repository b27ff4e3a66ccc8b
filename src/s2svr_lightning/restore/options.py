"""How to restore: one frozen set of options, built once (from the command line or from ``stage=predict``).

The same :class:`RestoreOptions` serves every input of a batch; what differs per input (its path, its
output, its reference) is passed beside it.

``device="auto"`` and ``precision="auto"`` (the defaults) are resolved in one place,
:func:`resolve_hardware`, from a :class:`Hardware` description (:func:`detect_hardware`; tests pass their
own): CUDA, else Apple MPS, else the CPU; bf16 where the hardware runs it fast (CUDA with bf16, CPUs with
AMX or AVX-512 BF16), fp16 on CUDA without bf16, fp32 elsewhere. bf16 autocast on a CPU without bf16
units is emulated: a 64-channel 3x3 conv at 180x320 ran 67x slower than fp32 on an AVX2 machine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Hardware",
    "RestoreOptions",
    "detect_hardware",
    "free_memory",
    "parse_tile",
    "resolve_hardware",
]

PRECISIONS = ("fp32", "bf16", "fp16")
# frames a segment restores before its own with several workers: the smallest K measured (0, 2, 5, 10, 20)
# whose output scores within 0.01 dB of one stream's against the reference, with no frame below 40 dB
# against one stream's (benchmarks/segments.py on the demo checkpoint: K = 10 missed by 0.013 dB and
# 46 dB, K = 20 was 0.0004 dB and 56 dB; docs/restoring.md, "Several processes on one video")
WARMUP_FRAMES = 20


@dataclass(frozen=True)
class Hardware:
    """What :func:`resolve_hardware` chooses from (:func:`detect_hardware` fills it in).

    cuda_devices: CUDA devices visible; cuda_bf16: whether CUDA runs bf16 natively (Ampere and later);
    mps: Apple's Metal backend available; cpu_bf16: the CPU has bf16 units (AMX or AVX-512 BF16);
    cpu_name: the CPU's capability as torch sees it, for the one line that reports the choice.
    """

    cuda_devices: int = 0
    cuda_bf16: bool = False
    mps: bool = False
    cpu_bf16: bool = False
    cpu_name: str = "cpu"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def detect_hardware() -> Hardware:
    """This machine's :class:`Hardware` (CUDA, MPS, and the CPU's bf16 units from ``/proc/cpuinfo``, or
    torch's own probe where there is none)."""
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    flags = _cpu_flags()
    if flags:
        cpu_bf16 = bool({"amx_bf16", "avx512_bf16"} & flags)
    else:  # private probes: absent on some builds, hence the guard
        probes = (
            getattr(torch.cpu, "_is_amx_tile_supported", None),
            getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        )
        cpu_bf16 = any(bool(probe()) for probe in probes if probe is not None)
    name = torch.backends.cpu.get_cpu_capability()
    if "amx_bf16" in flags:
        name += " + AMX"
    elif "avx512_bf16" in flags:
        name += " + AVX-512 BF16"
    return Hardware(
        cuda_devices=cuda,
        cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported(including_emulation=False)),
        mps=mps,
        cpu_bf16=cpu_bf16,
        cpu_name=name,
    )


def resolve_hardware(
    device: str | torch.device, precision: str, hardware: Hardware | None = None
) -> tuple[torch.device, str, str]:
    """``(device, precision, why)`` with ``"auto"`` chosen for this machine; raises ValueError, with the
    fix, for a device that is not there or a precision that does not exist.

    Device ``auto``: ``cuda`` if present, else ``mps``, else ``cpu``. Precision ``auto``: bf16 on CUDA
    with bf16 and on CPUs with AMX / AVX-512 BF16, fp16 on other CUDA devices, fp32 elsewhere (MPS
    included). ``why`` is the one line that reports the choice.
    """
    hw = detect_hardware() if hardware is None else hardware
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"expected --precision auto, {', '.join(PRECISIONS)}, got {precision!r}")
    if str(device) == "auto":
        dev = torch.device("cuda") if hw.cuda_devices else torch.device("mps" if hw.mps else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as err:
            raise ValueError(
                f"expected --device auto, cpu, cuda, cuda:N or mps, got {device!r} ({err})"
            ) from None
    if dev.type == "cuda" and (dev.index or 0) >= hw.cuda_devices:
        found = f"{hw.cuda_devices} CUDA device(s)" if hw.cuda_devices else "no CUDA device"
        raise ValueError(f"expected --device {device} to exist, found {found}; use --device auto or cpu")
    if dev.type == "mps" and not hw.mps:
        raise ValueError(
            f"expected --device {device} to exist, found no MPS backend; use --device auto or cpu"
        )
    if precision == "auto":
        if dev.type == "cuda":
            precision = "bf16" if hw.cuda_bf16 else "fp16"
        elif dev.type == "cpu" and hw.cpu_bf16:
            precision = "bf16"
        else:
            precision = "fp32"
    where = hw.cpu_name if dev.type == "cpu" else dev.type
    fast = {
        "cpu": "bf16 units" if hw.cpu_bf16 else "no bf16 units",
        "cuda": "bf16" if hw.cuda_bf16 else "no bf16",
    }
    why = f"device {dev}, precision {precision} ({where}: {fast.get(dev.type, 'fp32 default')})"
    return dev, precision, why


def parse_tile(value: int | str | None) -> int | str | None:
    """A tile option as ``--tile`` and ``predict.tile`` take it: ``"auto"``, ``"off"`` or None (whole
    frames), or a number of LQ pixels (an int, or its digits); raises ValueError for anything else."""
    if value is None or value == "off":
        return None
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ValueError(f"expected auto, off or a number of LQ pixels, got {value!r}")


def free_memory(device: torch.device) -> int | None:
    """Bytes free for activations on ``device`` (None where unknown): CUDA's free memory plus what its
    caching allocator holds unused; on the CPU, the kernel's MemAvailable (psutil where installed)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class RestoreOptions:
    """The options of a restore run (the command line's, with its defaults).

    Stream (:class:`~s2svr_lightning.restore.stream.StreamingRestorer`):
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) or ``"auto"``
            (:func:`resolve_hardware`).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast), or ``"auto"``.
        compile: ``torch.compile`` the network's recurrent layers.
        tile: spatial tiles of this many LQ pixels; None restores whole frames; ``"auto"`` picks the
            largest tile that fits the free memory (whole frames where they fit) and shrinks it when
            the device runs out of memory (:class:`~s2svr_lightning.restore.stream.StreamingRestorer`).
        tile_overlap: LQ pixels of overlap between tiles (None: the restorer's default).
        tile_flow: with ``tile``, flow on the whole ``"frame"`` or per ``"tile"``.
    Encoder (the output video; :class:`~s2svr_lightning.data.media.frames.VideoSink`):
        codec, crf, pix_fmt, preset: the video encoder's (None: its defaults, H.264 at crf 18).
        audio: keep the source's audio streams (dropped anyway when ``fps`` retimes the video).
        audio_codec: re-encode the audio with this codec instead of copying it.
        fps: output frame rate (None: the source's timestamps; 25 for frame folders).
        format: a batch's output container (``mp4``, ``mkv``, ``mov``) or ``png`` for frame folders
            (None: from the source and the codec).
    Run:
        max_frames: restore only the first N frames.
        degrade: the input is HQ: degrade it with the checkpoint's task, restore and score against it.
        degrade_chunk: compressed video: frames per HEVC stream.
        overwrite: replace an output that exists.
        progress: show a progress bar.
        temporal: with a reference (``reference`` or ``degrade``), also score temporal consistency:
            ``"off"``, ``"warp"`` (warping error) or ``"full"`` (and tOF); :mod:`s2svr_lightning.temporal`.
        flow: the temporal scores' flow estimator: ``"tvl1"`` or a flow / restorer checkpoint.
    Processes (:mod:`~s2svr_lightning.restore.segments`):
        workers: processes restoring one video side by side, each a time segment of it (1: one stream).
        warmup_frames: with ``workers``, frames each segment restores before its first one and drops, so
            that the recurrent states have settled when its frames start.
    """

    device: str | torch.device = "auto"
    precision: str = "auto"
    compile: bool = False
    tile: int | str | None = "auto"
    tile_overlap: int | None = None
    tile_flow: str = "frame"

    codec: str | None = None
    crf: int | None = None
    pix_fmt: str | None = None
    preset: str | None = None
    audio: bool = True
    audio_codec: str | None = None
    fps: float | Fraction | None = None
    format: str | None = None

    max_frames: int | None = None
    degrade: bool = False
    degrade_chunk: int = 32
    overwrite: bool = False
    progress: bool = True
    temporal: str = "off"
    flow: str = "tvl1"

    workers: int = 1
    warmup_frames: int = WARMUP_FRAMES

    def resolved(self, hardware: Hardware | None = None) -> tuple[RestoreOptions, str]:
        """These options with ``device`` and ``precision`` resolved (:func:`resolve_hardware`), and the
        line that says what was chosen."""
        device, precision, why = resolve_hardware(self.device, self.precision, hardware)
        return dataclasses.replace(self, device=device, precision=precision), why

    def stream_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~s2svr_lightning.restore.stream.StreamingRestorer`."""
        kwargs: dict[str, Any] = {
            "device": self.device,
            "precision": self.precision,
            "tile": self.tile,
            "tile_flow": self.tile_flow,
            "compile": self.compile,
        }
        if self.tile_overlap is not None:  # else the restorer's own default
            kwargs["tile_overlap"] = self.tile_overlap
        return kwargs

    def encoder_kwargs(self) -> dict[str, Any]:
        """The video encoder's keyword arguments, as
        :class:`~s2svr_lightning.data.media.frames.VideoSink` takes them."""
        return {
            "codec": self.codec,
            "crf": self.crf,
            "pix_fmt": self.pix_fmt,
            "preset": self.preset,
            "audio_codec": self.audio_codec,
        }
