"""Dataset trees written in the layouts the loaders read, from frames the caller makes.

The tests build tiny trees with these writers and ``benchmarks/data_loading.py`` builds recipe-sized
ones, so a tree here has exactly the folder and file names of the real dataset (one place that knows
them besides the loaders). Every file is written atomically (:mod:`s2svr_lightning.atomic`).

- :func:`write_reds`: ``train_sharp/<clip>/<8 digits>.png`` and ``train_sharp_bicubic/X4/<clip>/...``;
- :func:`write_vimeo`: ``sequences/<5 digits>/<4 digits>/im1..im7.png``, ``sep_trainlist.txt``,
  ``sep_testlist.txt`` and optionally a BIx4 tree of the same shape;
- :func:`write_gopro`: ``GOPRO_Large/<split>/<sequence>/{blur,sharp}/<6 digits>.png``;
- :func:`write_mfqe`: ``<split>/raw/<Name>_<W>x<H>_<N>.yuv`` and the same name under ``HM16.5_LDP/QP37``
  (:func:`write_yuv` writes one planar 8-bit 4:2:0 file);
- :func:`write_clip`: one clip of a ``paired`` or ``video_folder`` tree, a video file or a frame folder.

RGB frames are uint8 ``(N, H, W, 3)``; YUV frames are the planes ``(Y (N, H, W), U, V (N, ceil(H/2),
ceil(W/2)))``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from ...atomic import AtomicOutput, atomic_write_bytes, atomic_write_text
from ..media.image_io import write_png
from ..media.video_io import VideoWriter, is_video_file
from .mfqe import yuv_name

__all__ = ["save_frames", "write_clip", "write_gopro", "write_mfqe", "write_reds", "write_vimeo", "write_yuv"]

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]


def _check_rgb(frames: np.ndarray, what: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected {what} as uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


def save_frames(folder: str | os.PathLike, names: Sequence[str], frames: np.ndarray) -> None:
    """Write ``frames[i]`` as ``folder / names[i]`` (PNG), creating the folder."""
    frames = _check_rgb(frames, f"the frames of {folder}")
    if len(names) != len(frames):
        raise ValueError(f"expected one name per frame, got {len(names)} names for {len(frames)} frames")
    for name, frame in zip(names, frames):
        write_png(Path(folder) / name, frame)


def write_reds(
    root: str | os.PathLike, clips: Mapping[str, tuple[np.ndarray, np.ndarray]], *, scale: int = 4
) -> None:
    """REDS in BasicSR's regrouping: ``clips`` maps a clip name (``"000"``) to its ``(hq, lq)`` frames."""
    root = Path(root)
    for clip, (hq, lq) in clips.items():
        names = [f"{i:08d}.png" for i in range(len(hq))]
        save_frames(root / "train_sharp" / clip, names, hq)
        save_frames(root / "train_sharp_bicubic" / f"X{scale}" / clip, names, lq)


def write_vimeo(
    root: str | os.PathLike,
    train: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    *,
    lq: Mapping[str, np.ndarray] | None = None,
    lq_folder: str = "BIx4",
) -> None:
    """Vimeo-90K septuplets: ``train`` and ``test`` map an entry (``"00001/0001"``) to its HQ frames, which
    the list files name; ``lq`` (same entries) goes to ``root / lq_folder`` in the same shape."""
    root = Path(root)
    for entry, hq in {**train, **test}.items():
        names = [f"im{k}.png" for k in range(1, len(hq) + 1)]
        save_frames(root / "sequences" / entry, names, hq)
        if lq is not None:
            save_frames(root / lq_folder / entry, names, lq[entry])
    for name, entries in (("sep_trainlist.txt", train), ("sep_testlist.txt", test)):
        atomic_write_text(root / name, "".join(f"{entry}\n" for entry in entries))


def write_gopro(
    root: str | os.PathLike,
    splits: Mapping[str, Mapping[str, tuple[int, np.ndarray, np.ndarray]]],
    *,
    lq: str = "blur",
    hq: str = "sharp",
) -> Path:
    """GoPro: ``splits`` maps ``"train"``/``"test"`` to ``{sequence: (first frame number, blur, sharp)}``
    (frame numbers of the real dataset do not start at 0). Returns the ``GOPRO_Large`` folder."""
    base = Path(root) / "GOPRO_Large"
    for split, sequences in splits.items():
        for name, (first, blur, sharp) in sequences.items():
            names = [f"{i:06d}.png" for i in range(first, first + len(sharp))]
            save_frames(base / split / name / hq, names, sharp)
            save_frames(base / split / name / lq, names, blur)
    return base


def write_yuv(path: str | os.PathLike, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
    """Raw planar 8-bit YUV 4:2:0: per frame the Y plane, then U, then V."""
    y, u, v = (np.asarray(p) for p in (y, u, v))
    n, h, w = y.shape
    chroma = (n, (h + 1) // 2, (w + 1) // 2)
    if any(p.dtype != np.uint8 for p in (y, u, v)) or (u.shape, v.shape) != (chroma, chroma):
        raise ValueError(f"expected uint8 planes Y (N, H, W) and U, V {chroma}, got {u.shape}, {v.shape}")

    def write(f) -> None:
        for t in range(n):
            for plane in (y[t], u[t], v[t]):
                f.write(np.ascontiguousarray(plane).tobytes())

    atomic_write_bytes(path, write)


def write_mfqe(
    root: str | os.PathLike, videos: Mapping[str, Mapping[str, tuple[Planes, Planes]]], *, qp: int = 37
) -> dict[str, Path]:
    """MFQEv2: ``videos`` maps a split folder (``"train_108"``, ``"test_18"``) to
    ``{name: (raw, compressed)}`` planes, written as ``<Name>_<W>x<H>_<N>.yuv`` under ``raw`` and
    ``HM16.5_LDP/QP<qp>``. Returns ``{name: path of the raw file}``."""
    paths = {}
    for split, named in videos.items():
        for name, (raw, compressed) in named.items():
            n, h, w = np.asarray(raw[0]).shape
            file = yuv_name(name, h, w, n)
            paths[name] = Path(root) / split / "raw" / file
            write_yuv(paths[name], *raw)
            write_yuv(Path(root) / split / "HM16.5_LDP" / f"QP{qp}" / file, *compressed)
    return paths


def write_clip(
    path: str | os.PathLike,
    frames: np.ndarray,
    *,
    fps: int | Fraction = 25,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    crf: int | None = None,
    options: Mapping[str, str] | None = None,
) -> Path:
    """One clip of a ``paired`` or ``video_folder`` tree: a video file if ``path`` has a video extension
    (encoded by :class:`~s2svr_lightning.data.media.video_io.VideoWriter` with these options), else a
    folder of ``0000.png, 0001.png, ...``."""
    path = Path(path)
    frames = _check_rgb(frames, f"the frames of {path}")
    if not is_video_file(path):
        save_frames(path, [f"{i:04d}.png" for i in range(len(frames))], frames)
        return path
    with AtomicOutput(path, overwrite=True, make_parents=True) as tmp:
        kwargs = {"pix_fmt": pix_fmt, "crf": crf, "options": dict(options) if options else None}
        with VideoWriter(tmp, fps, codec=codec, **{k: v for k, v in kwargs.items() if v is not None}) as out:
            for frame in frames:
                out.write(frame)
    return path
