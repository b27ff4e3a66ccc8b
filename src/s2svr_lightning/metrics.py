"""Restoration and flow metrics with the benchmark conventions, as BasicSR computes the numbers the
paper's tables compare with (``basicsr/metrics/psnr_ssim.py``: ``calculate_psnr``, ``calculate_ssim``).

Every restoration score goes through one path, :func:`prepare`: clamp and round to 8 bits (outputs are
saved as 8-bit images before the benchmarks score them), optional BT.601 limited-range Y channel, optional
border crop, float64. On top of it:

- :func:`psnr`: per-frame ``10 log10(1 / MSE)`` on the [0, 1] scale (= BasicSR's ``255^2 / MSE`` on 0-255),
  in float64, capped at :data:`PSNR_MAX` (below);
- :func:`ssim`: per-frame SSIM with an 11x11 Gaussian window (sigma 1.5), ``C1 = 0.01^2``, ``C2 = 0.03^2``
  on the [0, 1] scale, averaged over the *valid* region only (5 px dropped from each side of the SSIM map),
  as the reference MATLAB code and BasicSR do, per channel then averaged;
- :class:`VideoMetrics`: a torchmetrics accumulator giving per-frame score -> mean per sequence -> mean over
  sequences (or frames pooled, the CDVD-TSP convention for GoPro), synchronised across DDP ranks at
  ``compute()``, with optional baseline scores (bicubic upsampling or the degraded input) and their deltas
  (the paper's Table 3 reports delta PSNR / delta SSIM against the compressed input);
- :func:`endpoint_error` for optical flow.

Identical frames (the rule for every PSNR the library reports): a frame whose prediction equals the
reference has MSE 0 and an infinite PSNR, and one such frame turns a clip's mean into ``inf`` (JSON has no
``inf``: it became ``null``). That is common, not a corner case: a clip that fades in from black has
frames where bicubic upsampling (or the compressed input) equals the reference exactly. So :func:`psnr`
caps every frame's PSNR at ``PSNR_MAX = 60`` dB. Why 60 and why a cap: the scores are taken on 8-bit
frames, and 8-bit rounding alone leaves an error of variance ``(1/255)^2 / 12``, which is 58.9 dB; a frame
above 60 dB is as close to its reference as 8 bits can tell, so all such frames are scored alike. Real
restorations score far below it (the benchmarks: 25-40 dB), so the cap changes no benchmark number, and
each frame's score stays a per-frame score (a clip's pooled MSE would be another convention, not the
benchmarks' mean of per-frame PSNRs). libvmaf caps 8-bit PSNR at the same 60 dB. The cap is applied here
only: the test stage (:class:`VideoMetrics`), ``s2svr-restore --reference/--degrade``, ``s2svr-score`` and
every JSON written from them read it from :func:`psnr`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

# The library's one BT.601 limited-range conversion (Y = 16 + 65.481 R + 128.553 G + 24.966 B on the 0-255
# scale for RGB in [0, 1], not rounded); not kornia's full-range rgb_to_ycbcr, which scores differently.
from s2svr_lightning.color import rgb_to_y
from s2svr_lightning.utils import expect_shape, to_uint8_frames

__all__ = [
    "PSNR_MAX",
    "SequenceMetric",
    "VideoMetrics",
    "crop_border",
    "endpoint_error",
    "prepare",
    "psnr",
    "quantize_8bit",
    "rgb_to_y",
    "ssim",
]

PSNR_MAX = 60.0
"""dB: the PSNR of identical frames, and the most any frame scores (the module's docstring says why)."""

_SSIM_KERNEL = 11
_SSIM_SIGMA = 1.5
_REDUCTIONS = ("sequence", "frame")


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the nearest of the 256 levels of an 8-bit image (same dtype)."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def crop_border(x: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels from each side of the last two dimensions."""
    if border < 0:
        raise ValueError(f"expected border >= 0, got {border}")
    if border == 0:
        return x
    h, w = x.shape[-2:]
    if h <= 2 * border or w <= 2 * border:
        raise ValueError(f"expected frames larger than twice the border {border}, got {h}x{w}")
    return x[..., border:-border, border:-border]


def _as_frames(x: torch.Tensor, name: str) -> torch.Tensor:
    """``(3, H, W)``, ``(N, 3, H, W)`` or ``(B, T, 3, H, W)`` -> ``(N, 3, H, W)``."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    elif x.dim() == 5:
        x = x.flatten(0, 1)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(
            f"expected {name} of shape (B, T, 3, H, W), (N, 3, H, W) or (3, H, W), got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"expected {name} float in [0, 1], got dtype {x.dtype}")
    return x


def prepare(
    x: torch.Tensor, *, y_channel: bool = False, border: int = 0, quantize: bool = True
) -> torch.Tensor:
    """Frames as benchmarks score them: 8-bit rounding, Y or RGB, border crop, float64 ``(N, C, H, W)``."""
    x = _as_frames(x, "x")
    if quantize:
        # Round to levels in float32 as BasicSR's tensor2img does (x * 255 can fall on the other side of .5
        # in float64), then divide in float64 so that each level is the exact float64 value of k / 255.
        x = to_uint8_frames(x).double() / 255.0
    else:
        x = x.double()
    if y_channel:
        x = rgb_to_y(x)
    return crop_border(x, border)


def _prepare_pair(
    pred: torch.Tensor, target: torch.Tensor, y_channel: bool, border: int, quantize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    pred_f, target_f = _as_frames(pred, "pred"), _as_frames(target, "target")
    if pred_f.shape != target_f.shape:
        raise ValueError(
            f"expected pred and target of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    # The ground truth is an 8-bit image already; rounding it again is a no-op there and keeps float
    # targets (synthetic data) on the same footing as the rounded output.
    return (
        prepare(pred_f, y_channel=y_channel, border=border, quantize=quantize),
        prepare(target_f, y_channel=y_channel, border=border, quantize=quantize),
    )


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    y_channel: bool = False,
    border: int = 0,
    quantize: bool = True,
) -> torch.Tensor:
    """Per-frame PSNR in dB, float64 ``(N,)`` for ``N`` frames, at most :data:`PSNR_MAX` (identical
    frames score ``PSNR_MAX``, never ``inf``: the module's docstring says why).

    Args:
        pred, target: ``(B, T, 3, H, W)``, ``(N, 3, H, W)`` or ``(3, H, W)`` float RGB in [0, 1].
        y_channel: score the BT.601 limited-range Y channel (Vimeo-90K-T, compressed video) instead of RGB.
        border: pixels cropped from each side before scoring.
        quantize: round both to 8 bits first (the benchmark convention).
    """
    p, t = _prepare_pair(pred, target, y_channel, border, quantize)
    # One MSE per frame (a pooled MSE over the batch is a different, wrong number for video benchmarks).
    # Written out rather than torchmetrics' functional, whose float32 log(10) factor costs ~3e-6 dB.
    mse = (p - t).square().mean(dim=(1, 2, 3))
    return (10.0 * torch.log10(1.0 / mse)).clamp(max=PSNR_MAX)  # MSE 0: inf -> PSNR_MAX


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    y_channel: bool = False,
    border: int = 0,
    quantize: bool = True,
) -> torch.Tensor:
    """Per-frame SSIM, float64 ``(N,)``: 11x11 Gaussian window (sigma 1.5) over the valid region only
    (the positions where the window lies inside the image, the reference MATLAB code's
    ``filter2(..., 'valid')``). Arguments as :func:`psnr`.
    """
    p, t = _prepare_pair(pred, target, y_channel, border, quantize)
    h, w = p.shape[-2:]
    if h < _SSIM_KERNEL or w < _SSIM_KERNEL:
        raise ValueError(
            f"expected frames of at least {_SSIM_KERNEL}x{_SSIM_KERNEL} after the border crop, got {h}x{w}"
        )
    mu_p, mu_t = _gaussian_valid(p), _gaussian_valid(t)
    var_p = _gaussian_valid(p * p) - mu_p * mu_p
    var_t = _gaussian_valid(t * t) - mu_t * mu_t
    cov = _gaussian_valid(p * t) - mu_p * mu_t
    c1, c2 = 0.01**2, 0.03**2
    numerator = (2 * mu_p * mu_t + c1) * (2 * cov + c2)
    ssim_map = numerator / ((mu_p * mu_p + mu_t * mu_t + c1) * (var_p + var_t + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def _gaussian_valid(x: torch.Tensor) -> torch.Tensor:
    """``x`` filtered by the 11x11 Gaussian (sigma 1.5, summing to 1) where the window lies inside the
    frame: MATLAB's ``filter2(window, x, 'valid')``, ``(N, C, H - 10, W - 10)``.

    The window is the outer product of a 1-D Gaussian, so it is applied as 11 shifted rows then 11 shifted
    columns, accumulated in place: memory a few frames' worth. (torchmetrics' 2-D float64 convolution, used
    before, took about 1 GB more and seconds on the CPU for one 512x384 RGB frame.)
    """
    k = _SSIM_KERNEL
    taps = [math.exp(-0.5 * ((i - k // 2) / _SSIM_SIGMA) ** 2) for i in range(k)]
    taps = [v / sum(taps) for v in taps]
    h, w = x.shape[-2:]
    rows = x[..., : h - k + 1, :] * taps[0]
    for i in range(1, k):
        rows.add_(x[..., i : h - k + 1 + i, :], alpha=taps[i])
    out = rows[..., : w - k + 1] * taps[0]
    for i in range(1, k):
        out.add_(rows[..., i : w - k + 1 + i], alpha=taps[i])
    return out


def sequence_id(key: str) -> int:
    """A stable signed 64-bit id of a sequence key (the same in every process, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


class SequenceMetric(Metric):
    """What the video accumulators share (:class:`VideoMetrics`,
    :class:`~s2svr_lightning.temporal.TemporalMetrics`): the task's conventions, per-frame states (sequence
    ids, frame indices and one list per score, concatenated across DDP ranks) and the names behind the ids.

    Args:
        scores: the names of the per-frame score states.
        y_channel, border, reduction: the task's metric conventions.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(
        self, *, scores: Sequence[str], y_channel: bool, border: int, reduction: str, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if reduction not in _REDUCTIONS:
            raise ValueError(f"expected reduction in {_REDUCTIONS}, got {reduction!r}")
        if border < 0:
            raise ValueError(f"expected border >= 0, got {border}")
        self.y_channel, self.border, self.reduction = bool(y_channel), int(border), reduction
        for name in ("seq_ids", "frame_ids", *scores):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._names: dict[int, str] = {}

    @staticmethod
    def _batch_keys(
        out: torch.Tensor, ref: torch.Tensor, keys: Sequence[str] | str, names: tuple[str, str]
    ) -> list[str]:
        """``keys`` as a list, one per sequence, after checking ``out`` and ``ref`` (named ``names``)."""
        expect_shape(out, "(B, T, 3, H, W)", names[0])
        if ref.shape != out.shape:
            raise ValueError(
                f"expected {names[0]} and {names[1]} of one shape, got {tuple(out.shape)} and "
                f"{tuple(ref.shape)}"
            )
        b = out.shape[0]
        keys = [keys] if isinstance(keys, str) else list(keys)
        if len(keys) != b:
            raise ValueError(f"expected {b} keys for a batch of {b} sequences, got {len(keys)}")
        return keys

    def _state(self, name: str) -> torch.Tensor:
        """A per-frame state as one tensor (a list of batch tensors until a sync concatenates it)."""
        value = getattr(self, name)
        if isinstance(value, list):
            return torch.cat(value) if value else torch.empty(0, device=self.device)
        return value

    def _all_names(self) -> dict[int, str]:
        """The sequence names of every rank (under DDP every rank must call it)."""
        names = dict(self._names)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[dict[int, str] | None] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self._names)
            for part in gathered:
                names.update(part or {})
        return names


class VideoMetrics(SequenceMetric):
    """PSNR and SSIM of restored videos: per frame, then mean per sequence, then mean over sequences.

    ``update`` takes whole sequences or chunks of them; frames are grouped by their sequence ``key``, so
    chunks of one sequence (even on different DDP ranks) count as one sequence. Give ``frame_index`` when
    chunks overlap: a frame scored twice is then counted once (the first score is kept). States are
    per-frame lists concatenated across ranks at ``compute()``, so the result is exact under DDP as long
    as no rank scores padded duplicates (use an unpadded sampler).

    Args:
        y_channel: score the BT.601 limited-range Y channel instead of RGB.
        border: pixels cropped from each side before scoring.
        reduction: ``"sequence"`` (mean per sequence, then over sequences: REDS4, Vimeo, MFQE, BasicSR's
            GoPro) or ``"frame"`` (all frames pooled: CDVD-TSP's GoPro numbers).
        quantize: round outputs and targets to 8 bits before scoring.
    """

    higher_is_better = True

    def __init__(
        self,
        *,
        y_channel: bool = False,
        border: int = 0,
        reduction: str = "sequence",
        quantize: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            scores=("psnr", "ssim", "base_psnr", "base_ssim"),
            y_channel=y_channel,
            border=border,
            reduction=reduction,
            **kwargs,
        )
        self.quantize = bool(quantize)

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        keys: Sequence[str] | str,
        *,
        baseline: torch.Tensor | None = None,
        frame_index: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> None:
        """Score a batch of sequences.

        Args:
            pred: ``(B, T, 3, H, W)`` restored frames in [0, 1].
            target: ``(B, T, 3, H, W)`` ground truth.
            keys: ``B`` sequence keys (a str when ``B == 1``).
            baseline: optional ``(B, T, 3, H, W)`` reference restoration (bicubic upsampling, the degraded
                input) scored the same way, for ``baseline_*`` and ``delta_*``.
            frame_index: optional ``(B, T)`` or ``(T,)`` integer position of each frame in its sequence.
            mask: optional ``(B, T)`` or ``(T,)`` bool, the frames to score (the DataModule's ``score``:
                the owned part of a chunk, or a benchmark's subset such as Vimeo-90K-T's centre frame).
        """
        keys = self._batch_keys(pred, target, keys, ("pred", "target"))
        if baseline is not None and baseline.shape != target.shape:
            raise ValueError(f"expected baseline of shape {tuple(target.shape)}, got {tuple(baseline.shape)}")
        b, t = pred.shape[:2]
        ids = torch.tensor([sequence_id(k) for k in keys], dtype=torch.int64, device=self.device)
        for key, sid in zip(keys, ids.tolist()):
            self._names[sid] = key
        ids = ids.repeat_interleave(t)
        if frame_index is None:
            frames = torch.full((b * t,), -1, dtype=torch.int64, device=self.device)
        else:
            frames = torch.as_tensor(frame_index, device=self.device).to(torch.int64).expand(b, t).reshape(-1)
        keep = None
        if mask is not None:
            keep = torch.as_tensor(mask, device=pred.device).to(torch.bool).expand(b, t).reshape(-1)
            ids, frames = ids[keep.to(self.device)], frames[keep.to(self.device)]
            if ids.numel() == 0:
                return

        def frames_of(x: torch.Tensor) -> torch.Tensor:
            x = x.flatten(0, 1)
            return x if keep is None else x[keep]

        kw = {"y_channel": self.y_channel, "border": self.border, "quantize": self.quantize}
        p, tg = frames_of(pred), frames_of(target)
        self.seq_ids.append(ids)
        self.frame_ids.append(frames)
        self.psnr.append(psnr(p, tg, **kw).to(self.device))
        self.ssim.append(ssim(p, tg, **kw).to(self.device))
        if baseline is not None:
            base = frames_of(baseline)
            self.base_psnr.append(psnr(base, tg, **kw).to(self.device))
            self.base_ssim.append(ssim(base, tg, **kw).to(self.device))
        else:
            nan = torch.full((ids.numel(),), float("nan"), dtype=torch.float64, device=self.device)
            self.base_psnr.append(nan)
            self.base_ssim.append(nan.clone())

    def _frames(self) -> dict[str, torch.Tensor]:
        """The synced per-frame states, duplicates (same sequence and frame index) removed."""
        names = ("seq_ids", "frame_ids", "psnr", "ssim", "base_psnr", "base_ssim")
        states = {n: self._state(n) for n in names}
        if states["seq_ids"].numel() == 0:
            raise ValueError("expected at least one scored frame, got none: was update() called?")
        known = states["frame_ids"] >= 0
        if bool(known.any()):
            pairs = torch.stack((states["seq_ids"], states["frame_ids"]), dim=1)
            keep = torch.ones_like(known)
            seen: set[tuple[int, int]] = set()
            for i, (s, f) in enumerate(pairs.tolist()):
                if f < 0:
                    continue
                if (s, f) in seen:
                    keep[i] = False
                seen.add((s, f))
            states = {n: v[keep] for n, v in states.items()}
        return states

    @staticmethod
    def _reduce(values: torch.Tensor, groups: torch.Tensor, reduction: str) -> torch.Tensor:
        if reduction == "frame":
            return values.mean()
        _, inverse = torch.unique(groups, return_inverse=True)
        n = int(inverse.max()) + 1
        sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, inverse, values)
        counts = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(
            0, inverse, torch.ones_like(values)
        )
        return (sums / counts).mean()

    def compute(self) -> dict[str, torch.Tensor]:
        """``psnr``, ``ssim``, ``num_sequences``, ``num_frames`` and, when baselines were given,
        ``baseline_psnr``, ``baseline_ssim``, ``delta_psnr``, ``delta_ssim``."""
        s = self._frames()
        out = {
            "psnr": self._reduce(s["psnr"], s["seq_ids"], self.reduction),
            "ssim": self._reduce(s["ssim"], s["seq_ids"], self.reduction),
            "num_sequences": torch.tensor(float(torch.unique(s["seq_ids"]).numel()), dtype=torch.float64),
            "num_frames": torch.tensor(float(s["seq_ids"].numel()), dtype=torch.float64),
        }
        has_base = ~torch.isnan(s["base_psnr"])
        if bool(has_base.all()):
            out["baseline_psnr"] = self._reduce(s["base_psnr"], s["seq_ids"], self.reduction)
            out["baseline_ssim"] = self._reduce(s["base_ssim"], s["seq_ids"], self.reduction)
            out["delta_psnr"] = out["psnr"] - out["baseline_psnr"]
            out["delta_ssim"] = out["ssim"] - out["baseline_ssim"]
        return out

    def _synced_frames(self) -> tuple[dict[str, torch.Tensor], dict[int, str]]:
        """Per-frame states and sequence names gathered over all ranks (every rank must call it)."""
        with self.sync_context():  # no-op outside DDP; restores the local states afterwards
            s = self._frames()
        return s, self._all_names()

    def per_sequence(self) -> dict[str, dict[str, float]]:
        """``{key: {"psnr", "ssim", "frames"}}`` per sequence, over all ranks (plus ``baseline_psnr`` and
        ``baseline_ssim`` when baselines were given).

        Under DDP every rank must call it (states and sequence names are gathered across ranks).
        """
        s, names = self._synced_frames()
        result: dict[str, dict[str, float]] = {}
        for sid in torch.unique(s["seq_ids"]).tolist():
            mask = s["seq_ids"] == sid
            row = {
                "psnr": float(s["psnr"][mask].mean()),
                "ssim": float(s["ssim"][mask].mean()),
                "frames": int(mask.sum()),
            }
            if not bool(torch.isnan(s["base_psnr"][mask]).any()):
                row["baseline_psnr"] = float(s["base_psnr"][mask].mean())
                row["baseline_ssim"] = float(s["base_ssim"][mask].mean())
            result[names.get(sid, str(sid))] = row
        return result

    def per_frame(self) -> list[dict[str, str | int | float]]:
        """One row per scored frame, over all ranks, sorted by sequence key then frame:
        ``{"sequence", "frame", "psnr", "ssim"}`` (plus ``baseline_psnr`` and ``baseline_ssim`` when
        baselines were given). ``frame`` is the ``frame_index`` given to :meth:`update` (-1 without one).

        Each frame appears once (the first score of a frame scored twice, as in :meth:`compute`). Under DDP
        every rank must call it.
        """
        s, names = self._synced_frames()
        rows = []
        for i, (sid, frame) in enumerate(zip(s["seq_ids"].tolist(), s["frame_ids"].tolist())):
            row: dict[str, str | int | float] = {
                "sequence": names.get(sid, str(sid)),
                "frame": int(frame),
                "psnr": float(s["psnr"][i]),
                "ssim": float(s["ssim"][i]),
            }
            base = float(s["base_psnr"][i])
            if base == base:  # not NaN: a baseline was scored
                row["baseline_psnr"] = base
                row["baseline_ssim"] = float(s["base_ssim"][i])
            rows.append(row)
        return sorted(rows, key=lambda r: (r["sequence"], r["frame"]))


def endpoint_error(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Average end-point error ``mean ||pred - gt||_2`` over (valid) pixels.

    Args:
        pred: ``(B, 2, H, W)`` predicted flow in pixels.
        gt: ``(B, 2, H, W)`` ground-truth flow in pixels.
        valid: optional ``(B, 1, H, W)`` or ``(B, H, W)`` mask, nonzero where ``gt`` is defined.

    Returns:
        Scalar tensor: the mean EPE over all valid pixels of the batch.
    """
    if pred.dim() != 4 or pred.shape[1] != 2 or pred.shape != gt.shape:
        raise ValueError(
            f"expected pred and gt (B, 2, H, W) of one shape, got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    epe = torch.linalg.vector_norm(pred.float() - gt.float(), dim=1)  # (B, H, W)
    if valid is None:
        return epe.mean()
    if valid.dim() == 4:
        if valid.shape[1] != 1:
            raise ValueError(f"expected valid (B, 1, H, W), got {tuple(valid.shape)}")
        valid = valid[:, 0]
    if valid.shape != epe.shape:
        raise ValueError(
            f"expected valid of shape {tuple(epe.shape)} (or with a channel dim), got {tuple(valid.shape)}"
        )
    mask = valid > 0
    if not bool(mask.any()):
        raise ValueError("expected at least one valid pixel, got an all-zero mask")
    return epe[mask].mean()
