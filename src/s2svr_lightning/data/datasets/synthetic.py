"""Built-in synthetic video with exact optical flow: the library's out-of-the-box training data.

A scene is a stack of layers, each a texture moved over the frame by its own smooth similarity transform
(rotation, zoom, translation that drift and wiggle over time):

- the background: a photograph shipped inside the scikit-image wheel (no download), seen by a camera on a
  random smooth trajectory;
- 1-3 sprites: patches cut from another photograph, elliptic or rounded-rectangular with hard (1 px) or
  soft (a few px) edges, each moving independently over the background.

Every layer maps frame pixel ``p`` at time ``t`` to texture coordinates ``q = A(t) p + b(t)``, so the flow of
a layer from time ``t1`` to ``t2`` is the affine map ``p -> A(t2)^-1 (A(t1) p + b(t1) - b(t2))`` minus ``p``,
exact at every pixel. A pixel's flow is that of the top layer covering it; it is *valid* where that layer
covers it fully (no soft edge) and, at the flow's target in the next frame, the same layer is again the
fully covering top layer (no occlusion, not out of frame), so ``flow_warp(hq[t+1], flow[t]) == hq[t]`` up to
interpolation error on valid pixels. The scenes are :mod:`~s2svr_lightning.data.datasets.synthetic_scene`.

Motion is set in the input's pixels, like real footage's: each scene draws its speed from a log-normal
around ``lq_motion`` LQ px per frame (x ``scale`` HQ px for VSR), sprites their own, and a ``shake``
share of it is back-and-forth (handheld shake) rather than drift; drift that would need a photograph
enlarged beyond its resolution becomes shake. At the defaults the VSR video moves about 1.6-2.0 LQ px per
frame on average with a p99 of 5-10 (``benchmarks/motion.py``; REDS is estimated at 1-3, 5-10+ in fast
clips). Before, it moved a third of an LQ pixel, and alignment had little to gain.

Frames are rendered with bicubic sampling and stored as 8-bit like real datasets. LQ per task: ``vsr``
MATLAB-bicubic x4; ``deblur`` the mean of ``blur_frames`` sub-frames spread over the exposure around each
frame time (the sharp target is the sub-frame at the frame time), in scenes that move ``blur_motion``
(by default 5x ``max(2, 3 % of the shorter side)`` px, the excess over ``lq_motion`` as shake) so that
the blur is about as strong as GoPro's (its blurred inputs score about 26 dB against the sharp frames;
moving about a pixel per frame, the synthetic ones scored 39.6 dB at 64 px); ``cve`` HEVC low-delay P
at QP 37.

Degraded input against the HQ frames (RGB PSNR, 3 held-out sequences of 30 frames, seed 0; ``python
benchmarks/ablation.py --lq-psnr [--size 128]``): at 64 px vsr (bicubic x4
upsampling) 26.9 dB, deblur 26.5 dB, cve 26.4 dB; at 128 px 26.7, 23.6 and 27.5 dB.
Sequences are deterministic in ``(seed, split, index)``; validation and test use other seeds *and* other
photographs than training. Rendered sequences are kept in an in-memory LRU and, if ``cache_dir`` is set,
on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ...atomic import atomic_write_bytes
from ...models.warp import pixel_grid
from ...task import TASK_KINDS, Task
from ...utils import to_float_frames, to_uint8_frames
from ..degradations import degrade
from ..errors import DatasetError
from .base import Crop, SequenceSource
from .synthetic_scene import HELDOUT_PHOTOS, TRAIN_PHOTOS, SyntheticScene

__all__ = ["HELDOUT_PHOTOS", "TRAIN_PHOTOS", "SyntheticConfig", "SyntheticDataset", "SyntheticSource"]

# SyntheticConfig fields that a SyntheticDataset takes from its task's degradation, by the kind they serve
_FROM_TASK = {"blur_frames": "deblur", "qp": "cve"}
_SPLITS = {"train": 0, "val": 1, "test": 2}
_CACHE_VERSION = 3  # 2: deblur scenes move blur_motion; 3: motion in LQ px, shake, log-normal speeds


@dataclass(frozen=True)
class SyntheticConfig:
    """Options of the synthetic dataset (all plain data, usable from a Hydra config).

    Attributes:
        height, width: HQ frame size (divisible by ``scale`` for VSR).
        frames: frames per sequence.
        train_sequences, val_sequences, test_sequences: sequences per split.
        blur_frames: sub-frames averaged per blurred frame (deblur): 13, below a pixel apart at the
            default blur motion of 64 px frames, so the blur is a smear rather than ghosts.
        exposure: fraction of the frame interval the shutter is open (deblur).
        qp: HEVC QP (cve).
        lq_motion: the median speed of the scenes in *LQ* px per frame (2: real handheld footage such
            as REDS moves about 1-3 LQ px per frame on average, 5-10 in fast clips). Each scene draws
            its own speed around it (``motion_spread``), sprites move on their own; measured by
            ``benchmarks/motion.py``. VSR scenes move ``scale`` times as many HQ px.
        max_motion: the same median in HQ px per frame, overriding ``lq_motion`` (None: from it).
        motion_spread: sigma of the log-normal of the scenes' speeds (the long tail of fast clips).
        shake: the share of the speed spent as back-and-forth wiggles (handheld shake) rather than steady
            drift, for every task; drift that would need a photograph enlarged beyond its resolution
            (long sequences, large frames) becomes shake too, so textures stay sharp.
        blur_motion: the speed of the deblur task's scenes (default: 5x ``max(2, 3% of the shorter
            side)``: 10 px per frame at 64 px, 19 px at 128 px), since the blur is the motion during
            the exposure; the part above the median speed is added as shake, so the scenes' range, and
            with it the sharpness of the photographs they show, does not depend on the length.
        num_sprites: ``(min, max)`` moving sprites per scene.
        cache_size: sequences kept in memory (per process).
        cache_dir: optional folder for rendered sequences, shared by processes and runs.
    """

    height: int = 128
    width: int = 128
    frames: int = 20
    train_sequences: int = 32
    val_sequences: int = 3
    test_sequences: int = 3
    blur_frames: int = 13
    exposure: float = 1.0
    qp: int = 37
    lq_motion: float = 2.5
    max_motion: float | None = None
    motion_spread: float = 0.6
    shake: float = 0.5
    blur_motion: float | None = None
    num_sprites: tuple[int, int] = (1, 3)
    cache_size: int = 64
    cache_dir: str | None = None

    def motion(self, task: str = "vsr", scale: int | None = None) -> float:
        """The scenes' median speed in HQ px per frame for ``task`` (``scale``: the VSR factor, 4)."""
        if task == "deblur" and self.blur_motion is not None:
            return self.blur_motion
        if task == "deblur":
            return 5.0 * max(2.0, 0.03 * min(self.height, self.width))
        if self.max_motion is not None:
            return self.max_motion
        return self.lq_motion * ((scale or 4) if task == "vsr" else 1)


