"""MFQEv2: the HEVC QP37 low-delay-P versions of the raw YUV files, in the layout the ``mfqe`` loader reads.

MFQEv2 compresses its lossless 8-bit 4:2:0 videos (``<split>/raw/<Name>_<W>x<H>_<frames>.yuv``) with the
reference encoder HM16.5 in the low-delay P configuration at QP 37. HM is not available here, so the
library's x265 path stands in: the same low-delay P structure (one I frame, then P frames only) at a
constant QP 37 (:func:`~s2svr_lightning.data.degradations.hevc_ldp_yuv420`). Each video is encoded
straight from its memory-mapped YUV file a frame at a time (never whole in memory), decoded, and
written as ``<split>/HM16.5_LDP/QP37/<same name>.yuv`` with its bitstream in ``.../QP37/hevc/<Name>.hevc``;
``ENCODER.txt`` in that folder says which encoder made them (scores on these encodes are not directly
comparable with scores on HM16.5's).
"""

from __future__ import annotations

from pathlib import Path

from ...utils import say
from ..datasets.mfqe import YuvStore
from ..degradations import hevc_ldp_settings, hevc_ldp_yuv420
from ..errors import DatasetError
from .common import CheckReport, SequenceCheck, progress, run_checks

__all__ = ["prepare_mfqe", "check_mfqe", "compressed_folder"]

NOTE = "ENCODER.txt"
LAYOUT = "<root>/{train_108,test_18}/raw/<Name>_<W>x<H>_<frames>.yuv"


def compressed_folder(split_dir: Path, qp: int) -> Path:
    return split_dir / "HM16.5_LDP" / f"QP{qp}"


def _splits(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: MFQEv2 folder not found; expected {LAYOUT}")
    splits = sorted(p for p in root.iterdir() if (p / "raw").is_dir())
    if not splits:
        raise DatasetError(f"{root}: no split folder with a raw/ folder inside; expected {LAYOUT}")
    return splits


def _raw_videos(split: Path) -> list[Path]:
    return sorted(p for p in (split / "raw").iterdir() if p.is_file() and p.suffix.lower() == ".yuv")


def _note(qp: int, preset: str) -> str:
    import av

    params = ":".join(f"{k}={v}" for k, v in hevc_ldp_settings(qp).items())
    return (
        f"HEVC low-delay P encodes at QP {qp} of the videos in ../../raw, made by "
        "`python -m s2svr_lightning.prepare mfqe`.\n"
        f"Encoder: libx265 through PyAV {av.__version__}, NOT HM16.5 (MFQEv2's reference encoder, which is "
        "not available here); the folder keeps the name HM16.5_LDP that the mfqe loader reads.\n"
        f"x265 settings: preset={preset}, x265-params={params}\n"
        "(constant QP for every frame, the I frame included; one I frame then P frames only; no B frames).\n"
        "<Name>.yuv: the decoded 8-bit YUV 4:2:0 frames; hevc/<Name>.hevc: the bitstream (Annex B).\n"
        "Scores on these encodes are not directly comparable with scores on HM16.5 encodes.\n"
    )


def _settings(note: str) -> str:
    return next((line for line in note.splitlines() if line.startswith("x265 settings:")), "")


def _encode(raw: YuvStore, target: Path, bitstream: Path, *, qp: int, preset: str, bar) -> None:
    """Encode ``raw`` into ``target`` (decoded YUV) and ``bitstream``, both written under temporary names in
    their folders and renamed when complete (the bitstream first: the YUV file marks a finished video)."""
    from s2svr_lightning.atomic import atomic_write_bytes

    def stream(yuv_file, hevc_file) -> None:
        frames = (raw.planes(i) for i in range(len(raw)))
        for planes in hevc_ldp_yuv420(frames, qp, preset=preset, bitstream=hevc_file):
            for plane in planes:
                yuv_file.write(plane.tobytes())
            bar.update(1)

    atomic_write_bytes(target, lambda yuv: atomic_write_bytes(bitstream, lambda hevc: stream(yuv, hevc)))


def prepare_mfqe(root: Path, *, qp: int = 37, preset: str = "medium", **_: object) -> None:
    """Encode every raw video that has no complete compressed version yet (resumable, idempotent)."""
    from s2svr_lightning.atomic import atomic_write_bytes

    hevc_ldp_settings(qp)  # a bad QP fails before any work
    todo: list[tuple[YuvStore, Path, Path]] = []
    bad: list[str] = []
    done = 0
    for split in _splits(root):
        out_dir = compressed_folder(split, qp)
        for path in _raw_videos(split):
            try:
                raw = YuvStore(path)
                raw.validate("header")
            except DatasetError as err:
                bad.append(str(err))
                continue
            target, bitstream = out_dir / path.name, out_dir / "hevc" / f"{path.stem}.hevc"
            complete = target.is_file() and target.stat().st_size == len(raw) * raw.frame_bytes
            if complete and bitstream.is_file():
                done += 1
            else:
                todo.append((raw, target, bitstream))
        note, old = _note(qp, preset), (out_dir / NOTE).read_text() if (out_dir / NOTE).is_file() else None
        if old is not None and _settings(old) != _settings(note) and any(out_dir.glob("*.yuv")):
            raise DatasetError(
                f"{out_dir}: holds encodes made with other settings ({_settings(old)}); use the same "
                "--preset, or remove the folder to encode again"
            )
        if _raw_videos(split) and old != note:
            atomic_write_bytes(out_dir / NOTE, lambda f, note=note: f.write(note.encode()))
    if not todo:
        say(f"mfqe at {root}: nothing to do, all {done} videos have their QP{qp} encodes")
    else:
        say(f"mfqe at {root}: encoding {len(todo)} videos at QP{qp} ({done} already done)")
        with progress(None, total=sum(len(r) for r, _, _ in todo), desc=f"mfqe: QP{qp}", unit="frame") as bar:
            for raw, target, bitstream in todo:
                bar.set_postfix_str(Path(raw.path).name, refresh=True)
                _encode(raw, target, bitstream, qp=qp, preset=preset, bar=bar)
    if bad:
        raise DatasetError("raw videos that cannot be encoded:\n" + "\n".join(bad))


def _check_video(raw_path: Path, out_dir: Path, full: bool) -> tuple[int, list[str]]:
    problems, files = [], 0
    for path in (raw_path, out_dir / raw_path.name):
        if not path.is_file():
            problems.append(f"{path}: compressed version of {raw_path.name} missing (run `prepare mfqe`)")
            continue
        files += 1
        try:
            YuvStore(path).validate("full" if full else "header")
        except DatasetError as err:
            problems.append(str(err))
    return files, problems


def check_mfqe(
    root: Path, report: CheckReport, *, qp: int = 37, full: bool = False, workers: int = 8, **_: object
) -> None:
    """Each split's raw videos (size fits the name) and their compressed versions (present, same size)."""
    checks = []
    for split in _splits(root):
        out_dir = compressed_folder(split, qp)
        raw = _raw_videos(split)
        for path in raw:
            checks.append(
                SequenceCheck(
                    split.name, lambda path=path, out_dir=out_dir: _check_video(path, out_dir, full)
                )
            )
        if out_dir.is_dir():
            names = {p.name for p in raw}
            for extra in sorted(p for p in out_dir.glob("*.yuv") if p.name not in names):
                report.add(split.name, problems=[f"{extra}: compressed video without a raw counterpart"])
    run_checks(report, checks, desc="mfqe: check", workers=workers)
