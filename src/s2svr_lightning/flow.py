"""``s2svr-flow``: look at the optical flow of a video or of two images, colour-coded.

``python -m s2svr_lightning.flow INPUT -o OUT [--flow tvl1 | CKPT] [--max-flow auto | frame | PX]``.

- INPUT: a video file or a folder of frames (the flow of each consecutive pair ``t -> t + 1``: N - 1
  images for N frames), or ``--pair IM1 IM2`` (one flow ``IM1 -> IM2``; the two must be of one size).
- ``--flow``: ``tvl1`` (scikit-image, CPU; default) or a teacher / student / restorer checkpoint. A
  checkpoint's flow net reads the frames given as the frames it was trained on (its FlowSpec's
  ``reads``: HQ for a teacher, LQ for a student or a restorer) and through its flow-input rule: a student
  of rule ``hq`` x4 upsamples the pair x4 (bicubic) before the net, as restoring does, and its flow is
  resized back to the frames' grid. So give a student or a restorer the LQ frames it restores; with
  ``--native`` the net reads any frames at their own size instead.
- OUT: a PNG for a pair; for a video, a video file (by its extension: ``.mp4``, ``.mkv``, ...; through the
  library's ``VideoWriter``) or else a folder of PNGs named after each pair's first frame. Each image is the
  flow in the Middlebury colours (:func:`~s2svr_lightning.flow_viz.flow_to_color`; hue = direction, white =
  still) with a key in the bottom-right corner: the colour wheel, whose rim is the magnitude drawn at full
  saturation, and that magnitude in pixels. ``--side-by-side`` puts the first frame of the pair at its left.
- The scale (``--max-flow``): ``auto`` (default) is one scale for the whole video, so that colours compare
  across frames: the 99th percentile of the flow magnitudes of all its pixels (a robust maximum: a few
  wild vectors at the borders do not wash the rest out), at least 1 px, from a first pass over the flows
  (kept in memory up to 2 GiB, recomputed beyond). ``frame``: each image's own 99th percentile; a number:
  that many pixels for every image. Longer vectors are drawn saturated and darkened.
- ``--flo DIR``: the raw flows too, as Middlebury ``.flo`` files (:func:`write_flo`, :func:`read_flo`).
- Bad input, a bad checkpoint, two images of different sizes or an existing output (without
  ``--overwrite``) is a one-line error naming the file (exit code 2). Outputs are written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .commands import command_parser

__all__ = ["FlowInputs", "build_parser", "colour_key", "main", "read_flo", "render_flow", "write_flo"]

PERCENTILE = 99.0  # the robust maximum of --max-flow auto / frame
MIN_SCALE = 1.0  # px: a still video is drawn pale, not its noise at full saturation
_CACHE_BYTES = 2 << 30  # flows kept between the two passes of --max-flow auto
_SAMPLES = 1 << 16  # magnitudes kept per flow for the percentile
_FLO_TAG = b"PIEH"  # the Middlebury tag: 202021.25 as a little-endian float32


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------
@dataclass
class FlowInputs:
    """What to estimate the flow of: a video file, a frame folder, or two images (``pair``).

    Attributes:
        path: the video or folder (the first image of a pair).
        names: one name per flow (the stem of the pair's first frame, or its 8-digit index in a video).
        fps: the video's frame rate (None for frames).
        second: the second image of a pair.
    """

    path: Path
    names: list[str]
    fps: Fraction | None = None
    second: Path | None = None

    @classmethod
    def open(cls, source: str | os.PathLike | None, pair: Sequence[str] | None = None) -> FlowInputs:
        """Check the input (one-line errors naming the file) and list its flows."""
        from s2svr_lightning.data import list_frame_files
        from s2svr_lightning.data.media.image_io import IMAGE_EXTENSIONS, probe_image
        from s2svr_lightning.data.media.video_io import VideoReader

        if pair is not None:
            if source is not None:
                raise ValueError(f"expected INPUT or --pair IM1 IM2, got both ({source} and --pair)")
            first, second = (Path(p) for p in pair)
            sizes = []
            for path in (first, second):
                if not path.is_file():
                    raise FileNotFoundError(f"input {path} does not exist")
                sizes.append(probe_image(path))
            if sizes[0] != sizes[1]:
                raise ValueError(
                    f"{second}: image is {sizes[1][0]}x{sizes[1][1]}, "
                    f"but {first} is {sizes[0][0]}x{sizes[0][1]}"
                )
            return cls(first, [first.stem], second=second)
        if source is None:
            raise ValueError("expected INPUT (a video or a folder of frames) or --pair IM1 IM2")
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        if path.is_dir():
            files = list_frame_files(path)
            names, fps = [f.stem for f in files], None
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            raise ValueError(f"input {path} is one image: pass --pair IM1 IM2 for the flow between two")
        else:
            with VideoReader(path) as reader:
                names, fps = [f"{i:08d}" for i in range(len(reader))], reader.fps
        if len(names) < 2:
            raise ValueError(f"input {path}: expected at least 2 frames, got {len(names)}")
        return cls(path, names[:-1], fps=fps)

    def pairs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(im1, im2)`` float ``(3, H, W)`` in [0, 1], one pair at a time."""
        if self.second is not None:
            from s2svr_lightning.data.media.image_io import read_image
            from s2svr_lightning.utils import to_float_frames

            im1, im2 = (
                to_float_frames(torch.from_numpy(read_image(p)), channels_last=True)
                for p in (self.path, self.second)
            )
            yield im1, im2
            return
        from s2svr_lightning.data import open_source

        previous = None
        for i, frame in enumerate(open_source(self.path).frames):
            if previous is not None:
                if frame.shape != previous.shape:
                    raise ValueError(
                        f"{self.path}: frame {i} is {frame.shape[-2]}x{frame.shape[-1]}, "
                        f"but frame {i - 1} is {previous.shape[-2]}x{previous.shape[-1]}"
                    )
                yield previous, frame
            previous = frame


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------
def _magnitudes(flow: torch.Tensor) -> np.ndarray:
    """Up to 65536 finite magnitudes of a ``(2, H, W)`` flow (evenly strided), for the percentile."""
    radius = flow.float().square().sum(0).sqrt().flatten()
    radius = radius[torch.isfinite(radius)]
    step = max(1, radius.numel() // _SAMPLES)
    return radius[::step].cpu().numpy()


def _scale(samples: Sequence[np.ndarray]) -> float:
    values = np.concatenate(list(samples)) if samples else np.zeros(1)
    return max(MIN_SCALE, float(np.percentile(values, PERCENTILE)) if values.size else MIN_SCALE)


def colour_key(diameter: int, max_flow: float) -> np.ndarray:
    """The key: the colour wheel (its rim = ``max_flow`` px) over ``"<max_flow> px"`` on dark grey,
    uint8 ``(h, w, 3)``."""
    from PIL import Image, ImageDraw, ImageFont

    from s2svr_lightning.flow_viz import flow_to_color

    r = diameter / 2
    y, x = torch.meshgrid(torch.arange(diameter) + 0.5 - r, torch.arange(diameter) + 0.5 - r, indexing="ij")
    wheel = flow_to_color(torch.stack((x, y)).double() / r, max_norm=1.0, to_uint8=True)
    wheel = wheel.permute(1, 2, 0).numpy().copy()
    wheel[(x.square() + y.square() > r * r).numpy()] = 48
    text = f"{max_flow:.3g} px"
    font = ImageFont.load_default()
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    pad = 2
    width = max(diameter, right - left) + 2 * pad
    key = Image.new("RGB", (width, diameter + (bottom - top) + 3 * pad), (48, 48, 48))
    key.paste(Image.fromarray(wheel), ((width - diameter) // 2, pad))
    ImageDraw.Draw(key).text((pad - left, diameter + 2 * pad - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(key)


def render_flow(
    flow: torch.Tensor,
    max_flow: float,
    *,
    frame: torch.Tensor | None = None,
    key: bool = True,
    even: bool = False,
) -> np.ndarray:
    """A ``(2, H, W)`` flow in colour, uint8 ``(H, W', 3)``: the key in the bottom-right corner (``key``),
    ``frame`` ``(3, H, W)`` at its left (side by side), padded to even sizes (``even``, for yuv420p)."""
    from s2svr_lightning.flow_viz import flow_to_color
    from s2svr_lightning.utils import to_uint8_frames

    image = flow_to_color(flow.detach().cpu().float(), max_norm=max_flow, to_uint8=True)
    image = image.permute(1, 2, 0).numpy().copy()
    h, w = image.shape[:2]
    if key:
        diameter = int(np.clip(round(min(h, w) / 4), 16, 96))
        patch = colour_key(diameter, max_flow)
        kh, kw = min(patch.shape[0], h), min(patch.shape[1], w)
        margin_y, margin_x = min(2, h - kh), min(2, w - kw)
        image[h - kh - margin_y : h - margin_y, w - kw - margin_x : w - margin_x] = patch[-kh:, -kw:]
    if frame is not None:
        image = np.concatenate((to_uint8_frames(frame.detach().cpu()).permute(1, 2, 0).numpy(), image), 1)
    if even and (image.shape[0] % 2 or image.shape[1] % 2):
        image = np.pad(image, ((0, image.shape[0] % 2), (0, image.shape[1] % 2), (0, 0)))
    return image


# --------------------------------------------------------------------------------------------------
# Raw flows
# --------------------------------------------------------------------------------------------------
def write_flo(path: str | os.PathLike, flow: torch.Tensor) -> None:
    """A ``(2, H, W)`` flow as a Middlebury ``.flo`` file, atomically: ``PIEH``, int32 width and height,
    then float32 ``(u, v)`` per pixel, row by row, all little-endian."""
    from s2svr_lightning.atomic import atomic_write_bytes

    data = flow.detach().cpu().float().permute(1, 2, 0).numpy().astype("<f4")
    header = _FLO_TAG + np.array([data.shape[1], data.shape[0]], dtype="<i4").tobytes()
    atomic_write_bytes(path, lambda f: f.write(header + data.tobytes()))


def read_flo(path: str | os.PathLike) -> torch.Tensor:
    """A Middlebury ``.flo`` file as a float32 ``(2, H, W)`` flow."""
    raw = Path(path).read_bytes()
    if raw[:4] != _FLO_TAG or len(raw) < 12:
        raise ValueError(f"{path}: expected a .flo file (tag PIEH), got {raw[:4]!r}")
    w, h = (int(v) for v in np.frombuffer(raw[4:12], dtype="<i4"))
    if len(raw) != 12 + 8 * w * h:
        raise ValueError(f"{path}: expected {12 + 8 * w * h} bytes for a {h}x{w} flow, got {len(raw)}")
    return torch.from_numpy(np.frombuffer(raw[12:], dtype="<f4").reshape(h, w, 2).copy()).permute(2, 0, 1)


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def _estimator(spec: str, native: bool) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]:
    """The estimator of ``--flow`` and the line saying how it reads the frames."""
    from s2svr_lightning.flow_estimators import NetworkFlow, TVL1Flow

    if str(spec).lower() == "tvl1":
        return TVL1Flow(), "flow: TV-L1 (scikit-image, CPU)"
    if not Path(spec).is_file():
        raise FileNotFoundError(f"flow checkpoint {spec} does not exist (expected tvl1 or a checkpoint file)")
    net = NetworkFlow.from_checkpoint(spec, rule=not native)
    reads = "HQ" if net.spec.reads == "hq" else "LQ"
    rule = "native size (--native)" if native else f"flow-input rule {net.spec.flow_input}"
    return net, f"flow: {net.spec.flownet} of {spec}, reading the frames as its {reads} frames, {rule}"


def _parse_max_flow(value: str) -> str | float:
    if value in ("auto", "frame"):
        return value
    try:
        px = float(value)
    except ValueError:
        px = float("nan")
    if not px > 0 or not np.isfinite(px):
        raise ValueError(f"expected --max-flow auto, frame or a number of pixels > 0, got {value!r}")
    return px


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def run(args: argparse.Namespace) -> str:
    """Write the flow images of ``args`` (:func:`build_parser`); returns what to print."""
    from s2svr_lightning.atomic import AtomicOutput
    from s2svr_lightning.data.media.video_io import VIDEO_EXTENSIONS, VideoWriter
    from s2svr_lightning.restore.options import resolve_hardware

    scale_mode = _parse_max_flow(args.max_flow)
    inputs = FlowInputs.open(args.input, args.pair)
    out = Path(args.out)
    as_video = args.pair is None and out.suffix.lower() in VIDEO_EXTENSIONS
    if args.pair is not None and out.suffix.lower() != ".png":
        raise ValueError(f"expected --out ending in .png for --pair, got {out}")
    if args.pair is None and not as_video and out.suffix.lower() == ".png":
        raise ValueError(f"expected --out a folder or a video file for a video input, got the PNG {out}")
    outputs = [
        AtomicOutput(
            out, overwrite=args.overwrite, is_dir=not as_video and args.pair is None, make_parents=True
        )
    ]
    if args.flo is not None:
        outputs.append(AtomicOutput(args.flo, overwrite=args.overwrite, is_dir=True, make_parents=True))
    for output in outputs:
        output.check()  # before any flow is computed
    device, _, _ = resolve_hardware(args.device, "fp32")
    estimator, how = _estimator(args.flow, args.native)

    def flows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for im1, im2 in inputs.pairs():
            flow = estimator(im1[None].to(device), im2[None].to(device))[0].cpu()
            yield im1, flow

    cache: list[torch.Tensor] | None = None
    scale = None
    if scale_mode == "auto":  # first pass: one scale for the whole video
        cache, samples, size = [], [], 0
        for _, flow in flows():
            samples.append(_magnitudes(flow))
            size += flow.numel() * 4
            if cache is not None and size <= _CACHE_BYTES:
                cache.append(flow)
            else:
                cache = None  # too many to keep: the second pass computes them again
        scale = _scale(samples)
    elif isinstance(scale_mode, float):
        scale = scale_mode

    def second_pass() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if cache is None:
            yield from flows()
            return
        frames = inputs.pairs() if args.side_by_side else iter(())
        for flow in cache:
            pair = next(frames, None)
            yield (pair[0] if pair is not None else flow), flow

    with contextlib.ExitStack() as stack:
        tmp = [stack.enter_context(output) for output in outputs]
        writer = None
        if as_video:
            writer = stack.enter_context(VideoWriter(tmp[0], args.fps or inputs.fps or 25))
        scales = []
        for name, (frame, flow) in zip(inputs.names, second_pass()):
            this = scale if scale is not None else _scale([_magnitudes(flow)])
            scales.append(this)
            image = render_flow(
                flow, this, frame=frame if args.side_by_side else None, key=not args.no_key, even=as_video
            )
            if writer is not None:
                writer.write(image)
            elif args.pair is not None:
                tmp[0].write_bytes(_png_bytes(image))
            else:
                (tmp[0] / f"{name}.png").write_bytes(_png_bytes(image))
            if args.flo is not None:
                write_flo(tmp[1] / f"{name}.flo", flow)
    if scale is not None:
        whole = "pair" if args.pair else "video"
        where = (
            "--max-flow" if isinstance(scale_mode, float) else f"{PERCENTILE:g}th percentile of the {whole}"
        )
        rule = f"{scale:.3g} px at full saturation ({where})"
    else:
        rule = f"{min(scales):.3g} to {max(scales):.3g} px at full saturation (each image's own)"
    lines = [how, f"{len(scales)} flow image(s) in {out}; {rule}"]
    if args.flo is not None:
        lines.append(f"raw flows (.flo) in {args.flo}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        prog="s2svr-flow",
        description="Colour-coded optical flow of a video (each pair t -> t+1) or of two images, with a "
        "colour-wheel key; by TV-L1 or a teacher / student / restorer checkpoint's flow net.",
    )
    p.add_argument("input", metavar="INPUT", nargs="?", help="a video file or a folder of frames")
    p.add_argument("--pair", nargs=2, metavar=("IM1", "IM2"), help="two images: the flow IM1 -> IM2")
    p.add_argument(
        "-o", "--out", required=True, help="a .png (--pair), a video file (.mp4, ...) or a folder of PNGs"
    )
    p.add_argument(
        "--flow",
        default="tvl1",
        help="tvl1 (scikit-image, CPU; default) or a teacher / student / restorer checkpoint: its flow net "
        "reads the frames given as the frames it was trained on (LQ for a student or a restorer), through "
        "its flow-input rule",
    )
    p.add_argument(
        "--native", action="store_true", help="a checkpoint's net reads the frames at their own size"
    )
    p.add_argument(
        "--max-flow",
        default="auto",
        metavar="auto|frame|PX",
        help="the magnitude at full saturation: auto (default: the 99th percentile over the whole video, "
        "one scale for every image), frame (each image's own) or a number of pixels",
    )
    p.add_argument("--side-by-side", action="store_true", help="the first frame of each pair at the left")
    p.add_argument("--no-key", action="store_true", help="no colour-wheel key")
    p.add_argument("--flo", default=None, metavar="DIR", help="also write the raw flows as .flo files here")
    p.add_argument(
        "--fps", type=float, default=None, help="frame rate of a video output (default: the input's, or 25)"
    )
    p.add_argument(
        "--device", default="auto", help="where a checkpoint's flow net runs: auto (default), cpu, cuda"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``s2svr-flow`` / ``python -m s2svr_lightning.flow``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        message = run(args)
    except (ValueError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]  # torch.load's run to pages
        print(f"s2svr-flow: error: {first}", file=sys.stderr)
        return 2
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
