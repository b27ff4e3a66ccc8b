"""Checkpoints without Lightning: clear errors, kind checks, sub-networks, a restorer's net and task."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from s2svr_lightning.checkpoint import check_kind, load_restorer, read_checkpoint, sub_state_dict
from s2svr_lightning.task import Task


def test_missing_corrupt_and_foreign_files_are_clear_errors(tmp_path, restorer_ckpt):
    with pytest.raises(FileNotFoundError, match=r"teacher checkpoint .*nope.ckpt does not exist .*teacher"):
        read_checkpoint(tmp_path / "nope.ckpt", kind="teacher", what="teacher checkpoint")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(restorer_ckpt.read_bytes()[:4000])
    with pytest.raises(ValueError, match="cannot read checkpoint .*cut.ckpt"):
        read_checkpoint(cut)
    listed = tmp_path / "list.ckpt"
    torch.save([1, 2], listed)
    with pytest.raises(ValueError, match="expected a Lightning checkpoint \\(a dict\\) .* got list"):
        read_checkpoint(listed)


def test_kind_check_says_which_checkpoint_to_pass():
    assert check_kind({"s2svr_kind": "student"}, ("student", "teacher"), "s.ckpt") == "student"
    with pytest.raises(ValueError, match="s.ckpt is a student optical-flow checkpoint; restore needs"):
        check_kind({"s2svr_kind": "student"}, "restorer", "s.ckpt")
    with pytest.raises(ValueError, match=r"expected a teacher checkpoint .*got s2svr_kind=None"):
        check_kind({}, "teacher", "x.ckpt")


def test_sub_state_dict_strips_the_prefix_and_names_the_file_when_empty():
    state = {"net.flownet.w": torch.ones(1), "net.head.b": torch.zeros(1), "teacher.w": torch.ones(2)}
    ckpt = {"state_dict": state}
    assert sorted(sub_state_dict(ckpt, "net.")) == ["flownet.w", "head.b"]
    assert list(sub_state_dict(state, "net.flownet.")) == ["w"]  # a bare state dict works too
    assert sub_state_dict(ckpt, "flownet.") == {}
    with pytest.raises(ValueError, match=r"expected flownet.\* weights in a.ckpt, found none"):
        sub_state_dict(ckpt, "flownet.", path="a.ckpt")


def test_load_restorer_rebuilds_the_lightning_module_network_and_task(restorer_ckpt):
    from s2svr_lightning.lit.restorer import RestorerModule

    net, task = load_restorer(restorer_ckpt)
    module = RestorerModule.load_from_checkpoint(restorer_ckpt, map_location="cpu", weights_only=True)
    assert task == Task(kind="vsr", scale=4)
    assert not net.training
    x = torch.rand(1, 3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), module.net.eval()(x))


def test_load_restorer_refuses_a_flow_checkpoint(tmp_path, save_checkpoint):
    from s2svr_lightning.lit import TeacherFlowModule

    path = save_checkpoint(TeacherFlowModule(), tmp_path / "teacher.ckpt")
    with pytest.raises(ValueError, match="teacher optical-flow checkpoint; restore needs the restorer"):
        load_restorer(path)


def test_restore_never_imports_lightning(restorer_ckpt):
    code = (
        "import sys; from s2svr_lightning.checkpoint import load_restorer; import s2svr_lightning.restore; "
        f"load_restorer({str(restorer_ckpt)!r}); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightning' or '.lit' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", ["teacher", "student", "restorer"])
def test_saving_a_checkpoint_leaves_the_random_stream_alone(kind):
    """A checkpoint written between two epochs must not change the clips drawn after it: the training
    clips come from the global RNG, and a save that builds a network to check its options (as one did)
    draws initial weights from it, so that training with checkpoints differed from training without."""
    from conftest import TINY_RESTORER

    from s2svr_lightning.lit import RestorerModule, StudentFlowModule, TeacherFlowModule

    options = {"min_level_size": 8}
    module = {
        "teacher": lambda: TeacherFlowModule(flownet_overrides=options),
        "student": lambda: StudentFlowModule(
            init_from_teacher=False, w_dis=0.0, scale=4, flownet_overrides=options
        ),
        "restorer": lambda: RestorerModule(model="s2svr_vsr", model_overrides=TINY_RESTORER, total_steps=1),
    }[kind]()
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["s2svr_flow"]["options"]["min_level_size"] == (8 if kind != "restorer" else 1)
    assert torch.equal(torch.rand(4), expected)
