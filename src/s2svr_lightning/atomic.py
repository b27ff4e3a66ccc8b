"""Atomic outputs: a file or folder appears at its path complete, or not at all.

Every output of the project (checkpoints, ``results.json``, restored videos and frame folders, cached
synthetic clips) is written under a hidden temporary name in the output's own folder and renamed onto
its path when complete. ``os.replace`` is atomic within one filesystem (POSIX ``rename(2)``), which is
why the temporary lives next to the target and not in the system temp dir: Lightning's default
checkpoint writer goes through an fsspec transaction whose temporary file lives there, and a move across
filesystems is a copy that a kill can cut in half. On any exception (``KeyboardInterrupt`` included) the
temporary is removed; a process killed outright can leave only a hidden ``.<name>.partial-...`` entry,
never a file at the output's path.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["AtomicOutput", "atomic_write_bytes", "atomic_write_text", "csv_text", "write_csv", "write_json"]


class AtomicOutput:
    """Write an output file or folder under a temporary name and move it into place only when complete.

    ``with AtomicOutput(path) as tmp: <write tmp>`` commits on a clean exit. The temporary sibling is named
    ``.<stem>.partial-<pid>-<random><suffix>``: hidden, clearly marked as partial, unique to the writer,
    and with the output's extension kept so that a container format chosen from it (``.mp4``) still is.

    Args:
        path: the final output path.
        overwrite: replace an existing ``path``; otherwise an existing one raises ``FileExistsError``.
        is_dir: the output is a folder (of PNG frames, say) rather than a file.
        make_parents: create ``path``'s folder if missing (otherwise a missing one is an error).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        is_dir: bool = False,
        make_parents: bool = False,
    ) -> None:
        self.path = Path(path)
        self.overwrite = bool(overwrite)
        self.is_dir = bool(is_dir)
        self.make_parents = bool(make_parents)
        self.tmp: Path | None = None
        self.committed = False

    def check(self) -> None:
        """Raise early if the output exists (without ``overwrite``) or its folder does not."""
        if self.path.exists() or self.path.is_symlink():
            if not self.overwrite:
                raise FileExistsError(f"output {self.path} already exists; pass --overwrite to replace it")
            if self.path.is_dir() != self.is_dir:
                what = "a folder" if self.path.is_dir() else "a file"
                raise FileExistsError(f"output {self.path} exists and is {what}; refusing to replace it")
        parent = self.path.parent
        if self.make_parents:
            parent.mkdir(parents=True, exist_ok=True)
        elif not parent.is_dir():
            raise FileNotFoundError(f"output folder {parent} does not exist")

    def __enter__(self) -> Path:
        self.check()
        self.committed = False
        name = f".{self.path.stem}.partial-{os.getpid()}-{secrets.token_hex(4)}{self.path.suffix}"
        self.tmp = self.path.parent / name
        if self.is_dir:
            self.tmp.mkdir()
        else:
            # created here (exclusively, with the umask's permissions) so the name is ours alone
            os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        return self.tmp

    def commit(self) -> None:
        """Move the finished temporary onto ``path`` (replacing it when ``overwrite``)."""
        if self.tmp is None:
            raise RuntimeError("expected commit() inside the with-block, got it outside")
        self.check()
        if self.is_dir and self.path.exists():
            # os.replace cannot replace a non-empty folder: move the old one aside first
            trash = self.path.parent / f".{self.path.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(self.path, trash)
            os.replace(self.tmp, self.path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)
        self.committed = True
        _fsync_dir(self.path.parent)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and not self.committed:
                self.commit()
        finally:
            if not self.committed and self.tmp is not None:
                _remove(self.tmp)


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, fsync it, then rename it onto ``path``
    (replacing an existing file; missing folders are created; a ``file://`` prefix is accepted)."""
    out = AtomicOutput(Path(str(path).removeprefix("file://")), overwrite=True, make_parents=True)
    with out as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_write_bytes`."""
    data = text.encode("utf-8")
    atomic_write_bytes(path, lambda f: f.write(data))


def write_json(path: str | os.PathLike, data: Any, *, finite: bool = True) -> None:
    """``data`` as indented JSON at ``path``, atomically; numbers JSON has no type for (numpy, tensor
    scalars) are written as floats.

    With ``finite`` (the default), NaN and infinity become ``null``, as strict JSON readers need (a
    zero-second run's frames/s, say); ``finite=False`` keeps Python's ``NaN`` / ``Infinity`` tokens, which
    ``json.loads`` reads back as floats (the pipeline's ``results.json`` and stage metrics).
    """
    text = json.dumps(_finite(data) if finite else data, indent=2, default=float) + "\n"
    atomic_write_text(path, text)


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as CSV, the ``columns`` present in any row (absent cells empty); floats in full precision
    (``repr``) so that scores read back exactly. The one CSV writer of score files (the test stage's and
    ``s2svr-score``'s ``per_frame.csv`` / ``per_sequence.csv``)."""
    present = [c for c in columns if any(c in r for r in rows)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(present)
    for row in rows:
        writer.writerow([repr(v) if isinstance(v, float) else v for v in (row.get(c, "") for c in present)])
    return buf.getvalue()


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """:func:`csv_text` of ``rows`` at ``path``, atomically."""
    atomic_write_text(path, csv_text(rows, columns))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # persist the rename itself (not supported everywhere)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
