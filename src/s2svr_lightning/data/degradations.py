"""Degradations that turn high-quality frames into the low-quality inputs of each task.

All functions take float tensors in [0, 1] with channels before the spatial axes, ``(..., 3, H, W)``,
and return the same dtype on the same device:

- :func:`bicubic_downsample`: MATLAB ``imresize(x, 1/scale, 'bicubic')`` (the BIx4 LQ of REDS / Vimeo-90K).
- :func:`temporal_blur`: the GoPro recipe, the mean of k consecutive high-frame-rate sub-frames.
- :func:`hevc_compress`: HEVC low-delay P at a constant QP (MFQEv2 uses HM16.5 LDP at QP 37), by libx265
  through PyAV, in YUV 4:2:0.
- :func:`degrade`: the degradation of a task by name, used for user footage (``video_folder``) and by
  ``restore --degrade``.
"""

from __future__ import annotations

import csv
import itertools
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from ..color import rgb_to_yuv420, yuv420_to_rgb
from ..utils import expect_shape

__all__ = [
    "TASK_KINDS",
    "bicubic_downsample",
    "temporal_blur",
    "hevc_compress",
    "hevc_ldp_yuv420",
    "hevc_ldp_settings",
    "degrade",
    "degrade_stream",
    "degraded_length",
    "frame_span",
]

# the degradations this module makes, one per task kind; :class:`~s2svr_lightning.task.Task` takes its kinds
# from here, so that the task (which degrades through this module) points down at it
TASK_KINDS = ("vsr", "deblur", "cve")


def _check_frames(x: torch.Tensor, name: str, min_dim: int = 3) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"expected {name} with at least {min_dim} dims (..., C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating point {name} in [0, 1], got dtype {x.dtype}")


def _check_sequence(x: torch.Tensor, name: str) -> None:
    expect_shape(x, "(T, 3, H, W)", name)
    _check_frames(x, name)


def _symmetric_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of ``[-pad, n + pad)`` folded back into ``[0, n)`` by mirroring with the edge repeated
    (MATLAB's 'symmetric': ... 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...), valid for any ``pad``."""
    idx = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)


def bicubic_downsample(x: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """Downsample by an integer factor exactly as MATLAB's ``imresize(x, 1/scale, 'bicubic')``.

    MATLAB uses the cubic kernel with a = -0.5, widened by ``scale`` when shrinking (antialiasing), and
    mirrors the image at its borders. ``F.interpolate(mode="bicubic", antialias=True)`` uses the same kernel
    but renormalises its weights at the borders instead, so we pad the frame symmetrically by the kernel's
    half support (``2 * scale`` HQ pixels, i.e. 2 LQ pixels) and crop those 2 LQ pixels off afterwards.
    Agrees with a float64 port of MATLAB's kernel to float rounding; not clipped (MATLAB does not clip
    doubles either).

    Args:
        x: ``(..., C, H, W)`` float, H and W divisible by ``scale`` (mod-crop first, as the benchmarks do).
        scale: integer factor >= 1.

    Returns:
        ``(..., C, H / scale, W / scale)``.
    """
    _check_frames(x, "x")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"expected an integer scale >= 1, got {scale!r}")
    h, w = x.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(
            f"expected H and W divisible by scale {scale}, got {h}x{w} (mod-crop the frames first)"
        )
    if scale == 1:
        return x.clone()
    lead, c = x.shape[:-3], x.shape[-3]
    y = x.reshape(-1, c, h, w)
    pad = 2 * scale
    y = y.index_select(-2, _symmetric_index(h, pad, x.device)).index_select(
        -1, _symmetric_index(w, pad, x.device)
    )
    out_h, out_w = (h + 2 * pad) // scale, (w + 2 * pad) // scale
    y = F.interpolate(y, size=(out_h, out_w), mode="bicubic", antialias=True, align_corners=False)
    y = y[..., 2:-2, 2:-2]
    return y.reshape(*lead, c, h // scale, w // scale)


def temporal_blur(subframes: torch.Tensor, k: int, *, stride: int | None = None) -> torch.Tensor:
    """Average each window of ``k`` consecutive sub-frames (a long exposure, the GoPro recipe).

    Args:
        subframes: ``(..., T, C, H, W)`` float frames of a high-frame-rate video.
        k: sub-frames per blurred frame (GoPro used 7 to 13 at 240 fps).
        stride: step between windows; defaults to ``k`` (non-overlapping windows, one blurred frame per
            k sub-frames). The sharp frame that goes with window ``i`` is sub-frame ``i * stride + k // 2``.

    Returns:
        ``(..., (T - k) // stride + 1, C, H, W)``.
    """
    _check_frames(subframes, "subframes", min_dim=4)
    stride = k if stride is None else stride
    if not isinstance(k, int) or k < 1 or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"expected integers k >= 1 and stride >= 1, got k={k!r}, stride={stride!r}")
    t = subframes.shape[-4]
    if t < k:
        raise ValueError(f"expected at least k={k} sub-frames, got {t}")
    windows = subframes.unfold(-4, k, stride)  # (..., T', C, H, W, k)
    return windows.mean(dim=-1)