class SyntheticSource(SequenceSource):
    """One split of the synthetic dataset (see the module docstring).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        task: ``"vsr"``, ``"deblur"`` or ``"cve"``: which LQ is made.
        scale: VSR factor (1 for the other tasks).
        seed: base seed; sequence ``i`` of a split is determined by ``(seed, split, i)``.
        config: :class:`SyntheticConfig`.
    """

    has_flow = True

    def __init__(
        self, split: str, *, task: str, scale: int = 4, seed: int = 0, config: SyntheticConfig
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"expected split in {tuple(_SPLITS)}, got {split!r}")
        if task not in TASK_KINDS:
            raise ValueError(f"expected task in {TASK_KINDS}, got {task!r}")
        self.split, self.task, self.seed, self.config = split, task, int(seed), config
        self.scale = scale if task == "vsr" else 1
        c = config
        if c.height % self.scale or c.width % self.scale or min(c.height, c.width) < 16:
            raise ValueError(
                f"expected synthetic frames of at least 16x16 divisible by the scale {self.scale}, "
                f"got {c.height}x{c.width}"
            )
        if c.frames < 2:
            raise ValueError(f"expected at least 2 frames per synthetic sequence, got {c.frames}")
        if task == "deblur" and (c.blur_frames < 1 or not 0.0 < c.exposure <= 1.0):
            raise ValueError(
                f"expected blur_frames >= 1 and 0 < exposure <= 1, got {c.blur_frames}, {c.exposure}"
            )
        lo, hi = c.num_sprites
        if c.lq_motion < 0 or (c.max_motion or 0) < 0 or c.motion_spread < 0 or not 0 <= c.shake <= 1:
            raise ValueError(
                "expected lq_motion >= 0, max_motion >= 0, motion_spread >= 0 and 0 <= shake <= 1, got "
                f"{c.lq_motion}, {c.max_motion}, {c.motion_spread}, {c.shake} (e.g. dataset.lq_motion=2)"
            )
        if not 0 <= lo <= hi:
            raise ValueError(f"expected num_sprites = (min, max) with 0 <= min <= max, got {c.num_sprites}")
        self._count = {"train": c.train_sequences, "val": c.val_sequences, "test": c.test_sequences}[split]
        self._memory: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    # -- SequenceSource -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def key(self, index: int) -> str:
        return f"synthetic/{self.split}/{index:04d}"

    def length(self, index: int) -> int:
        return self.config.frames

    def size(self, index: int) -> tuple[int, int]:
        return self.config.height, self.config.width

    def describe(self) -> str:
        return f"synthetic {self.split} split ({self._count} sequences)"

    def validate(self, verify: str = "header") -> None:
        if self._count < 1:
            raise DatasetError(f"the synthetic {self.split} split is empty: set {self.split}_sequences >= 1")
        if self.config.cache_dir is not None:
            try:
                os.makedirs(self.config.cache_dir, exist_ok=True)
            except OSError as err:
                raise DatasetError(
                    f"cannot create the synthetic cache folder {self.config.cache_dir}: {err}"
                ) from err

    def load(self, index: int, start: int, stop: int, crop: Crop | None = None) -> dict[str, torch.Tensor]:
        if not 0 <= index < self._count:
            raise IndexError(f"sequence {index} out of range for {self.describe()}")
        seq = self.sequence(index)
        t = slice(start, stop)
        f = slice(start, max(start, stop - 1))
        out = {
            "lq": seq["lq"][t],
            "hq": seq["hq"][t],
            "flow": seq["flow"][f],
            "flow_valid": seq["flow_valid"][f],
            "flow_bwd": seq["flow_bwd"][f],
            "flow_bwd_valid": seq["flow_bwd_valid"][f],
        }
        if crop is not None:
            top, left, h, w = crop
            s = self.scale
            for name, value in out.items():
                if name == "lq":
                    out[name] = value[..., top // s : (top + h) // s, left // s : (left + w) // s]
                else:
                    out[name] = value[..., top : top + h, left : left + w]
        out["lq"] = to_float_frames(out["lq"])
        out["hq"] = to_float_frames(out["hq"])
        out["flow_valid"] = out["flow_valid"].float()
        out["flow_bwd_valid"] = out["flow_bwd_valid"].float()
        if crop is not None:  # a target outside the crop is no longer visible
            out["flow_valid"] = out["flow_valid"] * _inside(out["flow"])
            out["flow_bwd_valid"] = out["flow_bwd_valid"] * _inside(out["flow_bwd"])
        return out

    # -- generation -----------------------------------------------------------------------------
    def scene(self, index: int) -> SyntheticScene:
        """The scene of sequence ``index`` (deterministic)."""
        c = self.config
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index, 0x5325])
        photos = TRAIN_PHOTOS if self.split == "train" else HELDOUT_PHOTOS
        half = 0.5 * c.exposure if self.task == "deblur" else 0.0
        # deblur scenes move like the cve ones (scale 1) plus the exposure's shake
        base = c.motion("cve") if self.task == "deblur" else c.motion(self.task, self.scale)
        return SyntheticScene.random(
            rng,
            height=c.height,
            width=c.width,
            photos=photos,
            duration=(-half, c.frames - 1 + half),
            speed=base,
            # deblur: the extra speed as shake, so the blur's strength does not depend on the length
            extra_shake=max(0.0, c.motion(self.task, self.scale) - base),
            shake=c.shake,
            spread=c.motion_spread,
            num_sprites=tuple(c.num_sprites),
        )

    def sequence(self, index: int) -> dict[str, torch.Tensor]:
        """The full stored sequence: ``hq``/``lq`` uint8, ``flow``/``flow_bwd`` float32, validity bool."""
        with self._lock:
            if index in self._memory:
                self._memory.move_to_end(index)
                return self._memory[index]
        path = self._disk_path(index)
        seq = None
        if path is not None and os.path.exists(path):
            try:
                seq = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a partial or stale file: render again
                seq = None
        if seq is None:
            seq = self.render(index)
            if path is not None:
                atomic_write_bytes(path, lambda f: torch.save(seq, f))
        with self._lock:
            self._memory[index] = seq
            while len(self._memory) > max(0, self.config.cache_size):
                self._memory.popitem(last=False)
        return seq

    def render(self, index: int) -> dict[str, torch.Tensor]:
        """Render sequence ``index`` from scratch (no cache)."""
        with (
            _single_thread()
        ):  # many small ops: threads only add synchronisation (10-100x slower on a busy CPU)
            return self._render(index)

    def _render(self, index: int) -> dict[str, torch.Tensor]:
        c = self.config
        scene = self.scene(index)
        times = np.arange(c.frames, dtype=np.float64)
        hq, label, pure = scene.render(times)
        hq_u8 = to_uint8_frames(hq)
        if self.task == "deblur":
            # a real exposure: the scene rendered at blur_frames instants around each frame time and
            # averaged, so every frame keeps its exact flow (degrade's sub-frame averaging would make one
            # LQ frame per window of HQ frames instead)
            k = c.blur_frames
            offsets = c.exposure * (np.arange(k) / (k - 1) - 0.5) if k > 1 else np.zeros(1)
            lq = torch.stack([scene.render(t + offsets)[0].mean(0) for t in times])
        else:  # the stored 8-bit HQ frames, degraded as every dataset degrades them
            lq = degrade(self.task, to_float_frames(hq_u8), scale=self.scale, qp=c.qp)
        lq_u8 = to_uint8_frames(lq)
        fwd, fwd_valid, bwd, bwd_valid = [], [], [], []
        for t in range(c.frames - 1):
            f, v = scene.flow(times[t], times[t + 1], label[t], pure[t], label[t + 1], pure[t + 1])
            b, bv = scene.flow(times[t + 1], times[t], label[t + 1], pure[t + 1], label[t], pure[t])
            fwd.append(f), fwd_valid.append(v.bool()), bwd.append(b), bwd_valid.append(bv.bool())
        return {
            "hq": hq_u8,
            "lq": lq_u8,
            "flow": torch.stack(fwd),
            "flow_valid": torch.stack(fwd_valid),
            "flow_bwd": torch.stack(bwd),
            "flow_bwd_valid": torch.stack(bwd_valid),
        }

    def _disk_path(self, index: int) -> str | None:
        if self.config.cache_dir is None:
            return None
        cfg = asdict(self.config)
        cfg.pop("cache_dir"), cfg.pop("cache_size")
        ident = json.dumps(
            [_CACHE_VERSION, cfg, self.task, self.scale, self.seed, self.split, index], sort_keys=True
        )
        digest = hashlib.sha1(ident.encode()).hexdigest()[:16]
        return os.path.join(self.config.cache_dir, f"synthetic-{self.split}-{index:04d}-{digest}.pt")

    def __getstate__(self) -> dict:  # DataLoader workers get an empty memory cache and a fresh lock
        state = self.__dict__.copy()
        state["_memory"] = OrderedDict()
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _inside(flow: torch.Tensor) -> torch.Tensor:
    """``(n, 1, H, W)``: 1 where ``p + flow(p)`` lies inside the frame (``(n, 2, H, W)`` flow)."""
    h, w = flow.shape[-2:]
    target = pixel_grid(h, w, device=flow.device, dtype=flow.dtype) + flow
    x, y = target[:, 0:1], target[:, 1:2]
    return ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).float()


