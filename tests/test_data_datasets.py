"""Each real dataset layout, built tiny in a temporary folder, loaded through the DataModule: shapes,
LQ/HQ pairing checked by content, and clear errors for every kind of bad input at setup time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from s2svr_lightning.color import rgb_to_y
from s2svr_lightning.data import DatasetError, VideoRestorationDataModule
from s2svr_lightning.data.datasets.layouts import (
    save_frames,
    write_clip,
    write_gopro,
    write_mfqe,
    write_reds,
    write_vimeo,
)
from s2svr_lightning.data.degradations import bicubic_downsample

RNG = np.random.default_rng(0)


def _frames(n: int, h: int, w: int) -> np.ndarray:
    """Random but smooth-ish uint8 frames (n, h, w, 3): distinct per frame, so a mis-pairing shows."""
    small = RNG.integers(0, 256, (n, h // 2, w // 2, 3)).astype(np.float32)
    return np.repeat(np.repeat(small, 2, 1), 2, 2).astype(np.uint8)


def _bicubic_u8(frames: np.ndarray, scale: int = 4) -> np.ndarray:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).double() / 255
    y = bicubic_downsample(x, scale).clamp(0, 1)
    return (y * 255).round().byte().permute(0, 2, 3, 1).numpy()


def _tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255


def _dm(dataset: dict, task: str, **kwargs) -> VideoRestorationDataModule:
    kwargs.setdefault("num_frames", 3)
    kwargs.setdefault("batch_size", 2)
    return VideoRestorationDataModule(dataset=dataset, task=task, **kwargs)


# -- GoPro ---------------------------------------------------------------------------------------
def _gopro(
    root,
    sequences=(("GOPR0001_11_00", 4001, 5), ("GOPR0002_11_01", 98, 4)),
    test=(("GOPR0410_11_00", 11, 4),),
):
    splits, truth = {}, {}
    for split, seqs in (("train", sequences), ("test", test)):
        for name, first, n in seqs:
            truth[name] = sharp = _frames(n, 16, 24)
            splits.setdefault(split, {})[name] = (first, 255 - sharp, sharp)  # LQ tied to its HQ by content
    return write_gopro(root, splits), truth


def test_gopro_layout(tmp_path):
    base, truth = _gopro(tmp_path)
    dm = _dm({"name": "gopro", "root": str(tmp_path)}, "deblur", crop_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["lq"].shape == (2, 3, 3, 8, 8) and batch["hq"].shape == (2, 3, 3, 8, 8)
    assert torch.allclose(batch["lq"], 1 - batch["hq"])  # crops, flips, reversal all applied to both
    assert "flow" not in batch
    dm.setup("test")
    samples = list(dm.test_dataloader())
    assert [s["key"][0] for s in samples] == ["gopro/GOPR0410_11_00"]
    # frame numbers start at 000011: sorted, the first frame is 000011
    assert torch.equal(samples[0]["hq"][0], _tensor(truth["GOPR0410_11_00"]))
    assert samples[0]["score"].all() and samples[0]["frames"][0].tolist() == [0, 1, 2, 3]


def test_gopro_bad_inputs(tmp_path):
    with pytest.raises(
        DatasetError, match=r"(?s)root folder not found.*Expected layout: <root>/GOPRO_Large.*\+task=demo"
    ):
        _dm({"name": "gopro", "root": str(tmp_path / "nowhere")}, "deblur").check()
    with pytest.raises(DatasetError, match="dataset.root: not set"):
        _dm({"name": "gopro"}, "deblur").setup("fit")
    base, _ = _gopro(tmp_path / "a")
    (base / "train" / "GOPR0001_11_00" / "blur" / "004003.png").unlink()
    with pytest.raises(DatasetError, match=r"GOPR0001_11_00: 4 frames in blur/ but 5 in sharp/"):
        _dm({"name": "gopro", "root": str(tmp_path / "a")}, "deblur").setup("fit")
    base, _ = _gopro(tmp_path / "b", sequences=())
    (base / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"train: empty split"):
        _dm({"name": "gopro", "root": str(tmp_path / "b")}, "deblur").setup("fit")
    base, _ = _gopro(tmp_path / "c")
    png = base / "train" / "GOPR0002_11_01" / "sharp" / "000099.png"
    png.write_bytes(png.read_bytes()[:-30])
    with pytest.raises(DatasetError, match=r"000099.png: truncated PNG"):
        _dm({"name": "gopro", "root": str(tmp_path / "c")}, "deblur").setup("fit")
    png.write_bytes(b"garbage" * 10)
    with pytest.raises(DatasetError, match=r"000099.png: not a readable image"):
        _dm({"name": "gopro", "root": str(tmp_path / "c")}, "deblur").setup("fit")
    base, _ = _gopro(tmp_path / "d")
    Image.fromarray(_frames(1, 16, 26)[0]).save(base / "test" / "GOPR0410_11_00" / "sharp" / "000012.png")
    with pytest.raises(
        DatasetError, match=r"000012.png: frame is 16x26 but 000011.png in the same sequence is 16x24"
    ):
        _dm({"name": "gopro", "root": str(tmp_path / "d")}, "deblur").setup("test")
    with pytest.raises(ValueError, match="deblur benchmark"):
        _dm({"name": "gopro", "root": str(tmp_path / "d")}, "vsr")


# -- REDS ----------------------------------------------------------------------------------------
def _reds(root, clips=("000", "001", "011", "015", "020", "042"), n=4):
    truth = {clip: _frames(n, 32, 48) for clip in clips}
    write_reds(root, {clip: (hq, _bicubic_u8(hq)) for clip, hq in truth.items()})
    return truth


def test_reds_layout_reds4_partition_and_aligned_crops(tmp_path):
    truth = _reds(tmp_path)
    dm = _dm({"name": "reds", "root": str(tmp_path)}, "vsr", crop_size=24, num_frames=2)
    dm.setup("fit")
    assert [dm.source("train").key(i) for i in range(2)] == ["reds/001", "reds/042"]
    assert [dm.source("val").key(i) for i in range(4)] == ["reds/000", "reds/011", "reds/015", "reds/020"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["lq"].shape == (2, 2, 3, 6, 6) and batch["hq"].shape == (2, 2, 3, 24, 24)
    # the LQ crop is the bicubic image of the HQ crop (away from the crop's borders)
    inner = (bicubic_downsample(batch["hq"]) - batch["lq"])[..., 2:-2, 2:-2].abs().max()
    assert inner < 2.0 / 255
    sample = next(iter(dm.val_dataloader()))
    assert torch.equal(sample["hq"][0], _tensor(truth["000"]))
    assert (bicubic_downsample(sample["hq"][0]) - sample["lq"][0]).abs().max() < 0.6 / 255


def test_reds_bad_inputs(tmp_path):
    _reds(tmp_path / "a", clips=("000", "011", "015", "001"))
    with pytest.raises(DatasetError, match=r"REDS4 test clips \['020'\] missing"):
        _dm({"name": "reds", "root": str(tmp_path / "a")}, "vsr").setup("fit")
    _reds(tmp_path / "b")
    lq = tmp_path / "b" / "train_sharp_bicubic" / "X4" / "042"
    for f in lq.iterdir():
        Image.fromarray(_frames(1, 10, 12)[0]).save(f)
    with pytest.raises(
        DatasetError, match=r"reds/042: LQ frames in .*042 are 10x12 but HQ frames in .*042 are 32x48"
    ):
        _dm({"name": "reds", "root": str(tmp_path / "b")}, "vsr").setup("fit")
    _reds(tmp_path / "c")
    (tmp_path / "c" / "train_sharp_bicubic" / "X4" / "001" / "00000003.png").unlink()
    with pytest.raises(DatasetError, match=r"clip 001: 3 LQ frames .* but 4 HQ frames"):
        _dm({"name": "reds", "root": str(tmp_path / "c")}, "vsr").setup("fit")
    with pytest.raises(DatasetError, match=r"LQ folder not found.*(?s:.*)\+task=demo"):
        (tmp_path / "d" / "train_sharp").mkdir(parents=True)
        _dm({"name": "reds", "root": str(tmp_path / "d")}, "vsr").check()


# -- Vimeo-90K -----------------------------------------------------------------------------------
def _vimeo(root, entries=("00001/0001", "00001/0002", "00002/0001"), test=("00003/0001",), bix4: bool = True):
    truth = {entry: _frames(7, 16, 32) for entry in (*entries, *test)}
    lq = {entry: _bicubic_u8(hq) for entry, hq in truth.items()} if bix4 else None
    write_vimeo(root, {e: truth[e] for e in entries}, {e: truth[e] for e in test}, lq=lq)
    with open(root / "sep_testlist.txt", "a") as fh:
        fh.write("\n")  # a blank last line, as list files often end, is skipped
    return truth


@pytest.mark.parametrize("bix4", [True, False])
def test_vimeo_layout_with_and_without_bix4(tmp_path, bix4):
    truth = _vimeo(tmp_path, bix4=bix4)
    options = {"name": "vimeo", "root": str(tmp_path), "lq_root": str(tmp_path / "BIx4") if bix4 else None}
    dm = _dm(options, "vsr", num_frames=7, crop_size=16, mirror=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["hq"].shape == (2, 14, 3, 16, 16)  # 7 frames mirrored to 14
    assert torch.equal(batch["hq"][:, 7:], batch["hq"][:, :7].flip(1))
    sample = next(iter(dm.test_dataloader()))
    assert sample["key"] == ["vimeo/00003/0001"] and sample["lq"].shape == (1, 7, 3, 4, 8)
    assert torch.equal(sample["hq"][0], _tensor(truth["00003/0001"]))
    assert (bicubic_downsample(sample["hq"][0]) - sample["lq"][0]).abs().max() < 0.6 / 255
    assert sample["score"][0].tolist() == [False, False, False, True, False, False, False]  # im4 only


def test_vimeo_bad_list_entry(tmp_path):
    _vimeo(tmp_path)
    (tmp_path / "sep_trainlist.txt").write_text("00001/0001\n00009/0009\n")
    with pytest.raises(DatasetError, match=r"sep_trainlist.txt: entry '00009/0009' has no folder"):
        _dm({"name": "vimeo", "root": str(tmp_path)}, "vsr").setup("fit")


# -- MFQEv2 --------------------------------------------------------------------------------------
def _mfqe(root, videos=(("train_108", "Foo", 16, 24, 3), ("test_18", "BasketballPass", 12, 20, 4))):
    truth, planes = {}, {}
    for split, name, h, w, n in videos:
        y = RNG.integers(60, 190, (n, h, w), dtype=np.uint8)
        u, v = (RNG.integers(110, 146, (n, h // 2, w // 2), dtype=np.uint8) for _ in range(2))
        planes.setdefault(split, {})[name] = ((y, u, v), (y + 7, u, v))  # "compressed": luma shifted by 7
        truth[f"{name}_{w}x{h}_{n}.yuv"] = y
    write_mfqe(root, planes)
    return truth


def test_mfqe_layout_reads_yuv_with_exact_luma(tmp_path):
    truth = _mfqe(tmp_path)
    dm = _dm({"name": "mfqe", "root": str(tmp_path)}, "cve", num_frames=2, crop_size=8, hflip=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["lq"].shape == batch["hq"].shape == (1, 2, 3, 8, 8)
    assert torch.allclose(rgb_to_y(batch["lq"]) - rgb_to_y(batch["hq"]), torch.tensor(7 / 255), atol=1e-4)
    sample = next(iter(dm.test_dataloader()))
    assert sample["key"] == ["mfqe/BasketballPass_20x12_4"] and sample["hq"].shape == (1, 4, 3, 12, 20)
    y = rgb_to_y(sample["hq"][0])[:, 0] * 255
    assert torch.allclose(y, torch.from_numpy(truth["BasketballPass_20x12_4.yuv"]).float(), atol=2e-3)
    store = dm.source("test").sequences[0][2]
    assert torch.allclose(store.read([1, 2], (3, 5, 6, 9)), store.read([1, 2])[..., 3:9, 5:14])  # odd offsets


def test_mfqe_bad_yuv_files(tmp_path):
    _mfqe(tmp_path)
    raw = tmp_path / "test_18" / "raw" / "BasketballPass_20x12_4.yuv"
    raw.write_bytes(raw.read_bytes()[:-100])
    with pytest.raises(
        DatasetError, match=r"BasketballPass_20x12_4.yuv: size 1340 bytes does not fit its name"
    ):
        _dm({"name": "mfqe", "root": str(tmp_path)}, "cve").setup("test")
    for folder in ("raw", "HM16.5_LDP/QP37"):
        (tmp_path / "test_18" / folder / "BasketballPass_20x12_4.yuv").rename(
            tmp_path / "test_18" / folder / "clip.yuv"
        )
    with pytest.raises(DatasetError, match=r"clip.yuv: name does not follow <Name>_<W>x<H>_<frames>.yuv"):
        _dm({"name": "mfqe", "root": str(tmp_path)}, "cve").setup("test")


# -- video_folder ----------------------------------------------------------------------------------
def _video_folder(root):
    frames = _frames(6, 16, 24)
    write_clip(root / "clip.mkv", frames, codec="ffv1", pix_fmt="bgr0")  # lossless
    folder_frames = _frames(5, 16, 24)
    save_frames(root / "shots", [f"f{i}.png" for i in range(5)], folder_frames)
    return {"clip.mkv": frames, "shots": folder_frames}


@pytest.mark.parametrize("task", ["vsr", "deblur"])
def test_video_folder_degrades_on_the_fly(tmp_path, task):
    truth = _video_folder(tmp_path)
    options = {"name": "video_folder", "root": str(tmp_path)}
    blur = {"blur_frames": 3, "blur_stride": 1} if task == "deblur" else {}
    dm = _dm(options, task, num_frames=2, crop_size=8, degradation=blur)
    with pytest.warns(UserWarning, match="no held-out footage"):
        dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["hq"].shape == (2, 2, 3, 8, 8)
    samples = list(dm.val_dataloader())
    assert sorted(s["key"][0] for s in samples) == ["video_folder/clip.mkv", "video_folder/shots"]
    clip = next(s for s in samples if s["key"][0] == "video_folder/clip.mkv")
    hq = _tensor(truth["clip.mkv"])
    if task == "vsr":
        assert torch.equal(clip["hq"][0], hq)
        assert (bicubic_downsample(hq) - clip["lq"][0]).abs().max() < 0.6 / 255
    else:  # sliding windows of 3 frames: LQ t = mean of frames t..t+2, HQ t = frame t+1
        assert clip["lq"].shape[1] == 4
        assert torch.equal(clip["hq"][0], hq[1:5])
        assert torch.allclose(clip["lq"][0, 2], hq[2:5].mean(0), atol=1e-6)


def test_video_folder_truncated_video_fails_at_setup(tmp_path):
    _video_folder(tmp_path / "train")
    data = (tmp_path / "train" / "clip.mkv").read_bytes()
    (tmp_path / "train" / "clip.mkv").write_bytes(data[: len(data) // 2])
    dm = _dm({"name": "video_folder", "root": str(tmp_path)}, "vsr", crop_size=8)
    with pytest.raises(DatasetError, match=r"clip.mkv: truncated"):
        dm.setup("fit")