def frame_span(task: str, *, blur_frames: int = 7, blur_stride: int | None = None) -> tuple[int, int]:
    """``(window, stride)`` of :func:`degrade` in HQ frames: LQ frame ``i`` is made from HQ frames
    ``i * stride .. i * stride + window - 1``. ``(blur_frames, blur_stride)`` for ``deblur`` (the stride
    defaults to the window), ``(1, 1)`` otherwise; a deblurred video's frame rate is the sub-frames'
    divided by the stride."""
    if task == "deblur":
        return int(blur_frames), int(blur_frames if blur_stride is None else blur_stride)
    return 1, 1


def degraded_length(
    task: str, num_frames: int, *, blur_frames: int = 7, blur_stride: int | None = None
) -> int:
    """Number of LQ frames :func:`degrade` makes from ``num_frames`` HQ frames."""
    window, stride = frame_span(task, blur_frames=blur_frames, blur_stride=blur_stride)
    return 0 if num_frames < window else (num_frames - window) // stride + 1


_MIN_SIDE = 128


def _encoder_size(h: int, w: int) -> tuple[int, int]:
    """The picture size x265 gets for ``h x w`` frames: even, and at least 128 px a side, since x265's
    output varies from run to run on pictures one CTU (64 px) wide."""
    return max(_MIN_SIDE, h + h % 2), max(_MIN_SIDE, w + w % 2)


# x265 settings that emulate HM's low-delay P: one I frame then only P frames, no reordering, constant QP.
# ipratio=1 keeps the I frame at the same QP (the default 1.4 puts it 3 steps lower, at QP 34).
_X265_LDP = {
    "ipratio": "1",
    "bframes": "0",
    "keyint": "-1",
    "no-scenecut": "1",
    "ref": "4",
    "aq-mode": "0",
    "psy-rd": "0",
    "psy-rdoq": "0",
    "log-level": "error",
}


def hevc_ldp_settings(qp: int = 37) -> dict[str, str]:
    """The x265 parameters of :func:`hevc_ldp_yuv420` at ``qp`` (as ``x265-params`` key/value pairs)."""
    if not isinstance(qp, int) or isinstance(qp, bool) or not 0 <= qp <= 51:
        raise ValueError(f"expected an integer qp in [0, 51], got {qp!r}")
    return dict(_X265_LDP, qp=str(qp))


