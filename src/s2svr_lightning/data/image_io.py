"""Reading frames stored as image files, with errors that name the file.

- :func:`read_image`: one RGB frame as uint8 ``(H, W, 3)``.
- :func:`probe_image`: its size without decoding the pixels, and a truncation check (the PNG ``IEND`` chunk
  or the JPEG end-of-image marker must end the file), fast enough to check every frame of a dataset when
  it is set up; ``full=True`` decodes it as well.
- :func:`list_frame_files`: the image files of a folder in natural order (``2.png`` before ``10.png``).
- :class:`ImageFolderStore`: a sequence of frames given by a list of image files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..utils import to_float_frames
from .datasets.base import Crop, FrameStore
from .errors import DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "read_image",
    "probe_image",
    "list_frame_files",
    "ImageFolderStore",
    "natural_key",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value: ``im2`` < ``im10``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, in natural order; raises ``DatasetError`` if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: frame folder not found")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise DatasetError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return sorted(files, key=lambda p: natural_key(p.name))


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise DatasetError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot open image ({err})") from None


def _check_trailer(path: Path, fmt: str | None) -> None:
    """Truncated PNG/JPEG files lose their end marker: checking it costs one small read."""
    if fmt not in ("PNG", "JPEG"):
        return
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 4096))
        tail = fh.read()
    if fmt == "PNG" and not tail.endswith(_PNG_END):
        raise DatasetError(f"{path}: truncated PNG (no IEND chunk at the end of its {size} bytes)")
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        raise DatasetError(f"{path}: truncated JPEG (no end-of-image marker in its {size} bytes)")


def probe_image(path: str | os.PathLike, *, full: bool = False) -> tuple[int, int]:
    """``(H, W)`` of an image file after checking that it is complete (``full``: decode it too)."""
    path = Path(path)
    with _open(path) as img:
        w, h = img.size
        fmt = img.format
        if full:
            try:
                img.load()
            except (OSError, SyntaxError, ValueError) as err:
                raise DatasetError(f"{path}: cannot decode image ({err})") from None
    _check_trailer(path, fmt)
    return h, w


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8 ``(H, W, 3)`` (grey is replicated, alpha dropped, 16-bit scaled to 8)."""
    path = Path(path)
    with _open(path) as img:
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"{path}: cannot decode image ({err})") from None
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            arr = np.round(arr * (255.0 / peak)).clip(0, 255).astype(np.uint8)
            return np.repeat(arr[..., None], 3, axis=-1)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.asarray(img, dtype=np.uint8).copy()


def frames_to_tensor(frames: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 frames ``(n, H, W, 3)`` -> float32 ``(n, 3, H, W)`` in [0, 1]."""
    arr = np.stack(list(frames)) if not isinstance(frames, np.ndarray) else frames
    return to_float_frames(arr, channels_last=True)


class ImageFolderStore(FrameStore):
    """A sequence of frames, one image file each (in the given order)."""

    def __init__(self, files: Sequence[str | os.PathLike], *, path: str | os.PathLike | None = None) -> None:
        self.files = [Path(f) for f in files]
        self.path = str(path if path is not None else (self.files[0].parent if self.files else "?"))
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def names(self) -> list[str]:
        return [f.stem for f in self.files]

    def size(self) -> tuple[int, int]:
        if self._size is None:
            if not self.files:
                raise DatasetError(f"{self.path}: no frames")
            self._size = probe_image(self.files[0])
        return self._size

    def validate(self, verify: str = "header") -> None:
        if not self.files:
            raise DatasetError(f"{self.path}: no frames")
        if verify == "none":
            return
        sizes = {}
        for f in self.files:
            sizes[f] = probe_image(f, full=verify == "full")
        first = self.files[0]
        for f, size in sizes.items():
            if size != sizes[first]:
                raise DatasetError(
                    f"{f}: frame is {size[0]}x{size[1]} but {first.name} in the same sequence is "
                    f"{sizes[first][0]}x{sizes[first][1]}"
                )
        self._size = sizes[first]

    def read(self, indices: Sequence[int], crop: Crop | None = None) -> torch.Tensor:
        frames = []
        for i in indices:
            img = read_image(self.files[i])
            if self._size is not None and img.shape[:2] != self._size:
                raise DatasetError(
                    f"{self.files[i]}: frame is {img.shape[0]}x{img.shape[1]}, expected {self._size}"
                )
            if crop is not None:
                top, left, h, w = crop
                img = img[top : top + h, left : left + w]
            frames.append(img)
        return frames_to_tensor(frames)