@contextlib.contextmanager
def _single_thread():
    previous = torch.get_num_threads()
    if previous > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous > 1:
            torch.set_num_threads(previous)


class SyntheticDataset:
    """The ``synthetic`` dataset entry: options -> one :class:`SyntheticSource` per split.

    Options are the fields of :class:`SyntheticConfig` (``height``, ``width``, ``frames``,
    ``train_sequences``, ``val_sequences``, ``test_sequences``, ``exposure``, ``lq_motion``,
    ``max_motion``, ``motion_spread``, ``shake``, ``blur_motion``, ``num_sprites``, ``cache_size``,
    ``cache_dir``) plus ``size`` as a shortcut for a square ``height = width``. ``blur_frames`` and ``qp``
    are no options of the dataset: they are the task's ``degradation`` (the one place that says how LQ is
    made; :meth:`Task.degradation_option <s2svr_lightning.task.Task.degradation_option>`).
    """

    name = "synthetic"

    def __init__(self, *, task: Task, seed: int = 0, size: int | None = None, **options) -> None:
        if not isinstance(task, Task):
            raise ValueError(f"expected a Task, got {type(task).__name__}")
        fields = set(SyntheticConfig.__dataclass_fields__) - set(_FROM_TASK)
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(
                f"unknown synthetic dataset options {unknown}; expected some of {sorted(fields | {'size'})}"
            )
        if size is not None:
            options.setdefault("height", int(size))
            options.setdefault("width", int(size))
        if "num_sprites" in options:
            lo_hi = options["num_sprites"]
            options["num_sprites"] = (
                (int(lo_hi), int(lo_hi)) if isinstance(lo_hi, int) else tuple(int(x) for x in lo_hi)
            )
        # how LQ is made: the task's degradation (the options of its kind; the others keep their defaults)
        for key, kind in _FROM_TASK.items():
            if task.kind == kind:
                options[key] = task.degradation_option(key)
        self.config = SyntheticConfig(**options)
        self.task, self.scale, self.seed, self.spec = task.kind, task.scale, seed, task

    def check(self) -> None:
        """Nothing on disk to check: the photographs ship with scikit-image."""

    def source(self, split: str) -> SyntheticSource:
        return SyntheticSource(split, task=self.task, scale=self.scale, seed=self.seed, config=self.config)
