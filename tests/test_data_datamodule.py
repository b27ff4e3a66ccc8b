"""VideoRestorationDataModule: batches, per-stage overrides, chunked evaluation, DDP shards, bad arguments."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DistributedSampler

from s2svr_lightning.data import DatasetError, VideoRestorationDataModule, shard_sequences
from s2svr_lightning.data.datasets.clips import chunk_windows
from s2svr_lightning.models.warp import flow_warp


@pytest.mark.parametrize("task, lq_side", [("vsr", 8), ("deblur", 32), ("cve", 32)])
def test_synthetic_training_batches(synthetic_datamodule, task, lq_side):
    dm = synthetic_datamodule(task)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["lq"].shape == (2, 4, 3, lq_side, lq_side) and batch["hq"].shape == (2, 4, 3, 32, 32)
    assert batch["flow"].shape == (2, 3, 2, 32, 32) and batch["flow_valid"].shape == (2, 3, 1, 32, 32)
    assert (
        batch["lq"].dtype == batch["hq"].dtype == torch.float32
        and 0 <= batch["hq"].min() <= batch["hq"].max() <= 1
    )
    assert len(batch["key"]) == 2 and batch["key"][0].startswith("synthetic/train/")
    # the flow still describes the augmented, cropped frames
    hq, flow, valid = batch["hq"][0], batch["flow"][0], batch["flow_valid"][0]
    err = ((flow_warp(hq[1:], flow) - hq[:-1]).abs() * valid).sum() / (3 * valid.sum())
    assert err < 0.03


def test_overrides_for_flow_stages(synthetic_datamodule):
    dm = synthetic_datamodule("vsr")
    dm.setup("fit")
    dm.num_frames, dm.batch_size = 2, 3  # plain attributes, read when the loader is made
    assert next(iter(dm.train_dataloader()))["hq"].shape == (3, 2, 3, 32, 32)
    pairs = dm.with_overrides(num_frames=2, crop_size=64, batch_size=1)
    assert next(iter(pairs.train_dataloader()))["hq"].shape == (1, 2, 3, 64, 64)
    assert pairs.source("train") is dm.source("train")  # listed and validated once
    mirrored = dm.with_overrides(num_frames=2, mirror=True, hflip=False)
    assert next(iter(mirrored.train_dataloader()))["hq"].shape[1] == 4  # 2 frames played back and forth
    assert not mirrored.train_dataset().augment.hflip and dm.train_dataset().augment.hflip  # dm unchanged
    with pytest.raises(ValueError, match="cannot override"):
        dm.with_overrides(task="cve")
    with pytest.raises(ValueError, match="multiple of 4"):
        dm.with_overrides(crop_size=30)
    dm.num_frames = 9
    with pytest.raises(DatasetError, match="synthetic/train/0000 has 6 frames"):
        dm.train_dataloader()


def test_chunk_windows_score_every_frame_once():
    for length, chunk, overlap in [(10, 4, 1), (11, 5, 2), (7, 3, 0), (5, 8, 2), (9, 4, 3)]:
        windows = chunk_windows(length, chunk, overlap)
        scored = [f for start, stop, lo, hi in windows for f in range(lo, hi)]
        assert sorted(scored) == list(range(length))
        assert all(
            start <= lo <= hi <= stop and stop - start == min(chunk, length)
            for start, stop, lo, hi in windows
        )
        assert windows[-1][1] == length
    with pytest.raises(ValueError, match="overlap < chunk"):
        chunk_windows(10, 4, 4)


def test_chunked_validation_samples(synthetic_datamodule):
    dm = synthetic_datamodule("vsr", val_chunk=4, val_overlap=2, dataset={"val_sequences": 1})
    dm.setup("validate")
    samples = list(dm.val_dataloader())
    assert [s["frames"][0].tolist() for s in samples] == [[0, 1, 2, 3], [2, 3, 4, 5]]
    assert all(s["key"] == ["synthetic/val/0000"] for s in samples)
    scored = torch.cat([s["frames"][0][s["score"][0]] for s in samples])
    assert scored.tolist() == [0, 1, 2, 3, 4, 5]
    whole = synthetic_datamodule("vsr", dataset={"val_sequences": 1})
    whole.setup("validate")
    full = next(iter(whole.val_dataloader()))
    assert torch.equal(full["hq"][0, 2:6], samples[1]["hq"][0])  # chunks are cut from the same sequence


@pytest.mark.parametrize("world", [2, 3])
def test_eval_shards_partition_an_odd_number_of_sequences(synthetic_datamodule, world):
    dm = synthetic_datamodule("vsr", val_chunk=4, val_overlap=1, dataset={"val_sequences": 5})
    dm.setup("validate")
    seen = []
    for rank in range(world):
        dm.set_shard(rank, world)
        loader = dm.val_dataloader()
        assert isinstance(loader.sampler, DistributedSampler)  # so Lightning does not wrap it (and pad)
        seen.append([(s["key"][0], tuple(s["frames"][0].tolist())) for s in loader])
    flat = [item for shard in seen for item in shard]
    assert len(flat) == len(set(flat)) == len(dm.val_dataset())  # no duplicates, nothing missing
    for shard in seen:  # chunks of a sequence stay on one rank
        keys = {k for k, _ in shard}
        assert all(k not in {kk for other in seen if other is not shard for kk, _ in other} for k in keys)
    assert shard_sequences([5, 5, 5, 5, 5], 2) == [[0, 2, 4], [1, 3]]
    assert sorted(sum(shard_sequences([9, 1, 1, 1, 7], 3), [])) == [0, 1, 2, 3, 4]


def test_train_loader_under_ddp_gives_disjoint_shares(synthetic_datamodule):
    dm = synthetic_datamodule("vsr", samples_per_epoch=8, batch_size=2)
    dm.setup("fit")
    shares = []
    for rank in range(2):
        dm.set_shard(rank, 2)
        sampler = dm.train_dataloader().sampler
        assert isinstance(sampler, DistributedSampler) and sampler.shuffle
        shares.append(list(sampler))
    assert sorted(shares[0] + shares[1]) == list(range(8))


class _KeyRecorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.keys = []

    def training_step(self, batch, _):
        return ((batch["hq"].mean() - self.w) ** 2).mean()

    def validation_step(self, batch, _):
        self.keys.append(batch["key"][0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_runs_on_the_datamodule(synthetic_datamodule, tmp_path):
    dm = synthetic_datamodule("cve", dataset={"val_sequences": 3})
    model = _KeyRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert model.keys == ["synthetic/val/0000", "synthetic/val/0001", "synthetic/val/0002"]


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="expected task"):
        VideoRestorationDataModule(task="sr")
    with pytest.raises(ValueError, match="scale"):
        VideoRestorationDataModule(task="deblur", scale=4)
    with pytest.raises(ValueError, match="expected dataset name"):
        VideoRestorationDataModule(dataset={"name": "kitti"})
    with pytest.raises(ValueError, match="unknown synthetic dataset options"):
        VideoRestorationDataModule(dataset={"name": "synthetic", "hieght": 64})
    with pytest.raises(ValueError, match="bad options for the reds dataset"):
        VideoRestorationDataModule(dataset={"name": "reds", "root": ".", "partitoin": "reds4"})
    with pytest.raises(ValueError, match="val_chunk"):
        VideoRestorationDataModule(val_chunk=4, val_overlap=4)
    with pytest.raises(ValueError, match="batch_size"):
        VideoRestorationDataModule(batch_size=0)
    dm = VideoRestorationDataModule(dataset={"name": "synthetic", "size": 64}, crop_size=128)
    with pytest.raises(DatasetError, match="64x64 frames, smaller than crop_size=128"):
        dm.setup("fit")


def test_datasets_survive_pickling_for_worker_processes(synthetic_datamodule):
    import pickle

    dm = synthetic_datamodule("cve")
    dm.setup("fit")
    dataset = dm.val_dataset()
    first = dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))  # spawn-started workers receive a pickled copy
    assert clone.source._memory == {}  # the render cache is not shipped
    again = clone[0]
    assert torch.equal(again["lq"], first["lq"]) and torch.equal(again["flow"], first["flow"])
