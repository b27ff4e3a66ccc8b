"""The ``restore`` command: a video of any length in, the restored video out, in constant memory.

``python -m s2svr_lightning.restore --ckpt CKPT INPUT OUTPUT`` (installed as ``s2svr-restore``).

Frames are decoded one at a time, pushed through :class:`~s2svr_lightning.inference.StreamingRestorer`
(S2SVR's encoder is causal and its local attention looks ``r`` frames ahead, so output ``t`` is final
once input ``t + r`` has arrived) and encoded as soon as they come out: memory does not grow with the
length of the video, and the output equals a whole-sequence pass.

- INPUT: a video file (anything PyAV / decord reads) or a folder of frames (png, jpg, ...).
- OUTPUT: a video file (``.mp4``, ``.mkv``, ``.mov``, ``.avi``; the source frame rate is kept) or a
  folder of PNGs (a path without an extension).
- The checkpoint of the restorer stage carries the task (``vsr`` / ``deblur`` / ``cve``), its scale,
  degradation and metric conventions and the network (builder name + overrides): nothing else is given.
- ``--reference HQ`` scores PSNR / SSIM against ground truth with the task's conventions
  (:mod:`s2svr_lightning.metrics`), next to a baseline: bicubic upsampling for SR, the input otherwise.
  ``--degrade`` makes the LQ input from an HQ video with the task's degradation; INPUT is then the
  reference too. ``--metrics-json`` writes the scores.
- The output is written under a hidden temporary name in the output's folder and renamed when
  complete, so an interrupted run never leaves a file that looks finished; an existing output is
  refused unless ``--overwrite``.
- ``--export onnx|torchscript`` writes one streaming step of the network for deployment instead.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "AtomicOutput",
    "RestoreSummary",
    "TaskSpec",
    "build_parser",
    "load_restorer",
    "main",
    "restore_video",
]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
DEFAULT_FOLDER_FPS = Fraction(25)
_TASKS = ("vsr", "deblur", "cve")


class RestoreInterrupted(KeyboardInterrupt):
    """SIGTERM turned into an interrupt, so that the partial output is cleaned up as for Ctrl-C."""


# --------------------------------------------------------------------------------------------------
# Atomic output
# --------------------------------------------------------------------------------------------------
class AtomicOutput:
    """Write an output file or folder under a temporary name and move it into place only when complete.

    The temporary sibling lives in the output's own folder (so the final ``os.replace`` is an atomic
    rename on one filesystem) and is named ``.<name>.partial-<pid><suffix>``: hidden, clearly marked
    as partial, and with the output's extension kept so that the container format is chosen from it.
    On any exception (including ``KeyboardInterrupt``) the temporary is removed; if the process is
    killed outright, only that hidden ``.partial`` entry can remain, never a file at ``path``.

    Args:
        path: the final output path.
        overwrite: replace an existing ``path``; otherwise an existing one raises ``FileExistsError``.
        is_dir: the output is a folder (of PNG frames) rather than a file.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False, is_dir: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = bool(overwrite)
        self.is_dir = bool(is_dir)
        self.tmp: Path | None = None
        self.committed = False

    def check(self) -> None:
        """Raise early if the output exists (without ``overwrite``) or its folder does not."""
        if self.path.exists() or self.path.is_symlink():
            if not self.overwrite:
                raise FileExistsError(f"output {self.path} already exists; pass --overwrite to replace it")
            if self.path.is_dir() != self.is_dir:
                what = "a folder" if self.path.is_dir() else "a file"
                raise FileExistsError(f"output {self.path} exists and is {what}; refusing to replace it")
        parent = self.path.parent
        if not parent.is_dir():
            raise FileNotFoundError(f"output folder {parent} does not exist")

    def __enter__(self) -> Path:
        self.check()
        name = f".{self.path.stem}.partial-{os.getpid()}{self.path.suffix}"
        self.tmp = self.path.parent / name
        _remove(self.tmp)  # a leftover of a killed run with the same pid
        if self.is_dir:
            self.tmp.mkdir()
        return self.tmp

    def commit(self) -> None:
        """Move the finished temporary onto ``path`` (replacing it when ``overwrite``)."""
        if self.tmp is None:
            raise RuntimeError("expected commit() inside the with-block, got it outside")
        self.check()
        if self.is_dir and self.path.exists():
            # os.replace cannot replace a non-empty folder: move the old one aside first.
            trash = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
            os.replace(self.path, trash)
            os.replace(self.tmp, self.path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)
        self.committed = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self.committed:
            self.commit()
        if not self.committed and self.tmp is not None:
            _remove(self.tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------------------------------
# Checkpoint -> network + task
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """What a restorer checkpoint says about its task.

    Attributes:
        kind: ``"vsr"``, ``"deblur"`` or ``"cve"``.
        scale: output size / input size (4 for VSR, 1 otherwise).
        y_channel: score on the BT.601 Y channel (compressed video, Vimeo-90K-T) instead of RGB.
        border: pixels cropped from each side before scoring.
        degradation: keyword options of :func:`s2svr_lightning.data.degradations.degrade` for ``--degrade``.
    """

    kind: str
    scale: int
    y_channel: bool = False
    border: int = 0
    degradation: dict = field(default_factory=dict)


_DEGRADE_KEYS = ("scale", "blur_frames", "blur_stride", "qp")


def _task_of(module: Any, path: Path) -> TaskSpec:
    """The task of a loaded RestorerModule: its ``kind`` and ``scale``, and from its hyperparameters the
    ``degradation`` settings and the ``metrics`` conventions (docs/contracts.md)."""
    hparams = module.hparams
    kind = module.kind
    if kind not in _TASKS:
        raise ValueError(f"expected the checkpoint's task kind in {_TASKS}, got {kind!r} in {path}")
    metrics = dict(hparams.get("metrics") or {})
    degradation = {k: v for k, v in dict(hparams.get("degradation") or {}).items() if k in _DEGRADE_KEYS}
    return TaskSpec(
        kind=kind,
        scale=int(module.scale),
        y_channel=bool(metrics.get("y_channel", False)),
        border=int(metrics.get("border", 0)),
        degradation=degradation,
    )


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint file to a dict on the CPU, with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        # weights_only: tensors and plain containers only, no arbitrary code from an unknown file (the
        # restorer stores its hyperparameters as plain data for this).
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types (UnpicklingError, RuntimeError, EOFError, ...)
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"expected a Lightning checkpoint (a dict) in {path}, got {type(ckpt).__name__}")
    return ckpt


