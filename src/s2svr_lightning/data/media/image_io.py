"""Reading frames stored as image files, with errors that name the file.

- :func:`read_image`: one RGB frame as uint8 ``(H, W, 3)``.
- :func:`probe_image`: its size without decoding the pixels, and a truncation check (the PNG ``IEND`` chunk
  or the JPEG end-of-image marker must end the file), fast enough to check every frame of a dataset when
  it is set up; ``full=True`` decodes it as well.
- :func:`list_frame_files`: the image files of a folder in natural order (``2.png`` before ``10.png``);
  :func:`read_frame_folder` reads them all.
- :class:`ImageFolderStore`: a sequence of frames given by a list of image files.
- :func:`write_png`: one uint8 frame as an 8-bit PNG, written atomically.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ...atomic import atomic_write_bytes
from ...utils import to_float_frames
from ..errors import DatasetError
from .store import Crop, FrameStore

__all__ = [
    "IMAGE_EXTENSIONS",
    "read_image",
    "probe_image",
    "list_frame_files",
    "ImageFolderStore",
    "natural_key",
    "read_frame_folder",
    "write_png",
    "png_bit_depth",
    "read_image16",
    "write_png16",
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


_INT_MODES = ("I;16", "I;16B", "I;16L", "I")


def _decode_only_rows(img, rows: int) -> None:
    """Make ``img.load()`` decode only the first ``rows`` rows of a PNG; the rows below stay blank.

    A non-interlaced PNG stores its rows top to bottom in one zlib stream, each row filtered against the
    one above only, so the rows decoded are exactly those of a full decode. Anything else (other formats,
    interlaced or animated PNGs, a tiling Pillow does not use for plain PNGs) is left to decode whole.
    """
    if img.format != "PNG" or img.info.get("interlace") or getattr(img, "is_animated", False):
        return
    tiles = getattr(img, "tile", None)
    width, height = img.size
    if rows >= height or not tiles or len(tiles) != 1:
        return
    tile = tiles[0]
    if tile[0] != "zip" or tuple(tile[1]) != (0, 0, width, height):
        return
    extents = (0, 0, width, rows)
    # Pillow >= 11 holds tiles as named tuples, older versions as plain ones
    limited = tile._replace(extents=extents) if hasattr(tile, "_replace") else (tile[0], extents, *tile[2:])
    img.tile = [limited]


def read_image(
    path: str | os.PathLike, crop: Crop | None = None, *, expected_size: tuple[int, int] | None = None
) -> np.ndarray:
    """An image file as RGB uint8 ``(H, W, 3)`` (grey is replicated, alpha dropped, 16-bit scaled to 8).

    Args:
        path: the image file.
        crop: ``(top, left, height, width)``: only that region, ``(height, width, 3)``, the same pixels as
            cropping the whole image; a PNG is then decoded only down to the crop's last row (so a file
            truncated below the crop is not noticed here: :func:`probe_image` checks that at setup).
        expected_size: ``(H, W)`` the image must have, checked from its header before decoding.
    """
    path = Path(path)
    with _open(path) as img:
        w, h = img.size
        if expected_size is not None and (h, w) != tuple(expected_size):
            raise DatasetError(f"{path}: frame is {h}x{w}, expected {tuple(expected_size)}")
        box = None
        if crop is not None:
            top, left, ch, cw = crop
            if top < 0 or left < 0 or ch < 1 or cw < 1 or top + ch > h or left + cw > w:
                raise ValueError(f"expected a crop inside the {h}x{w} image {path}, got {crop}")
            if (top, left, ch, cw) != (0, 0, h, w):
                box = (left, top, left + cw, top + ch)
        # integer modes scale by the image's own maximum (below), so they are converted whole
        if box is not None and img.mode not in _INT_MODES:
            _decode_only_rows(img, box[3])
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"{path}: cannot decode image ({err})") from None
        if img.mode in _INT_MODES:
            arr = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            arr = np.round(arr * (255.0 / peak)).clip(0, 255).astype(np.uint8)
            if box is not None:
                arr = arr[box[1] : box[3], box[0] : box[2]]
            return np.repeat(arr[..., None], 3, axis=-1)
        if box is not None:
            img = img.crop(box)  # before the conversion and the copy out of Pillow: both per pixel
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.array(img, dtype=np.uint8)  # a writable copy (Pillow's buffer is read-only)


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
        return frames_to_tensor([read_image(self.files[i], crop, expected_size=self._size) for i in indices])


def read_frame_folder(folder: str | os.PathLike) -> np.ndarray:
    """All frames of a folder of images, natural order, as uint8 ``(N, H, W, 3)``."""
    frames = [read_image(f) for f in list_frame_files(folder)]
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise DatasetError(f"{folder}: frames of different sizes {sorted(sizes)}")
    return np.stack(frames)


def write_png(path: Path, frame: np.ndarray) -> None:
    """Write uint8 ``(H, W, 3)`` as an 8-bit PNG, atomically (a temporary file in the same folder, then a
    rename), so an interrupted run leaves either no file or the whole file."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="PNG")
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))


def png_bit_depth(path: str | os.PathLike) -> int:
    """Bits per sample of a PNG, from its header (8 for anything that is not a PNG)."""
    with open(path, "rb") as f:
        head = f.read(25)
    return head[24] if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" else 8


def read_image16(path: str | os.PathLike) -> np.ndarray:
    """A 16-bit PNG as uint16 RGB ``(H, W, 3)``, every bit kept (Pillow reads 16-bit RGB as 8-bit);
    decoded by FFmpeg through PyAV. Grey is replicated."""
    import av

    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            return frame.reformat(format="rgb48le").to_ndarray()
    except (av.error.FFmpegError, StopIteration) as err:
        raise DatasetError(f"{path}: cannot decode image ({err})") from None


def write_png16(path: str | os.PathLike, frame: np.ndarray) -> None:
    """Write uint16 RGB ``(H, W, 3)`` as a 16-bit PNG (FFmpeg's encoder through PyAV), atomically."""
    import av

    if frame.dtype != np.uint16 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a uint16 frame (H, W, 3), got {frame.dtype} {frame.shape}")
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = frame.shape[1], frame.shape[0], "rgb48be"
    image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb48le").reformat(
        format="rgb48be"
    )
    data = b"".join(bytes(packet) for packet in [*ctx.encode(image), *ctx.encode(None)])
    atomic_write_bytes(Path(path), lambda f: f.write(data))
