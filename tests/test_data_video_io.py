"""Video I/O: random access equals sequential decoding for every container/codec, exact fps, clear errors."""

from __future__ import annotations

import gc
from fractions import Fraction

import numpy as np
import pytest
import torch

from s2svr_lightning.data import DatasetError
from s2svr_lightning.data.media.image_io import read_frame_folder
from s2svr_lightning.data.media.video_io import VideoReader, VideoStore, VideoWriter, decord_available

NTSC = Fraction(30000, 1001)

# (file name, codec, encoder options): inter-frame codecs with B-frames and short GOPs, so that random
# access has to seek across keyframes and reorder frames.
FORMATS = [
    ("h264_bframes.mp4", "libx264", {"bf": "2", "g": "8"}),
    ("hevc.mkv", "libx265", {"x265-params": "keyint=8:bframes=2:log-level=error"}),
    ("h264.mov", "libx264", {"g": "8"}),
    ("mpeg4_bframes.avi", "mpeg4", {"bf": "2", "g": "8"}),
    ("h264.avi", "libx264", {"g": "8"}),
    ("mjpeg.avi", "mjpeg", {}),
    ("ffv1.mkv", "ffv1", {}),
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from s2svr_lightning.data.media.video_io import VideoWriter

    folder = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48 + 60, 64 + 60, 3), dtype=np.uint8)
    frames = np.stack([base[2 * t : 2 * t + 48, 2 * t : 2 * t + 64] for t in range(24)])
    paths = {}
    for name, codec, options in FORMATS:
        pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        with VideoWriter(folder / name, NTSC, codec=codec, pix_fmt=pix_fmt, options=options) as writer:
            for frame in frames:
                writer.write(frame)
        paths[name] = folder / name
    return paths


@pytest.mark.parametrize("name", [f[0] for f in FORMATS])
@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_random_access_equals_sequential_decoding(videos, name, backend):
    if backend == "decord" and not decord_available():
        pytest.skip("decord not installed")
    reader = VideoReader(videos[name], backend=backend)
    sequential = np.stack(list(reader.iter_frames()))
    assert len(reader) == len(sequential) == 24
    assert reader.fps == NTSC and reader.size == (48, 64)
    order = list(np.random.default_rng(1).permutation(24)) + [23, 0, 0, 5, 6, 7, 2]
    got = reader.get_frames(order)
    assert got.dtype == np.uint8 and got.shape == (len(order), 48, 64, 3)
    assert all(np.array_equal(got[j], sequential[i]) for j, i in enumerate(order))
    if name.endswith(".avi") and name != "mjpeg.avi":
        assert reader.backend == "sequential"  # garbled AVI timestamps: no seeking
    elif backend == "pyav" or (backend == "decord" and name in ("h264_bframes.mp4", "hevc.mkv", "h264.mov")):
        assert reader.backend == backend  # really seeking, not silently decoding from the start


@pytest.mark.skipif(not decord_available(), reason="decord not installed")
def test_decord_alone_is_wrong_on_avi_with_inter_frame_codecs(videos):
    # why the reader refuses random access there (dmlc/decord#252): this is the failure it avoids
    import decord

    sequential = np.stack(list(VideoReader(videos["mpeg4_bframes.avi"]).iter_frames()))
    raw = decord.VideoReader(str(videos["mpeg4_bframes.avi"]))
    wrong = sum(not np.array_equal(raw[int(i)].asnumpy(), sequential[i]) for i in (17, 3, 20, 9, 14, 1))
    assert wrong > 0


def test_writer_keeps_the_exact_frame_rate_and_frames(tmp_path, make_video):
    frames = np.random.default_rng(0).integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    path = make_video(
        tmp_path / "lossless.mkv", frames, codec="ffv1", fps=Fraction(24000, 1001), pix_fmt="bgr0"
    )
    reader = VideoReader(path)
    assert reader.fps == Fraction(24000, 1001)
    assert np.array_equal(reader.get_frames(range(5)), frames)  # lossless RGB round trip
    float_path = tmp_path / "float.mp4"
    with VideoWriter(float_path, 29.97002997002997) as writer:  # a float rate maps to 30000/1001
        writer.write(torch.rand(3, 16, 24))
    assert VideoReader(float_path).fps == NTSC
    with pytest.raises(ValueError, match="even frame sizes"):
        with VideoWriter(tmp_path / "odd.mp4", 25) as writer:
            writer.write(np.zeros((15, 24, 3), np.uint8))


def test_truncated_corrupt_and_missing_videos_raise_naming_the_file(videos, tmp_path):
    for name in ("h264_bframes.mp4", "hevc.mkv", "mpeg4_bframes.avi"):
        data = videos[name].read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) * 6 // 10])
        with pytest.raises(DatasetError, match=f"cut_{name}.*(truncated|corrupt)"):
            VideoReader(cut).validate()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 50)
    with pytest.raises(DatasetError, match="junk.mp4: cannot open video"):
        VideoReader(junk)
    with pytest.raises(DatasetError, match="missing.mkv: video file not found"):
        VideoReader(tmp_path / "missing.mkv")
    with pytest.raises(IndexError, match="out of range"):
        VideoReader(videos["hevc.mkv"]).get_frames([24])