def load_restorer(path: str | os.PathLike, *, map_location: str | torch.device = "cpu"):
    """Build the restoration network of a restorer checkpoint, with its task.

    Returns:
        ``(net, task)``: the :class:`~s2svr_lightning.models.S2SVR` in eval mode and a :class:`TaskSpec`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint, or not a restorer's (a teacher or student flow checkpoint).
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    kind = ckpt.get("s2svr_kind")
    if kind != "restorer":
        hint = ""
        if kind in ("teacher", "student"):
            hint = (
                f": {path} is a {kind} optical-flow checkpoint; restore needs the restorer stage's "
                "checkpoint (<run dir>/restorer/checkpoints/final.ckpt)"
            )
        raise ValueError(f"expected a restorer checkpoint (s2svr_kind 'restorer'), got {kind!r}{hint}")
    from .lit.restorer import RestorerModule

    module = RestorerModule.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    task = _task_of(module, path)
    net = module.net.eval()
    return net, task


# --------------------------------------------------------------------------------------------------
# Frame sources and sinks
# --------------------------------------------------------------------------------------------------
def _to_float(frame) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` (numpy or torch) -> float ``(3, H, W)`` in [0, 1]."""
    t = torch.as_tensor(frame)
    if t.dim() != 3 or t.shape[-1] != 3:
        raise ValueError(f"expected an RGB frame (H, W, 3), got {tuple(t.shape)}")
    return t.permute(2, 0, 1).float().div_(255.0)


