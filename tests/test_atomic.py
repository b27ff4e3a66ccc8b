"""Atomic outputs: nothing appears at the output's path until it is complete, nothing partial is left."""

from __future__ import annotations

import pytest

from s2svr_lightning.atomic import AtomicOutput, atomic_write_bytes, atomic_write_text


def test_atomic_output_is_invisible_until_committed(tmp_path):
    target = tmp_path / "result.mp4"
    with AtomicOutput(target) as tmp:
        tmp.write_bytes(b"data")
        assert tmp.parent == tmp_path and tmp.suffix == ".mp4" and "partial" in tmp.name
        assert not target.exists()
    assert target.read_bytes() == b"data" and not tmp.exists()
    with pytest.raises(FileExistsError, match="--overwrite"):
        AtomicOutput(target).check()
    with pytest.raises(RuntimeError):
        with AtomicOutput(target, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"data" and not tmp.exists()


def test_a_folder_output_replaces_the_old_folder_whole(tmp_path):
    target = tmp_path / "frames"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with AtomicOutput(target, overwrite=True, is_dir=True) as tmp:
        (tmp / "new.png").write_bytes(b"new")
        assert (target / "old.png").exists()
    assert sorted(p.name for p in target.iterdir()) == ["new.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]  # no temporary, no old copy left
    with pytest.raises(FileExistsError, match="is a folder"):
        AtomicOutput(target, overwrite=True).check()  # a file may not replace a folder


def test_missing_output_folder_is_an_error_unless_asked_to_create_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AtomicOutput(tmp_path / "no" / "out.mp4").check()
    atomic_write_text(tmp_path / "a" / "b" / "results.json", "{}\n")
    assert (tmp_path / "a" / "b" / "results.json").read_text() == "{}\n"


def test_atomic_write_bytes_keeps_the_previous_file_when_writing_fails(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_write_bytes(f"file://{target}", lambda f: f.write(b"complete"))
    assert target.read_bytes() == b"complete"

    def fail(f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, fail)
    assert target.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
