"""DDP on 2 CPU processes (gloo, spawned) equals one process on the same global batch.

One training step: the all-reduced gradients of both ranks equal the single process's gradients, and so
do the weights after the step. Validation right after: 3 held-out sequences sharded 2 + 1 without padding,
PSNR synced by torchmetrics at ``compute``, equal to the single process's value over the 3 sequences.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from s2svr_lightning.data import VideoRestorationDataModule
from s2svr_lightning.lit.restorer import RestorerModule

TINY = {"channels": 8, "num_blocks": 1, "num_layers": 1}


class Clips(Dataset):
    """Two fixed VSR clips: under DDP rank r gets clip r (Lightning's unshuffled DistributedSampler)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.hq = torch.rand(2, 3, 3, 64, 64, generator=g)
        self.lq = torch.nn.functional.avg_pool2d(self.hq.flatten(0, 1), 4).view(2, 3, 3, 16, 16)

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict:
        return {"lq": self.lq[i], "hq": self.hq[i], "key": f"clip{i}"}


class Data(L.LightningDataModule):
    """Fixed training clips; validation from the synthetic DataModule (3 sequences, sharded per rank)."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        dataset = {"name": "synthetic", "size": 64, "frames": 3, "train_sequences": 1, "val_sequences": 3}
        self.inner = VideoRestorationDataModule(
            dataset=dataset, task="vsr", num_frames=3, crop_size=64, batch_size=1
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Clips(), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        self.inner.trainer = self.trainer  # the rank and world size of the evaluation shard
        return self.inner.val_dataloader()


class GradDump(L.Callback):
    """Save every parameter's gradient just before the optimizer step (after DDP's all-reduce)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        torch.save(grads, Path(self.folder) / f"grads_rank{trainer.global_rank}_of{trainer.world_size}.pt")


def _fit(module: RestorerModule, folder: Path, *, devices: int) -> dict[str, float]:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_steps=1,
        val_check_interval=1,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[GradDump(str(folder))],
        default_root_dir=str(folder),
    )
    trainer.fit(module, datamodule=Data(batch_size=2 // devices))
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


@pytest.mark.slow
def test_one_ddp_step_on_two_processes_equals_one_process_step(tmp_path):
    torch.manual_seed(0)
    single = RestorerModule(model="s2svr_vsr", model_overrides=TINY, flow_freeze_steps=0, total_steps=10)
    ddp = copy.deepcopy(single)
    single_val = _fit(single, tmp_path, devices=1)
    ddp_val = _fit(ddp, tmp_path, devices=2)

    ref = torch.load(tmp_path / "grads_rank0_of1.pt", weights_only=True)
    rank0 = torch.load(tmp_path / "grads_rank0_of2.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "grads_rank1_of2.pt", weights_only=True)
    assert ref.keys() == rank0.keys() == rank1.keys()
    assert any(k.startswith("net.flownet.") for k in ref)  # the flow net trains too (no freeze here)
    for name in ref:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)  # one all-reduced gradient
        torch.testing.assert_close(rank0[name], ref[name], rtol=1e-4, atol=1e-7, msg=name)
    for (name, a), b in zip(single.state_dict().items(), ddp.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)  # weights returned from rank 0

    # every sequence and frame counted once across the two shards (2 + 1 sequences)
    assert single_val["val/num_sequences"] == ddp_val["val/num_sequences"] == 3
    assert single_val["val/num_frames"] == ddp_val["val/num_frames"] == 9
    assert ddp_val["val/psnr"] == pytest.approx(single_val["val/psnr"], abs=1e-4)
    assert ddp_val["val/baseline_psnr"] == pytest.approx(single_val["val/baseline_psnr"], abs=1e-6)