def _to_uint8(frame: torch.Tensor):
    """float ``(3, H, W)`` in [0, 1] -> uint8 numpy ``(H, W, 3)``, rounded as the metrics round."""
    from .metrics import to_uint8

    return to_uint8(frame).permute(1, 2, 0).cpu().numpy()


@dataclass
class FrameSource:
    """Decoded frames of a video or a frame folder, one at a time.

    Attributes:
        frames: iterator of float ``(3, H, W)`` frames in [0, 1].
        fps: the source frame rate (``None`` for a frame folder).
        length: number of frames, when known.
        name: the path, for messages.
    """

    frames: Iterator[torch.Tensor]
    fps: Fraction | None
    length: int | None
    name: str


def open_source(path: str | os.PathLike) -> FrameSource:
    """Open a video file or a folder of frames for streaming decode (clear errors for bad input)."""
    from .data import video_io

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_dir():
        files = video_io.list_frame_files(path)
        return FrameSource(
            frames=(_to_float(video_io.read_image(f)) for f in files),
            fps=None,
            length=len(files),
            name=str(path),
        )
    reader = video_io.VideoReader(path)
    return FrameSource(
        frames=(_to_float(f) for f in reader.iter_frames()),
        fps=reader.fps,
        length=len(reader),
        name=str(path),
    )


class FolderSink:
    """Write frames as ``00000000.png``, ``00000001.png``, ... into a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.count = 0

    def write(self, frame: torch.Tensor) -> None:
        from PIL import Image

        Image.fromarray(_to_uint8(frame)).save(self.folder / f"{self.count:08d}.png")
        self.count += 1

    def close(self) -> None:
        pass


class VideoSink:
    """Encode frames into a video file with PyAV at a given frame rate (opened at the first frame)."""

    def __init__(
        self, path: Path, fps: Fraction, *, codec: str | None = None, crf: int | None = None
    ) -> None:
        self.path, self.fps, self.codec, self.crf = Path(path), fps, codec, crf
        self.writer = None
        self.count = 0

    def write(self, frame: torch.Tensor) -> None:
        from .data import video_io

        if self.writer is None:
            kwargs = {}
            if self.codec is not None:
                kwargs["codec"] = self.codec
            if self.crf is not None:
                kwargs["crf"] = self.crf
            if frame.shape[-2] % 2 or frame.shape[-1] % 2:
                kwargs["pix_fmt"] = "yuv444p"  # 4:2:0 chroma needs even sizes
            self.writer = video_io.VideoWriter(self.path, self.fps, **kwargs)
            self.writer.__enter__()
        self.writer.write(_to_uint8(frame))
        self.count += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.__exit__(None, None, None)
            self.writer = None


# --------------------------------------------------------------------------------------------------
# Degradation in a stream
# --------------------------------------------------------------------------------------------------
def degraded_stream(
    task: TaskSpec, hq_frames: Iterable[torch.Tensor], *, chunk: int = 32
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(lq, hq_target)`` pairs from HQ frames with the task's degradation, in bounded memory (see
    :func:`s2svr_lightning.data.degradations.degrade_stream`)."""
    from .data.degradations import degrade_stream

    opts = dict(task.degradation)
    if task.kind == "vsr":
        opts["scale"] = task.scale
    return degrade_stream(task.kind, hq_frames, chunk=chunk, **opts)