def test_video_store_crops_and_pickles(videos):
    import pickle

    store = VideoStore(videos["h264_bframes.mp4"])
    full = store.read([3, 4])
    crop = store.read([3, 4], (8, 16, 20, 30))
    assert full.shape == (2, 3, 48, 64) and torch.equal(crop, full[..., 8:28, 16:46])
    clone = pickle.loads(pickle.dumps(store))
    assert torch.equal(clone.read([4]), full[1:])


@pytest.mark.parametrize("name", ["h264_bframes.mp4", "hevc.mkv", "mpeg4_bframes.avi"])
@pytest.mark.parametrize("backend", ["auto", "decord", "pyav", "sequential"])
def test_cropped_frames_are_the_crops_of_the_decoded_frames(videos, name, backend):
    reader = VideoReader(videos[name], backend=backend)
    order = [9, 3, 3, 17, 0]
    whole = reader.get_frames(order)
    for crop in ((0, 0, 48, 64), (5, 7, 20, 30), (40, 50, 8, 14)):
        top, left, h, w = crop
        got = reader.get_frames(order, crop)
        assert got.flags.c_contiguous and np.array_equal(got, whole[:, top : top + h, left : left + w])
    with pytest.raises(ValueError, match="expected a crop inside the 48x64 frames"):
        reader.get_frames([1], (40, 0, 16, 16))


@pytest.mark.skipif(not decord_available(), reason="decord not installed")
def test_a_video_decord_cannot_read_is_read_by_pyav(tmp_path, make_video):
    # decord fails on H.264 narrower than 64 px ("The size must exactly match"), e.g. the LQ of a small clip
    frames = np.random.default_rng(0).integers(0, 256, (6, 16, 24, 3), dtype=np.uint8)
    reader = VideoReader(make_video(tmp_path / "small.mp4", frames), backend="decord")
    sequential = np.stack(list(reader.iter_frames()))
    assert np.array_equal(reader.get_frames([4, 1]), sequential[[4, 1]])
    assert reader.backend == "pyav"


class _ClipReads(torch.utils.data.Dataset):
    """Frame i of a video store, read in a worker after a garbage collection (which is what frees the
    parent's leftovers there)."""

    def __init__(self, store: VideoStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        gc.collect()
        return self.store.read([i])


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_a_forked_worker_reads_video_the_parent_has_decoded(tmp_path, make_video, backend):
    # Freeing in a forked DataLoader worker a decoder copied from the parent (whose threads stayed there)
    # hung PyAV in pthread_cond_destroy and crashed decord; the parent had decoded in setup (validate).
    if backend == "decord" and not decord_available():
        pytest.skip("decord not installed")
    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 96, 3), dtype=np.uint8)
    path = make_video(tmp_path / "clip.mp4", frames, options={"g": "4"})
    gc.disable()  # keep the parent's closed readers as garbage until the worker collects it
    try:
        for _ in range(2):
            leftover = VideoReader(path, backend=backend)
            leftover.get_frames([1, 6])
            leftover.close()
        store = VideoStore(path, backend=backend)
        expected = store.read(range(4))  # a live reader with open decoders, inherited by the worker
        loader = torch.utils.data.DataLoader(
            _ClipReads(store), batch_size=4, num_workers=1, timeout=60, multiprocessing_context="fork"
        )
        (batch,) = list(loader)
    finally:
        gc.enable()
    assert torch.equal(batch[:, 0], expected)


def test_read_frame_folder_natural_order(tmp_path):
    from PIL import Image

    for i in (10, 2, 1):
        Image.fromarray(np.full((4, 6, 3), i, np.uint8)).save(tmp_path / f"frame{i}.png")
    frames = read_frame_folder(tmp_path)
    assert frames.shape == (3, 4, 6, 3) and list(frames[:, 0, 0, 0]) == [1, 2, 10]


class _PyAVConverts(torch.utils.data.Dataset):
    """Frame i of a video decoded and converted by PyAV itself (``to_ndarray``), as other code than our
    readers does, in a worker forked from a parent that converted frames the same way."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(_pyav_rgb(self.path)[i])


def _pyav_rgb(path: str) -> list[np.ndarray]:
    import av

    with av.open(path) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_a_forked_worker_converts_frames_after_the_parent_has(tmp_path, make_video):
    # PyAV (>= 18.1.1) keeps one scaler per thread for to_ndarray / reformat; a forked worker that frees the
    # parent's copy (with its slice threads) hangs in pthread_cond_destroy: the fork hook sets it aside
    frames = np.random.default_rng(1).integers(0, 256, (4, 72, 96, 3), dtype=np.uint8)
    path = make_video(tmp_path / "clip.mp4", frames)
    expected = _pyav_rgb(str(path))  # the parent's thread now holds a scaler for 96x72 yuv420p -> rgb24
    small = make_video(tmp_path / "small.mp4", frames[:, :48, :64])  # another size: the scaler is rebuilt
    loader = torch.utils.data.DataLoader(
        _PyAVConverts(small), batch_size=2, num_workers=1, timeout=60, multiprocessing_context="fork"
    )
    (batch,) = list(loader)
    assert batch.shape == (2, 48, 64, 3)
    assert np.array_equal(_pyav_rgb(str(path))[0], expected[0])


def test_reader_frames_equal_pyav_conversion(videos):
    # the reader's own single-threaded scaler gives PyAV's to_ndarray(format="rgb24"), bit for bit
    for path in videos.values():
        ours = np.stack(list(VideoReader(path).iter_frames()))
        assert np.array_equal(ours, np.stack(_pyav_rgb(str(path))))
