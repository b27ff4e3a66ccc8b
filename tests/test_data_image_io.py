"""Image frames: a cropped read is exactly the crop of the whole decode (PNG decodes only down to the
crop), for every pixel mode a dataset may store, with clear errors for a wrong size or a bad crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from s2svr_lightning.data import DatasetError
from s2svr_lightning.data.media.image_io import ImageFolderStore, read_image

RNG = np.random.default_rng(0)
H, W = 40, 56
CROPS = [(0, 0, 8, 12), (5, 7, 16, 20), (H - 9, W - 11, 9, 11), (0, 0, H, W), (12, 0, 28, W)]


def _image(mode: str) -> Image.Image:
    rgb = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    if mode == "I;16":
        return Image.fromarray(RNG.integers(0, 65536, (H, W), dtype=np.uint16))
    if mode == "P":
        return Image.fromarray(rgb).quantize(64)
    return Image.fromarray(rgb).convert(mode)


@pytest.mark.parametrize(
    "fmt, mode", [("png", m) for m in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16")] + [("jpg", "RGB")]
)
def test_a_cropped_read_is_the_crop_of_the_whole_decode(tmp_path, fmt, mode):
    path = tmp_path / f"frame.{fmt}"
    _image(mode).save(path)
    whole = read_image(path)
    assert whole.shape == (H, W, 3) and whole.dtype == np.uint8 and whole.flags.writeable
    for top, left, h, w in CROPS:
        got = read_image(path, (top, left, h, w))
        assert got.flags.writeable and got.flags.c_contiguous
        np.testing.assert_array_equal(got, whole[top : top + h, left : left + w])


def test_a_png_with_many_data_chunks_reads_the_same_cropped(tmp_path):
    # large frames are split over many IDAT chunks: decoding stops inside one of them, then the rest is
    # skipped (a file that ends early would be caught by the setup check, probe_image)
    frame = RNG.integers(0, 256, (600, 128, 3), dtype=np.uint8)
    path = tmp_path / "tall.png"
    Image.fromarray(frame).save(path, compress_level=0)
    assert path.read_bytes().count(b"IDAT") > 2
    for top in (40, 300, 584):
        np.testing.assert_array_equal(read_image(path, (top, 8, 16, 48)), frame[top : top + 16, 8:56])
    np.testing.assert_array_equal(read_image(path), frame)


def test_a_store_read_with_a_crop_equals_the_crop_of_the_frames(tmp_path):
    frames = RNG.integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    files = []
    for i, frame in enumerate(frames):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(frame).save(files[-1])
    store = ImageFolderStore(files)
    whole = store.read([2, 0, 1])
    assert torch.equal(whole, torch.from_numpy(frames[[2, 0, 1]]).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(store.read([2, 0, 1], (4, 8, 20, 24)), whole[..., 4:24, 8:32])


def test_a_wrong_size_or_a_crop_outside_the_frame_is_refused(tmp_path):
    path = tmp_path / "f.png"
    Image.fromarray(RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
    with pytest.raises(DatasetError, match=rf"f.png: frame is {H}x{W}, expected \(40, 50\)"):
        read_image(path, expected_size=(40, 50))
    with pytest.raises(ValueError, match=rf"expected a crop inside the {H}x{W} image .*f.png, got"):
        read_image(path, (H - 4, 0, 8, 8))


def test_a_png_crop_decodes_only_the_rows_down_to_the_crop(tmp_path):
    from s2svr_lightning.data.media.image_io import _decode_only_rows

    frame = RNG.integers(1, 256, (H, W, 3), dtype=np.uint8)  # no zero pixel
    Image.fromarray(frame).save(tmp_path / "f.png")
    with Image.open(tmp_path / "f.png") as img:
        _decode_only_rows(img, 10)
        img.load()
        decoded = np.asarray(img)
    np.testing.assert_array_equal(decoded[:10], frame[:10])
    assert not decoded[10:].any()  # never inflated