def baseline_frame(task: TaskSpec, lq: torch.Tensor) -> torch.Tensor:
    """The baseline a restoration is compared with (bicubic upsampling for SR, the LQ frame otherwise),
    the same one the restorer's test stage scores: ``(3, h, w)`` -> ``(3, scale*h, scale*w)``."""
    from .lit.restorer import baseline_restoration

    return baseline_restoration(lq[None, None], kind=task.kind, scale=task.scale)[0, 0]


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
@dataclass
class RestoreSummary:
    """What a run did: frames written, wall time, and the scores when a reference was given."""

    frames: int
    seconds: float
    output: str
    video_fps: float | None = None
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    baseline_psnr: list[float] = field(default_factory=list)
    baseline_ssim: list[float] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Restored frames per second of wall time."""
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    def metrics(self) -> dict[str, Any]:
        """``{"psnr", "ssim", "baseline_psnr", "baseline_ssim", "frames", "fps", ...}``; means over frames."""

        def mean(v: list[float]) -> float | None:
            return float(sum(v) / len(v)) if v else None

        return {
            "psnr": mean(self.psnr),
            "ssim": mean(self.ssim),
            "baseline_psnr": mean(self.baseline_psnr),
            "baseline_ssim": mean(self.baseline_ssim),
            "frames": self.frames,
            "fps": self.fps,
            "seconds": self.seconds,
            "video_fps": self.video_fps,
            "per_frame_psnr": list(self.psnr),
        }


def _output_is_dir(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return False
    if suffix == "" or path.is_dir():
        return True
    raise ValueError(
        f"expected OUTPUT a video file ({', '.join(VIDEO_SUFFIXES)}) or a folder (no extension), got {path}"
    )


def _fit_reference(ref: torch.Tensor, size: tuple[int, int], scale: int, name: str) -> torch.Tensor:
    """Mod-crop a reference frame to the output size (the benchmarks crop HQ to a multiple of the scale)."""
    h, w = ref.shape[-2:]
    if (h, w) == size:
        return ref
    if size[0] <= h < size[0] + scale and size[1] <= w < size[1] + scale:
        return ref[..., : size[0], : size[1]]
    raise ValueError(f"expected reference frames of size {size[0]}x{size[1]} in {name}, got {h}x{w}")


def restore_video(
    ckpt: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    tile: int | None = None,
    tile_overlap: int | None = None,
    tile_flow: str = "frame",
    max_frames: int | None = None,
    reference: str | os.PathLike | None = None,
    degrade: bool = False,
    degrade_chunk: int = 32,
    overwrite: bool = False,
    codec: str | None = None,
    crf: int | None = None,
    fps: float | Fraction | None = None,
    progress: bool = True,
    net_and_task: tuple[Any, TaskSpec] | None = None,
) -> RestoreSummary:
    """Restore ``input`` into ``output`` frame by frame (the function behind the command line).

    Args mirror the command's options; ``net_and_task`` gives an already loaded ``(net, TaskSpec)``
    instead of reading ``ckpt``. Returns a :class:`RestoreSummary`.
    """
    from .inference import StreamingRestorer
    from .metrics import psnr, ssim

    in_path, out_path = Path(input), Path(output)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"expected --max-frames >= 1, got {max_frames}")
    if degrade and reference is not None:
        raise ValueError("expected either --degrade (INPUT is the reference) or --reference, got both")
    if not in_path.exists():
        raise FileNotFoundError(f"input {in_path} does not exist")
    if out_path.exists() and in_path.resolve() == out_path.resolve():
        raise ValueError(f"expected OUTPUT different from INPUT, got {out_path} for both")
    if reference is not None and not Path(reference).exists():
        raise FileNotFoundError(f"reference {reference} does not exist")
    out = AtomicOutput(out_path, overwrite=overwrite, is_dir=_output_is_dir(out_path))
    out.check()  # refuse before any heavy work

    net, task = net_and_task if net_and_task is not None else load_restorer(ckpt)
    source = open_source(in_path)
    frames: Iterable[torch.Tensor] = source.frames
    if degrade:
        pairs: Iterator[tuple[torch.Tensor, torch.Tensor | None]] = degraded_stream(
            task, frames, chunk=degrade_chunk
        )
    elif reference is not None:
        ref_source = open_source(reference)
        pairs = _zip_reference(frames, ref_source)
    else:
        pairs = ((f, None) for f in frames)
    if max_frames is not None:
        pairs = itertools.islice(pairs, max_frames)
    total = source.length
    if degrade and total is not None and task.kind == "deblur":
        k = int(task.degradation.get("blur_frames", 7))
        stride = task.degradation.get("blur_stride") or k
        total = 0 if total < k else (total - k) // int(stride) + 1
    if max_frames is not None:
        total = max_frames if total is None else min(total, max_frames)

    video_fps = Fraction(fps).limit_denominator(1001 * 1000) if fps is not None else source.fps
    if video_fps is None:
        video_fps = DEFAULT_FOLDER_FPS
    if degrade and task.kind == "deblur":
        stride = task.degradation.get("blur_stride") or task.degradation.get("blur_frames", 7)
        video_fps = video_fps / int(stride)  # one blurred frame per window of sub-frames

    restorer = StreamingRestorer(
        net, device=device, precision=precision, tile=tile, tile_flow=tile_flow, **_tile_kwargs(tile_overlap)
    )
    summary = RestoreSummary(frames=0, seconds=0.0, output=str(out_path), video_fps=float(video_fps))
    scored = degrade or reference is not None
    pending: deque[tuple[torch.Tensor | None, torch.Tensor | None]] = deque()

    bar = _progress(total, progress)
    start = time.perf_counter()
    with out as tmp:
        sink = FolderSink(tmp) if out.is_dir else VideoSink(tmp, video_fps, codec=codec, crf=crf)
        try:

            def emit(restored: torch.Tensor) -> None:
                restored = restored.detach().float().cpu()
                if restored.dim() == 4:
                    restored = restored[0]
                lq, ref = pending.popleft()
                sink.write(restored)
                if scored and ref is not None:
                    size = tuple(restored.shape[-2:])
                    ref = _fit_reference(ref, size, task.scale, "the reference")
                    base = baseline_frame(task, lq)
                    kw = {"y_channel": task.y_channel, "border": task.border}
                    summary.psnr.append(float(psnr(restored, ref, **kw)[0]))
                    summary.ssim.append(float(ssim(restored, ref, **kw)[0]))
                    summary.baseline_psnr.append(float(psnr(base, ref, **kw)[0]))
                    summary.baseline_ssim.append(float(ssim(base, ref, **kw)[0]))
                summary.frames += 1
                if bar is not None:
                    bar.update(1)
                    if summary.psnr:
                        bar.set_postfix(psnr=f"{summary.psnr[-1]:.2f}", refresh=False)

            for lq, ref in pairs:
                pending.append((lq if scored else None, ref))
                for restored in restorer.push(lq):
                    emit(restored)
            for restored in restorer.flush():
                emit(restored)
            if summary.frames == 0:
                raise ValueError(f"expected at least one frame in {source.name}, got none")
        finally:
            sink.close()
            if bar is not None:
                bar.close()
        summary.seconds = time.perf_counter() - start
    return summary


def _tile_kwargs(tile_overlap: int | None) -> dict:
    return {} if tile_overlap is None else {"tile_overlap": tile_overlap}


def _zip_reference(
    frames: Iterable[torch.Tensor], ref: FrameSource
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    ref_frames = iter(ref.frames)
    for i, lq in enumerate(frames):
        target = next(ref_frames, None)
        if target is None:
            raise ValueError(
                f"expected the reference {ref.name} to have as many frames as the input, got only {i}"
            )
        yield lq, target


def _progress(total: int | None, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="frame", desc="restore", dynamic_ncols=True, file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Export of one streaming step
# --------------------------------------------------------------------------------------------------
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

    ``fmt`` is ``"torchscript"`` (a traced module, ``torch.jit.load``) or ``"onnx"`` (opset 17; needs the
    ``onnx`` package). The graph is traced at this frame size; export again for another size.
    """
    step = StreamingStep(net.float().eval())
    example = _example_step_inputs(net, *size)
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        # the size checks in the models become constants of the trace: that is what "traced at this
        # frame size" means, so the tracer's warnings about them say nothing new
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if fmt == "torchscript":
            traced = torch.jit.trace(step, example, check_trace=False)
            torch.jit.save(traced, str(path))
        elif fmt == "onnx":
            try:
                import onnx  # noqa: F401 -- torch's exporter needs it
            except ImportError as err:
                raise ValueError("expected the 'onnx' package for --export onnx: pip install onnx") from err
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
            torch.onnx.export(
                step, example, str(path), input_names=names, output_names=outs, opset_version=17, dynamo=False
            )
        else:
            raise ValueError(f"expected fmt 'torchscript' or 'onnx', got {fmt!r}")
    return path