def hevc_ldp_yuv420(
    frames: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    qp: int = 37,
    *,
    preset: str = "medium",
    stats_csv: str | os.PathLike | None = None,
    bitstream: BinaryIO | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """HEVC low-delay P at a constant QP on 8-bit YUV 4:2:0 frames that arrive one at a time (libx265).

    Each frame is ``(Y (H, W), U, V (ceil(H/2), ceil(W/2)))`` uint8 planes; the decoded frames come out in
    the same form and order, a few frames behind the input (x265's lookahead), so memory stays bounded
    whatever the video's length. The first frame is intra and every later one P (no B frames, no later I
    frames). Frames smaller than 128 px or with odd sizes are padded by edge replication for the encoder
    and cropped back (x265 is not deterministic on pictures one CTU wide).

    Args:
        frames: the planes of each frame, all of one size.
        qp: constant quantisation parameter, 0..51.
        preset: x265 speed preset.
        stats_csv: where x265 writes its per-frame log (written when the encoder closes, at the end).
        bitstream: a binary file that receives the HEVC Annex-B stream as it is encoded.
    """
    import av  # local: PyAV is only needed here and in video_io

    params = hevc_ldp_settings(qp)
    if stats_csv is not None:
        params.update({"csv": str(stats_csv), "csv-log-level": "1"})
    encoder = decoder = None
    size = padded = None
    count = decoded = 0

    def decode(packets) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        ph, pw = padded
        n_y, n_c = ph * pw, (ph // 2) * (pw // 2)
        (h, w), (ch, cw) = size, ((size[0] + 1) // 2, (size[1] + 1) // 2)
        for packet in packets:
            if packet is not None and bitstream is not None:
                bitstream.write(bytes(packet))
            for frame in decoder.decode(packet):
                flat = frame.to_ndarray(format="yuv420p").reshape(-1)  # Y, then U, then V
                y = flat[:n_y].reshape(ph, pw)[:h, :w]
                u = flat[n_y : n_y + n_c].reshape(ph // 2, pw // 2)[:ch, :cw]
                v = flat[n_y + n_c :].reshape(ph // 2, pw // 2)[:ch, :cw]
                yield np.ascontiguousarray(y), np.ascontiguousarray(u), np.ascontiguousarray(v)

    for y, u, v in frames:
        y, u, v = (np.asarray(p, dtype=np.uint8) for p in (y, u, v))
        if size is None:
            h, w = y.shape
            size = (h, w)
            padded = _encoder_size(h, w)
            # plain codec contexts (no container): the encoder is freed as soon as it is flushed, which
            # is when x265 writes its CSV log
            encoder = av.CodecContext.create("libx265", "w")
            encoder.width, encoder.height, encoder.pix_fmt = padded[1], padded[0], "yuv420p"
            encoder.time_base = Fraction(1, 25)
            encoder.options = {
                "preset": preset,
                "x265-params": ":".join(f"{key}={val}" for key, val in params.items()),
            }
            decoder = av.CodecContext.create("hevc", "r")
        chroma = ((size[0] + 1) // 2, (size[1] + 1) // 2)
        if y.shape != size or u.shape != chroma or v.shape != chroma:
            raise ValueError(
                f"expected planes Y {size} and U, V {chroma} like the first frame, got "
                f"{y.shape}, {u.shape}, {v.shape}"
            )
        ph, pw = padded
        y = np.pad(y, ((0, ph - y.shape[0]), (0, pw - y.shape[1])), mode="edge")
        u, v = (
            np.pad(c, ((0, ph // 2 - c.shape[0]), (0, pw // 2 - c.shape[1])), mode="edge") for c in (u, v)
        )
        plane = np.concatenate((y.reshape(-1), u.reshape(-1), v.reshape(-1)))
        frame = av.VideoFrame.from_ndarray(plane.reshape(ph * 3 // 2, pw), format="yuv420p")
        frame.pts = count
        count += 1
        for out in decode(encoder.encode(frame)):
            decoded += 1
            yield out
    if encoder is None:
        raise ValueError("expected at least one frame, got 0")
    flushed = encoder.encode(None)
    del encoder  # closes x265, which flushes the CSV log
    for out in decode([*flushed, None]):
        decoded += 1
        yield out
    if decoded != count:
        raise RuntimeError(f"HEVC round trip returned {decoded} frames for {count}")


def hevc_compress(
    frames: torch.Tensor,
    qp: int = 37,
    *,
    preset: str = "medium",
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[dict]]:
    """Encode and decode frames with HEVC low-delay P at a constant QP (libx265 through PyAV).

    The frames are converted to 8-bit YUV 4:2:0 (BT.601 limited range, as the YUV files of MFQEv2),
    encoded with the first frame intra and every later frame P (no B frames, no I frames after the first),
    decoded, and converted back to RGB (:func:`hevc_ldp_yuv420` on the converted planes).

    Args:
        frames: ``(T, 3, H, W)`` float in [0, 1].
        qp: constant quantisation parameter, 0..51.
        preset: x265 speed preset.
        return_stats: also return x265's per-frame log, a list (in coding order, which is display order
            here) of ``{"type": "I" | "P" | "B", "qp": float, "bits": int}``.

    Returns:
        ``(T, 3, H, W)`` decoded frames in the dtype/device of ``frames`` (and the stats if asked).
    """
    _check_sequence(frames, "frames")
    if not isinstance(qp, int) or not 0 <= qp <= 51:
        raise ValueError(f"expected an integer qp in [0, 51], got {qp!r}")
    if frames.shape[0] == 0:
        raise ValueError("expected at least one frame, got 0")
    # small or odd frames are padded in RGB (edge replication) before the conversion, so the encoder's
    # padding has the chroma of the edge pixels themselves
    h, w = frames.shape[-2:]
    ph, pw = _encoder_size(h, w)
    src = frames.detach().to("cpu", torch.float32)
    if (ph, pw) != (h, w):
        src = F.pad(src, (0, pw - w, 0, ph - h), mode="replicate")
    y, u, v = rgb_to_yuv420(src)
    stats_dir = tempfile.mkdtemp(prefix="s2svr_x265_") if return_stats else None
    stats_csv = os.path.join(stats_dir, "frames.csv") if stats_dir is not None else None
    try:
        planes = list(hevc_ldp_yuv420(zip(y, u, v), qp, preset=preset, stats_csv=stats_csv))
        stats = _read_x265_csv(stats_csv) if stats_csv is not None else None
    finally:
        if stats_dir is not None:
            shutil.rmtree(stats_dir, ignore_errors=True)
    out_y, out_u, out_v = (np.stack(p) for p in zip(*planes))
    rgb = yuv420_to_rgb(out_y, out_u, out_v)[..., :h, :w].to(device=frames.device, dtype=frames.dtype)
    return (rgb, stats) if return_stats else rgb


def _read_x265_csv(path: str) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = [c.strip() for c in rows[0]]
    col_type, col_qp, col_bits = header.index("Type"), header.index("QP"), header.index("Bits")
    out = []
    for row in rows[1:]:
        if len(row) <= max(col_type, col_qp, col_bits) or not row[col_type].strip():
            continue
        kind = row[col_type].strip()  # "I-SLICE", "P-SLICE", "B-SLICE" (or lower-case "b-SLICE")
        out.append({"type": kind[0].upper(), "qp": float(row[col_qp]), "bits": int(row[col_bits])})
    return out


def degrade(
    task: str,
    hq_frames: torch.Tensor,
    *,
    scale: int = 4,
    blur_frames: int = 7,
    blur_stride: int | None = None,
    qp: int = 37,
    return_target: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The degradation of a task: make LQ frames from HQ frames ``(T, 3, H, W)`` in [0, 1].

    - ``"vsr"``: MATLAB bicubic down by ``scale`` (H, W must be divisible by it).
    - ``"deblur"``: the HQ frames are treated as high-frame-rate sub-frames; each LQ frame is the mean of
      ``blur_frames`` of them (:func:`temporal_blur`), so ``T`` sub-frames give ``(T - k) // stride + 1``
      LQ frames; the matching sharp target is the middle sub-frame of each window.
    - ``"cve"``: HEVC low-delay P at ``qp`` (:func:`hevc_compress`).

    With ``return_target=True`` returns ``(lq, hq)`` where ``hq`` is the frame-aligned target (the HQ
    frames themselves, or the middle sub-frames for deblurring).
    """
    _check_sequence(hq_frames, "hq_frames")
    if task == "vsr":
        lq, hq = bicubic_downsample(hq_frames, scale), hq_frames
    elif task == "deblur":
        stride = blur_frames if blur_stride is None else blur_stride
        lq = temporal_blur(hq_frames, blur_frames, stride=stride)
        hq = hq_frames[blur_frames // 2 :: stride][: lq.shape[0]]
    elif task == "cve":
        lq, hq = hevc_compress(hq_frames, qp), hq_frames
    else:
        raise ValueError(f"expected task in {TASK_KINDS}, got {task!r}")
    return (lq, hq) if return_target else lq


def degrade_stream(
    task: str,
    hq_frames: Iterable[torch.Tensor],
    *,
    scale: int = 4,
    blur_frames: int = 7,
    blur_stride: int | None = None,
    qp: int = 37,
    chunk: int = 32,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`degrade` on HQ frames ``(3, H, W)`` that arrive one at a time, in bounded memory.

    Yields ``(lq, hq_target)`` pairs, the LQ rounded to 8 bits as degraded datasets store them.

    - ``vsr``: each frame mod-cropped to a multiple of ``scale`` and downsampled on its own.
    - ``deblur``: a sliding buffer of ``blur_frames`` sub-frames, one blurred frame per window, advanced
      by the window stride: exactly what :func:`degrade` gives on the whole video.
    - ``cve``: HEVC in chunks of ``chunk`` frames, each its own low-delay-P stream (an I frame at every
      chunk start, like a stream with periodic intra refresh). Exact for videos of at most ``chunk`` frames.
    """
    from s2svr_lightning.metrics import quantize_8bit

    if task == "vsr":
        for hq in hq_frames:
            h, w = hq.shape[-2:]
            hq = hq[..., : h - h % scale, : w - w % scale]
            yield quantize_8bit(bicubic_downsample(hq, scale)), hq
    elif task == "deblur":
        stride = blur_frames if blur_stride is None else int(blur_stride)
        window: deque[torch.Tensor] = deque()
        skip = 0
        for hq in hq_frames:
            if skip:
                skip -= 1
                continue
            window.append(hq)
            if len(window) == blur_frames:
                clip = torch.stack(list(window))
                lq, target = degrade("deblur", clip, blur_frames=blur_frames, return_target=True)
                yield quantize_8bit(lq[0]), target[0]
                for _ in range(min(stride, blur_frames)):
                    window.popleft()
                skip = max(stride - blur_frames, 0)
    elif task == "cve":
        buf: list[torch.Tensor] = []
        for hq in itertools.chain(hq_frames, [None]):
            if hq is not None:
                buf.append(hq)
            if buf and (hq is None or len(buf) == chunk):
                clip = torch.stack(buf)
                yield from zip(quantize_8bit(hevc_compress(clip, qp)).unbind(0), clip.unbind(0))
                buf = []
    else:
        raise ValueError(f"expected task in {TASK_KINDS}, got {task!r}")
