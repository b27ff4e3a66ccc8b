"""RestorerModule: flow-net initialisation and freeze, optimiser and schedule, checkpoints, NaN, metrics."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from s2svr_lightning.checkpoint import read_checkpoint
from s2svr_lightning.lit.guards import NonFiniteError
from s2svr_lightning.lit.restorer import RestorerModule
from s2svr_lightning.metrics import psnr, ssim
from s2svr_lightning.models import build_model, pwclite
from s2svr_lightning.task import Task

TINY = {"channels": 8, "num_blocks": 1, "num_layers": 1}


class FixedClips(Dataset):
    """``n`` fixed random VSR clips (T=3, LQ 16x16, HQ 64x64); optionally a NaN in the first."""

    def __init__(self, n: int = 2, *, nan: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.hq = torch.rand(n, 3, 3, 64, 64, generator=g)
        self.lq = torch.nn.functional.avg_pool2d(self.hq.flatten(0, 1), 4).view(n, 3, 3, 16, 16)
        if nan:
            self.lq[0, 1, 0, 3, 3] = float("nan")

    def __len__(self) -> int:
        return len(self.hq)

    def __getitem__(self, i: int) -> dict:
        return {"lq": self.lq[i], "hq": self.hq[i], "key": f"clip{i}"}


def _trainer(tmp_path, **kw) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    defaults.update(kw)
    return L.Trainer(**defaults)


def _student_checkpoint(path, flownet) -> None:
    """A checkpoint shaped as the student stage writes it (flow net under ``flownet.``, a teacher beside)."""
    state = {f"flownet.{k}": v for k, v in flownet.state_dict().items()}
    state.update({f"teacher.{k}": torch.zeros_like(v) for k, v in flownet.state_dict().items()})
    torch.save({"s2svr_kind": "student", "state_dict": state}, path)


def test_flownet_starts_from_student_and_stays_frozen_then_trains(tmp_path):
    torch.manual_seed(0)
    student = pwclite()
    ckpt = tmp_path / "student.ckpt"
    _student_checkpoint(ckpt, student)
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY, flow_init=str(ckpt), flow_freeze_steps=1)
    student_flat = torch.cat([p.detach().flatten() for p in student.parameters()])
    own_flat = torch.cat([p.detach().flatten() for p in module.net.flownet.parameters()])
    assert not torch.equal(own_flat, student_flat)  # nothing is loaded before fit starts

    snapshots = []

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            flow = torch.cat([p.detach().flatten() for p in pl_module.net.flownet.parameters()])
            rest = torch.cat([p.detach().flatten() for p in pl_module.net.encoder.parameters()])
            snapshots.append((flow.clone(), rest.clone()))

    start_rest = torch.cat([p.detach().flatten() for p in module.net.encoder.parameters()]).clone()
    trainer = _trainer(tmp_path, max_steps=2, callbacks=[Snapshot()], limit_val_batches=0)
    trainer.fit(module, DataLoader(FixedClips(2), batch_size=1))
    # step 0: flow net = the student's exactly (loaded at fit start, no update while frozen)
    assert torch.equal(snapshots[0][0], student_flat)
    assert not torch.equal(snapshots[0][1], start_rest)  # the rest of the network trained
    # step 1: the freeze is over, the flow net moves
    assert not torch.equal(snapshots[1][0], student_flat)


def test_load_flownet_rejects_other_checkpoints(tmp_path):
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY)
    bad = tmp_path / "restorer.ckpt"
    torch.save({"s2svr_kind": "restorer", "state_dict": {}}, bad)
    with pytest.raises(ValueError, match="student or teacher"):
        module.load_flownet(bad)
    with pytest.raises(FileNotFoundError, match="student stage"):
        module.load_flownet(tmp_path / "missing.ckpt")


def test_optimizer_groups_betas_and_cosine_schedule():
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY, total_steps=10, lr=2e-4, flow_lr=5e-5)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["restorer"]["lr"] == pytest.approx(2e-4) and groups["flownet"]["lr"] == pytest.approx(5e-5)
    assert groups["restorer"]["betas"] == (0.9, 0.99)
    n_flow = sum(p.numel() for p in groups["flownet"]["params"])
    assert n_flow == sum(p.numel() for p in module.net.flownet.parameters())
    assert n_flow + sum(p.numel() for p in groups["restorer"]["params"]) == sum(
        p.numel() for p in module.net.parameters()
    )
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    half = [1e-7 + (b - 1e-7) * (1 + math.cos(math.pi * 5 / 10)) / 2 for b in (2e-4, 5e-5)]
    assert lrs[4] == pytest.approx(half)
    assert lrs[-1] == pytest.approx([1e-7, 1e-7])


def test_checkpoint_reloads_alone_with_task_settings(tmp_path):
    module = RestorerModule(
        model="s2svr_vsr",
        model_overrides=TINY,
        degradation={"name": "bicubic", "scale": 4},
        flow_freeze_steps=0,
    )
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, DataLoader(FixedClips(1), batch_size=1))
    path = tmp_path / "r.ckpt"
    trainer.save_checkpoint(path)
    read_checkpoint(path, kind="restorer")
    loaded = RestorerModule.load_from_checkpoint(path, weights_only=True)
    assert (loaded.hparams.kind, loaded.hparams.scale) == ("vsr", 4)
    assert loaded.hparams.degradation == {"name": "bicubic", "scale": 4}
    x = FixedClips(1).lq[:1]
    module.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(module(x), loaded(x))


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY, flow_freeze_steps=0)
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    with pytest.raises(NonFiniteError, match=r"restorer loss at step 0 .*clip0"):
        trainer.fit(module, DataLoader(FixedClips(1, nan=True), batch_size=1))


def test_validation_scores_output_and_bicubic_baseline(tmp_path):
    torch.manual_seed(1)
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY, metrics={"y_channel": True})
    data = FixedClips(2)
    trainer = _trainer(tmp_path)
    logged = trainer.validate(module, DataLoader(data, batch_size=1), verbose=False)[0]
    module.eval()
    with torch.no_grad():
        out = module(data.lq)
    seq_psnr = psnr(out, data.hq, y_channel=True).view(2, 3).mean(1).mean()
    seq_ssim = ssim(out, data.hq, y_channel=True).view(2, 3).mean(1).mean()
    bicubic = torch.nn.functional.interpolate(data.lq.flatten(0, 1), scale_factor=4, mode="bicubic")
    base = psnr(bicubic.clamp(0, 1).view_as(data.hq), data.hq, y_channel=True).view(2, 3).mean(1).mean()
    assert logged["val/psnr"] == pytest.approx(seq_psnr.item(), abs=1e-4)
    assert logged["val/ssim"] == pytest.approx(seq_ssim.item(), abs=1e-6)
    assert logged["val/baseline_psnr"] == pytest.approx(base.item(), abs=1e-4)
    assert logged["val/num_sequences"] == 2


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="expected scale 4 for the vsr task, got 1"):
        RestorerModule(model="s2svr_vsr", model_overrides=TINY, scale=1)
    with pytest.raises(ValueError, match="kind"):
        RestorerModule(model="s2svr_vsr", model_overrides=TINY, kind="denoise")
    assert Task(kind="cve").baseline(torch.zeros(1, 2, 3, 16, 16)).shape == (1, 2, 3, 16, 16)


def test_mirror_protocol_averages_the_forward_and_mirrored_halves():
    from s2svr_lightning.lit.restorer import mirrored_forward

    def causal_mean(x):  # output t = mean of inputs 0..t: a causal "restorer"
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1, 1, 1)
        return x.cumsum(1) / steps

    lq = torch.arange(4, dtype=torch.float32).view(1, 4, 1, 1, 1).expand(1, 4, 3, 2, 2)
    out = mirrored_forward(causal_mean, lq)
    mirrored = torch.tensor([0.0, 1, 2, 3, 3, 2, 1, 0])
    running = mirrored.cumsum(0) / torch.arange(1, 9)
    expected = 0.5 * (running[:4] + running[4:].flip(0))
    assert out.shape == lq.shape
    assert torch.allclose(out[0, :, 0, 0, 0], expected)
    # the centre frames differ from one causal pass: the mirrored half has seen the whole clip
    assert not torch.allclose(out, causal_mean(lq))
    with pytest.raises(ValueError, match="eval_protocol"):
        RestorerModule(model="s2svr_deblur", eval_protocol="both")


def test_bf16_mixed_training_step_on_cpu(tmp_path):
    """precision="bf16-mixed" (hardware=cpu_bf16): convolutions in bfloat16, the loss in float32."""
    torch.manual_seed(0)
    module = RestorerModule(model="s2svr_vsr", model_overrides=TINY, flow_freeze_steps=0, total_steps=2)
    dtypes = {}

    def record(name):
        def hook(module, inputs, output):  # returns None: the output stays as it is
            dtypes.setdefault(name, (output[0] if isinstance(output, tuple) else output).dtype)

        return hook

    module.net.head.register_forward_hook(record("head"))
    module.net.flownet.register_forward_hook(record("flow"))
    losses = []
    original = module.training_step

    def recording_step(batch, batch_idx):
        loss = original(batch, batch_idx)
        losses.append(loss.detach())
        return loss

    module.training_step = recording_step
    trainer = _trainer(tmp_path, precision="bf16-mixed", max_steps=2, limit_val_batches=0)
    trainer.fit(module, DataLoader(FixedClips(2), batch_size=1))
    assert dtypes == {"head": torch.bfloat16, "flow": torch.bfloat16}
    assert [loss.dtype for loss in losses] == [torch.float32, torch.float32]
    assert all(torch.isfinite(loss) for loss in losses)
    assert all(p.dtype == torch.float32 for p in module.parameters())  # fp32 weights, bf16 compute
    # the bf16 step lands near the fp32 one: same data, same initial weights
    torch.manual_seed(0)
    fp32 = RestorerModule(model="s2svr_vsr", model_overrides=TINY, flow_freeze_steps=0, total_steps=2)
    batch = FixedClips(2)[0]
    lq, hq = batch["lq"][None], batch["hq"][None]
    with torch.no_grad():
        reference = float(torch.sqrt((fp32(lq) - hq).square() + 1e-12).mean())
    assert abs(float(losses[0]) - reference) < 0.02 * reference


def test_checkpointed_restorer_trains_and_its_checkpoint_restores_without_it(tmp_path):
    from s2svr_lightning.checkpoint import load_restorer

    torch.manual_seed(0)
    module = RestorerModule(
        model="s2svr_vsr", model_overrides={**TINY, "checkpointing": "step_flow"}, flow_freeze_steps=1
    )
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)  # frozen flow net, then trained
    trainer.fit(module, DataLoader(FixedClips(2), batch_size=1))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    path = tmp_path / "r.ckpt"
    trainer.save_checkpoint(path)
    net, _ = load_restorer(path)  # the hyperparameters rebuild the net, checkpointing included
    assert net.checkpointing == "step_flow" and not net.training
    x = FixedClips(1).lq[:1]
    plain = build_model("s2svr_vsr", **TINY, flow_input=net.flow_input).eval()
    plain.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(net(x), plain(x))


def test_restorer_module_compiles_for_training_only(tmp_path):
    # aot_eager: Dynamo and AOTAutograd's graphs without inductor's minutes of code generation
    torch.manual_seed(0)
    module = RestorerModule(
        model="s2svr_vsr", model_overrides=TINY, flow_freeze_steps=0, total_steps=1, compile="aot_eager"
    )
    assert module.compiled is not None and "compile" not in module.hparams  # a run-time choice
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, DataLoader(FixedClips(1), batch_size=1))
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and module.compiled.failed is None
    path = tmp_path / "r.ckpt"
    trainer.save_checkpoint(path)
    assert RestorerModule.load_from_checkpoint(path, weights_only=True).compiled is None