def run_exported_step(
    step, frames: Sequence[torch.Tensor], *, layers: int, radius: int, channels: int, scale: int
):
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
    z: dict[int, torch.Tensor] = {}
    o: dict[int, torch.Tensor] = {}  # o[j] = flow j -> j-1
    f_next: dict[int, torch.Tensor] = {}  # f_next[j] = flow j -> j+1
    enc = [zeros_state] * L
    dec: list[torch.Tensor] = [zeros_state] * L
    y_prev = torch.zeros(1, 3, scale * h, scale * w)
    for call in range(n + r + 1):
        t = min(call, n - 1)
        x_t = frames[t]
        x_prev = frames[t - 1] if 0 < call < n else x_t
        has_prev = torch.ones(1) if 0 < call < n else torch.zeros(1)
        i = call - r - 1
        decoding = 0 <= i < n
        if decoding:
            window = [z[min(max(j, 0), n - 1)] for j in range(i - r, i + r + 1)]
            past = [o[i - j] if i - j >= 1 else zero_flow for j in range(r)]
            future = [f_next[i + j] if i + j + 1 <= n - 1 else zero_flow for j in range(r)]
            x_i, o_i = frames[i], o[i] if i >= 1 else zero_flow
        else:
            window, past, future = [zeros_state] * (2 * r + 1), [zero_flow] * r, [zero_flow] * r
            x_i, o_i = x_t, zero_flow
        out = step(x_t, x_prev, has_prev, *enc, x_i, o_i, *window, *past, *future, *dec, y_prev)
        z_t, o_t, f_t, base_t = out[:4]
        new_enc, y_i, new_dec = list(out[4 : 4 + L]), out[4 + L], list(out[5 + L : 5 + 2 * L])
        if call < n:
            z[t], enc = z_t, new_enc
            if t > 0:
                o[t], f_next[t - 1] = o_t, f_t
            if t == 0:  # decoder start: the encoder's states after frame 0, y_0 = base(x_0)
                dec, y_prev = list(new_enc), base_t
        if decoding:
            dec, y_prev = new_dec, y_i
            yield y_i[0]
            for store, first in ((z, i + 1 - r), (o, min(i + 2 - r, i + 1)), (f_next, i + 1)):
                for key in [k for k in store if k < first]:
                    del store[key]


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s2svr-restore",
        description="Restore a video (or a folder of frames) with an S2SVR restorer checkpoint, streaming: "
        "memory does not grow with the video's length and the output equals a whole-sequence pass.",
    )
    p.add_argument(
        "--ckpt", required=True, help="restorer checkpoint (<run>/restorer/checkpoints/final.ckpt)"
    )
    p.add_argument(
        "input", metavar="INPUT", help="video file or folder of frames (the HQ video with --degrade)"
    )
    p.add_argument(
        "output",
        metavar="OUTPUT",
        help="video file (.mp4, .mkv, ...) or folder of PNGs (no extension); with --export, the step's file",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast precision")
    p.add_argument("--tile", type=int, default=None, help="process in spatial tiles of this many LQ pixels")
    p.add_argument("--tile-overlap", type=int, default=None, help="overlap between tiles, LQ pixels")
    p.add_argument(
        "--tile-flow",
        choices=("frame", "tile"),
        default="frame",
        help="with --tile: flow on the whole frame (default: closest to untiled) or per tile (less memory)",
    )
    p.add_argument("--max-frames", type=int, default=None, help="restore only the first N frames")
    p.add_argument("--reference", default=None, help="HQ video or frame folder to score PSNR / SSIM against")
    p.add_argument(
        "--degrade",
        action="store_true",
        help="INPUT is an HQ video: degrade it with the checkpoint's task, restore, and score against it",
    )
    p.add_argument(
        "--degrade-chunk", type=int, default=32, help="compressed video: frames per HEVC stream (default 32)"
    )
    p.add_argument("--metrics-json", default=None, help="write the scores and speed to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--codec", default=None, help="video codec of OUTPUT (default: the writer's, libx264)")
    p.add_argument("--crf", type=int, default=None, help="constant rate factor (quality) of OUTPUT")
    p.add_argument(
        "--fps", type=float, default=None, help="output frame rate (default: the source's; 25 for folders)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--export",
        choices=("onnx", "torchscript"),
        default=None,
        help="instead of restoring, write one streaming step of the network to OUTPUT for deployment "
        "(INPUT gives the frame size)",
    )
    return p


def _export(args: argparse.Namespace) -> Path:
    """``--export``: the frame size comes from INPUT's first frame (LQ frames; the network's input)."""
    out = AtomicOutput(args.output, overwrite=args.overwrite)
    out.check()
    net, _ = load_restorer(args.ckpt)
    source = open_source(args.input)
    first = next(iter(source.frames), None)
    if first is None:
        raise ValueError(f"expected at least one frame in {source.name}, got none")
    with out as tmp:
        export_step(net, tmp, size=tuple(first.shape[-2:]), fmt=args.export)
    return out.path


def _on_sigterm(signum, frame):  # noqa: ARG001 -- signal handler signature
    raise RestoreInterrupted()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``s2svr-restore`` / ``python -m s2svr_lightning.restore``; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print(f"s2svr-restore: error: expected --threads >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _in_main_thread() else None
    try:
        if args.export is not None:
            path = _export(args)
            print(f"exported one streaming step ({args.export}) to {path}")
            return 0
        summary = restore_video(
            args.ckpt,
            args.input,
            args.output,
            device=args.device,
            precision=args.precision,
            tile=args.tile,
            tile_overlap=args.tile_overlap,
            tile_flow=args.tile_flow,
            max_frames=args.max_frames,
            reference=args.reference,
            degrade=args.degrade,
            degrade_chunk=args.degrade_chunk,
            overwrite=args.overwrite,
            codec=args.codec,
            crf=args.crf,
            fps=args.fps,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt as err:
        print("s2svr-restore: interrupted; the partial output was removed", file=sys.stderr)
        return 143 if isinstance(err, RestoreInterrupted) else 130
    except (ValueError, OSError) as err:
        print(f"s2svr-restore: error: {err}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    metrics = summary.metrics()
    line = f"restored {summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.2f} frames/s)"
    line += f" -> {args.output}"
    if metrics["psnr"] is not None:
        line += (
            f"\nPSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} "
            f"(baseline {metrics['baseline_psnr']:.2f} dB, {metrics['baseline_ssim']:.4f})"
        )
    print(line)
    if args.metrics_json is not None:
        _write_json(Path(args.metrics_json), metrics)
    return 0


def _write_json(path: Path, data: dict) -> None:
    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    payload = {k: ([clean(x) for x in v] if isinstance(v, list) else clean(v)) for k, v in data.items()}
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
