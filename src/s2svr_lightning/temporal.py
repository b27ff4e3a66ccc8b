"""Temporal consistency of restored video: the warping error and tOF, one convention everywhere.

The test stage (:class:`TemporalMetrics`, through the restorer's ``test_temporal``), ``restore --reference
--temporal`` and ``s2svr-score`` all score through :func:`pair_scores`, so a number means the same thing
in each. For each pair of consecutive frames ``(t-1, t)`` of a sequence (the score is reported at frame
``t``; the first frame has none):

- **Warping error** (Lai et al. 2018, "Learning Blind Video Temporal Consistency", Eq. 9): the output
  frame ``t`` is warped back onto frame ``t-1`` with the *reference's* flow ``F_{t-1 -> t}`` (backward
  warp, bilinear: :func:`~s2svr_lightning.models.warp.flow_warp`), and the squared difference to output
  frame ``t-1`` is averaged over the valid pixels and the channels::

      E_warp(t) = sum_p M(p) ||O_{t-1}(p) - O_t(p + F(p))||^2 / (C * sum_p M(p))

  Units: **mean squared error on the [0, 1] scale** (Lai et al.'s convention), of the frames as the
  restoration metrics see them (:func:`~s2svr_lightning.metrics.prepare`: rounded to 8 bits, Y or RGB
  and the border crop of the task). A restorer that copies the reference exactly scores the reference's
  own warping error (interpolation and the 8-bit rounding; zero for static content); flicker raises it
  at the frames where it happens.

  The flow ``F`` and its mask ``M``: the dataset's **exact flow** and validity mask where the data has
  them (the built-in synthetic video: occlusions and out-of-frame targets are known exactly); otherwise
  the flow **estimated on the reference** by a flow estimator, ``M`` the forward-backward consistency
  check (Sundaram et al. 2010, as Ruder et al. 2016 and Lai et al. use it): pixel ``p`` is valid where
  ``|F(p) + B(p + F(p))|^2 <= 0.01 (|F(p)|^2 + |B(p + F(p))|^2) + 0.5`` for the backward flow ``B``,
  and ``p + F(p)`` lies inside the frame. Pixels within the task's ``border`` never count.

- **tOF** (TecoGAN, Chu et al. 2020): the mean end-point distance, in pixels, between the flow the
  estimator finds on the output pair ``(O_{t-1}, O_t)`` and the flow it finds on the reference pair
  ``(R_{t-1}, R_t)``, over every pixel but the border. The same estimator on both, so its own error
  largely cancels; lower is better. (TecoGAN used OpenCV's Farneback flow and reports the mean absolute
  difference x10; ours is the unscaled end-point distance, with the estimator below.)

Flow estimators (``"tvl1"`` or a teacher / student / restorer checkpoint's flow net) live in
:mod:`s2svr_lightning.flow_estimators`, above the checkpoints; these metrics take any ``FlowFn``.

Cost in the test stage (``test.temporal``, :data:`TEMPORAL_MODES`): ``auto`` (the default) scores the
warping error only where the test batches carry exact flow, which costs one warp per frame (nothing where
there is no exact flow); ``warp`` always scores it (estimating the reference's flow where it is not
given); ``full`` adds tOF (the estimator on every output and reference pair); ``off`` scores nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from s2svr_lightning.metrics import SequenceMetric, crop_border, prepare, sequence_id
from s2svr_lightning.models.warp import flow_warp, pixel_grid
from s2svr_lightning.utils import expect_shape

__all__ = [
    "TEMPORAL_MODES",
    "FlowFn",
    "PairStream",
    "TemporalMetrics",
    "consistency_mask",
    "flow_difference",
    "inside_mask",
    "merge_rows",
    "pair_scores",
    "plot_sequence",
    "warping_error",
]

TEMPORAL_MODES = ("off", "auto", "warp", "full")
# forward-backward consistency thresholds (Sundaram et al. 2010; Ruder et al. 2016)
_FB_ALPHA1 = 0.01
_FB_ALPHA2 = 0.5

FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Pair scores
# --------------------------------------------------------------------------------------------------
def inside_mask(flow: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` float, 1 where ``p + flow(p)`` lies inside the frame (``flow`` ``(N, 2, H, W)``)."""
    expect_shape(flow, "(N, 2, H, W)", "flow")
    h, w = flow.shape[-2:]
    target = pixel_grid(h, w, device=flow.device, dtype=flow.dtype) + flow
    x, y = target[:, 0], target[:, 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return inside.unsqueeze(1).to(flow.dtype)


def consistency_mask(
    forward: torch.Tensor, backward: torch.Tensor, *, alpha1: float = _FB_ALPHA1, alpha2: float = _FB_ALPHA2
) -> torch.Tensor:
    """Non-occlusion mask of the forward flow by the forward-backward check, ``(N, 1, H, W)`` float.

    Args:
        forward: ``(N, 2, H, W)`` flow from frame 1 to frame 2, pixels (channel 0 = x).
        backward: ``(N, 2, H, W)`` flow from frame 2 to frame 1.

    A pixel is valid where its target is inside the frame and the backward flow at the target undoes
    the forward flow: ``|F + B'|^2 <= alpha1 (|F|^2 + |B'|^2) + alpha2`` with ``B' = B(p + F(p))``.
    """
    expect_shape(forward, "(N, 2, H, W)", "forward")
    if backward.shape != forward.shape:
        raise ValueError(f"expected backward of shape {tuple(forward.shape)}, got {tuple(backward.shape)}")
    back = flow_warp(backward, forward, padding_mode="border")
    lhs = (forward + back).square().sum(dim=1, keepdim=True)
    rhs = alpha1 * (forward.square().sum(dim=1, keepdim=True) + back.square().sum(dim=1, keepdim=True))
    return (lhs <= rhs + alpha2).to(forward.dtype) * inside_mask(forward)


def warping_error(
    prev: torch.Tensor,
    cur: torch.Tensor,
    flow: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    y_channel: bool = False,
    border: int = 0,
    quantize: bool = True,
) -> torch.Tensor:
    """Per-pair warping error (MSE on [0, 1] over valid pixels and channels), float64 ``(N,)``.

    Args:
        prev, cur: ``(N, 3, H, W)`` frames ``t-1`` and ``t`` in [0, 1] (the output being scored).
        flow: ``(N, 2, H, W)`` flow ``t-1 -> t`` of the reference, pixels (channel 0 = x).
        valid: optional ``(N, 1, H, W)`` mask, nonzero where the flow is valid (default: targets inside
            the frame).
        y_channel, border, quantize: the restoration metrics' conventions
            (:func:`~s2svr_lightning.metrics.prepare`).

    Returns NaN for a pair without a valid pixel.
    """
    expect_shape(prev, "(N, 3, H, W)", "prev")
    expect_shape(flow, "(N, 2, H, W)", "flow")
    if cur.shape != prev.shape or flow.shape[0] != prev.shape[0] or flow.shape[-2:] != prev.shape[-2:]:
        raise ValueError(
            f"expected prev, cur (N, 3, H, W) and flow (N, 2, H, W) of one N, H, W, got {tuple(prev.shape)}, "
            f"{tuple(cur.shape)} and {tuple(flow.shape)}"
        )
    flow = flow.to(device=prev.device, dtype=torch.float64)
    if valid is None:
        valid = inside_mask(flow)
    expect_shape(valid, "(N, 1, H, W)", "valid")
    a = prepare(prev, y_channel=y_channel, quantize=quantize)
    b = flow_warp(prepare(cur, y_channel=y_channel, quantize=quantize), flow)
    mask = crop_border((valid.to(device=a.device, dtype=torch.float64) > 0).double(), border)
    sq = crop_border((a - b).square(), border) * mask
    count = mask.sum(dim=(1, 2, 3)) * a.shape[1]
    err = sq.sum(dim=(1, 2, 3)) / count
    return torch.where(count > 0, err, torch.full_like(err, float("nan")))


def flow_difference(flow_a: torch.Tensor, flow_b: torch.Tensor, *, border: int = 0) -> torch.Tensor:
    """tOF of each pair: mean end-point distance between two flows, pixels, float64 ``(N,)``.

    Args:
        flow_a, flow_b: ``(N, 2, H, W)`` flows (the output's and the reference's, one estimator).
        border: pixels dropped from each side.
    """
    expect_shape(flow_a, "(N, 2, H, W)", "flow_a")
    if flow_b.shape != flow_a.shape:
        raise ValueError(f"expected flows of one shape, got {tuple(flow_a.shape)} and {tuple(flow_b.shape)}")
    d = torch.linalg.vector_norm(flow_a.double() - flow_b.double().to(flow_a.device), dim=1)
    return crop_border(d, border).mean(dim=(1, 2))


def pair_scores(
    out_prev: torch.Tensor,
    out: torch.Tensor,
    ref_prev: torch.Tensor,
    ref: torch.Tensor,
    *,
    flow: torch.Tensor | None = None,
    flow_valid: torch.Tensor | None = None,
    estimator: FlowFn | None = None,
    tof: bool = False,
    y_channel: bool = False,
    border: int = 0,
) -> dict[str, torch.Tensor]:
    """The temporal scores of ``N`` consecutive pairs: ``{"warp_error": (N,), "tof": (N,)}`` float64.

    Args:
        out_prev, out: ``(N, 3, H, W)`` output frames ``t-1`` and ``t`` in [0, 1].
        ref_prev, ref: ``(N, 3, H, W)`` reference (ground-truth) frames ``t-1`` and ``t``.
        flow: optional ``(N, 2, H, W)`` exact reference flow ``t-1 -> t`` (the dataset's); without it the
            flow is estimated on the reference by ``estimator`` and masked by the forward-backward check.
        flow_valid: optional ``(N, 1, H, W)`` validity of ``flow`` (default: targets inside the frame).
        estimator: ``(im1, im2) -> flow 1 -> 2``, ``(N, 3, H, W)`` -> ``(N, 2, H, W)``
            (:mod:`~s2svr_lightning.flow_estimators`); needed without ``flow`` and for ``tof``.
        tof: also score tOF (NaN otherwise).
        y_channel, border: the task's metric conventions.

    Frames are rounded to 8 bits before anything (as the restoration metrics score them), flows included.
    """
    for name, x in (("out_prev", out_prev), ("out", out), ("ref_prev", ref_prev), ("ref", ref)):
        expect_shape(x, "(N, 3, H, W)", name)
        if x.shape != out.shape:
            raise ValueError(f"expected {name} of shape {tuple(out.shape)}, got {tuple(x.shape)}")
    if estimator is None and (flow is None or tof):
        raise ValueError("expected a flow estimator: without exact flow, and for tOF, flow is estimated")

    def q(x: torch.Tensor) -> torch.Tensor:  # the 8-bit frames, float32, for the estimator
        return prepare(x).float()

    ref_flow = None
    if flow is None:
        ref_flow = estimator(q(ref_prev), q(ref))
        flow_valid = consistency_mask(ref_flow, estimator(q(ref), q(ref_prev)))
        flow = ref_flow
    warp = warping_error(out_prev, out, flow, flow_valid, y_channel=y_channel, border=border)
    if tof:
        if ref_flow is None:
            ref_flow = estimator(q(ref_prev), q(ref))
        tof_values = flow_difference(estimator(q(out_prev), q(out)), ref_flow, border=border)
    else:
        tof_values = torch.full_like(warp, float("nan"))
    return {"warp_error": warp, "tof": tof_values.to(warp.device)}


# --------------------------------------------------------------------------------------------------
# The accumulator of the test stage (and of s2svr-score)
# --------------------------------------------------------------------------------------------------
class TemporalMetrics(SequenceMetric):
    """Warping error and tOF of restored videos: per pair ``(t-1, t)`` (reported at frame ``t``), then
    mean per sequence, then mean over sequences (or pooled, as the restoration metrics' ``reduction``).

    ``update`` takes whole sequences or overlapping chunks (as
    :class:`~s2svr_lightning.metrics.VideoMetrics`): frame ``t`` is scored when it is in ``mask`` and
    frame ``t-1`` is in the same chunk, so chunks that overlap by at least one frame score every pair; a
    frame scored twice counts once.

    Args:
        y_channel, border, reduction: the task's metric conventions.
        mode: ``"auto"`` (warping error where ``update`` gets exact flow, nothing otherwise), ``"warp"``
            (the warping error always: exact flow, else the estimator on the reference), ``"full"``
            (warping error and tOF) or ``"off"`` (see the module notes).
        estimator: the flow estimator (:mod:`~s2svr_lightning.flow_estimators`), needed by ``warp``
            without exact flow and by ``full``.
    """

    higher_is_better = False

    def __init__(
        self,
        *,
        y_channel: bool = False,
        border: int = 0,
        reduction: str = "sequence",
        mode: str = "auto",
        estimator: FlowFn | None = None,
        **kwargs: Any,
    ) -> None:
        if mode not in TEMPORAL_MODES:
            raise ValueError(f"expected a temporal mode in {TEMPORAL_MODES}, got {mode!r}")
        if mode == "full" and estimator is None:
            raise ValueError("expected a flow estimator for temporal mode 'full' (tOF estimates flow)")
        super().__init__(
            scores=("warp_error", "tof"), y_channel=y_channel, border=border, reduction=reduction, **kwargs
        )
        self.mode, self.estimator = mode, estimator

    def update(
        self,
        out: torch.Tensor,
        ref: torch.Tensor,
        keys: Sequence[str] | str,
        *,
        frame_index: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        flow: torch.Tensor | None = None,
        flow_valid: torch.Tensor | None = None,
    ) -> None:
        """Score the consecutive pairs of a batch of sequences (or chunks).

        Args:
            out: ``(B, T, 3, H, W)`` restored frames in [0, 1].
            ref: ``(B, T, 3, H, W)`` ground truth.
            keys: ``B`` sequence keys (a str when ``B == 1``).
            frame_index: optional ``(B, T)`` or ``(T,)`` position of each frame in its sequence.
            mask: optional ``(B, T)`` or ``(T,)`` bool, the frames to score.
            flow: optional ``(B, T-1, 2, H, W)`` exact reference flow ``t -> t+1`` (the synthetic data's).
            flow_valid: optional ``(B, T-1, 1, H, W)`` its validity.
        """
        if self.mode == "off" or (self.mode == "auto" and flow is None):
            return
        keys = self._batch_keys(out, ref, keys, ("out", "ref"))
        b, t = out.shape[:2]
        if flow is not None:
            expect_shape(flow, "(B, T, 2, H, W)", "flow")
            if flow.shape[:2] != (b, t - 1) or flow.shape[-2:] != out.shape[-2:]:
                raise ValueError(
                    f"expected flow of shape {(b, t - 1, 2, *out.shape[-2:])}, got {tuple(flow.shape)}"
                )
        if t < 2:
            return
        index = (
            torch.arange(t).expand(b, t)
            if frame_index is None
            else torch.as_tensor(frame_index).to(torch.int64).cpu().expand(b, t)
        )
        keep = (
            torch.ones(b, t, dtype=torch.bool)
            if mask is None
            else torch.as_tensor(mask).bool().cpu().expand(b, t)
        )
        for i, key in enumerate(keys):
            js = [j for j in range(1, t) if bool(keep[i, j])]
            if not js:
                continue
            sel = torch.tensor(js)
            scores = pair_scores(
                out[i, sel - 1],
                out[i, sel],
                ref[i, sel - 1],
                ref[i, sel],
                flow=None if flow is None else flow[i, sel - 1],
                flow_valid=None if flow is None or flow_valid is None else flow_valid[i, sel - 1],
                estimator=self.estimator,
                tof=self.mode == "full",
                y_channel=self.y_channel,
                border=self.border,
            )
            sid = sequence_id(key)
            self._names[sid] = key
            self.seq_ids.append(torch.full((len(js),), sid, dtype=torch.int64, device=self.device))
            self.frame_ids.append(index[i, sel].to(self.device))
            self.warp_error.append(scores["warp_error"].to(self.device))
            self.tof.append(scores["tof"].to(self.device))

    # ------------------------------------------------------------------ results
    def _rows(self, sync: bool = True) -> list[tuple[str, int, float, float]]:
        """``(sequence, frame, warp_error, tof)`` per scored frame over all ranks, once each, sorted
        (``sync=False``: the states are synced already, as inside :meth:`compute`)."""
        states = ("seq_ids", "frame_ids", "warp_error", "tof")
        if sync:
            with self.sync_context():  # no-op outside DDP
                s = {n: self._state(n).cpu() for n in states}
        else:
            s = {n: self._state(n).cpu() for n in states}
        names = self._all_names()
        rows: dict[tuple[str, int], tuple[str, int, float, float]] = {}
        for sid, f, w, o in zip(
            s["seq_ids"].tolist(), s["frame_ids"].tolist(), s["warp_error"].tolist(), s["tof"].tolist()
        ):
            key = (names.get(sid, str(sid)), int(f))
            rows.setdefault(key, (key[0], key[1], float(w), float(o)))
        return [rows[k] for k in sorted(rows)]

    def per_frame(self) -> list[dict[str, str | int | float]]:
        """``{"sequence", "frame", "warp_error"[, "tof"]}`` per scored frame (NaN scores left out)."""
        result = []
        for seq, frame, w, o in self._rows():
            row: dict[str, str | int | float] = {"sequence": seq, "frame": frame}
            if w == w:
                row["warp_error"] = w
            if o == o:
                row["tof"] = o
            result.append(row)
        return result

    def per_sequence(self) -> dict[str, dict[str, float]]:
        """``{key: {"warp_error"[, "tof"]}}``: means over each sequence's scored pairs. Under DDP every
        rank must call it."""
        return _per_sequence(self._rows())

    def summary(self) -> dict[str, float]:
        """``{"warp_error"[, "tof"]}`` over all sequences with the metrics' reduction (empty when nothing
        was scored, e.g. ``auto`` without exact flow). Under DDP every rank must call it."""
        return self._summary(self._rows())

    def compute(self) -> dict[str, torch.Tensor]:
        """:meth:`summary` as float64 tensors (torchmetrics' ``compute``, on states it has synced)."""
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in self._summary(self._rows(False)).items()}

    def _summary(self, rows: list[tuple[str, int, float, float]]) -> dict[str, float]:
        if self.reduction == "frame":
            return _means([(w, o) for _, _, w, o in rows])
        per_seq = _per_sequence(rows).values()
        means = {}
        for name in ("warp_error", "tof"):
            values = [row[name] for row in per_seq if name in row]
            if values:
                means[name] = sum(values) / len(values)
        return means


def _per_sequence(rows: Sequence[tuple[str, int, float, float]]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[tuple[float, float]]] = {}
    for seq, _, w, o in rows:
        groups.setdefault(seq, []).append((w, o))
    return {seq: _means(pairs) for seq, pairs in groups.items()}


class PairStream:
    """Temporal scores of frames arriving one at a time (``restore --reference --temporal``).

    Args:
        mode: ``"warp"`` (warping error) or ``"full"`` (and tOF).
        estimator: the flow estimator (flow is estimated on the reference).
        y_channel, border: the task's metric conventions.
    """

    def __init__(self, *, mode: str, estimator: FlowFn, y_channel: bool = False, border: int = 0) -> None:
        if mode not in ("warp", "full"):
            raise ValueError(f"expected temporal mode 'warp' or 'full', got {mode!r}")
        self.mode, self.estimator = mode, estimator
        self.y_channel, self.border = bool(y_channel), int(border)
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None

    def push(self, out: torch.Tensor, ref: torch.Tensor) -> dict[str, float] | None:
        """Frame ``t``: ``out`` and ``ref`` ``(3, H, W)``; returns ``{"warp_error", "tof"}`` of the pair
        ``(t-1, t)`` (``tof`` NaN for ``"warp"``), or None for the first frame."""
        expect_shape(out, "(3, H, W)", "out")
        previous, self._previous = self._previous, (out, ref)
        if previous is None:
            return None
        scores = pair_scores(
            previous[0][None],
            out[None],
            previous[1][None],
            ref[None],
            estimator=self.estimator,
            tof=self.mode == "full",
            y_channel=self.y_channel,
            border=self.border,
        )
        return {k: float(v[0]) for k, v in scores.items()}


def _means(pairs: Sequence[tuple[float, float]]) -> dict[str, float]:
    out = {}
    for name, values in (("warp_error", [p[0] for p in pairs]), ("tof", [p[1] for p in pairs])):
        finite = [v for v in values if v == v]
        if finite:
            out[name] = sum(finite) / len(finite)
    return out


def merge_rows(rows: Sequence[Mapping[str, Any]], extra: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-frame rows (``sequence``, ``frame``, ...) with the matching ``extra`` rows' other fields added."""
    by_key = {(r["sequence"], r["frame"]): r for r in extra}
    merged = []
    for row in rows:
        more = by_key.get((row["sequence"], row["frame"]), {})
        merged.append({**row, **{k: v for k, v in more.items() if k not in ("sequence", "frame")}})
    return merged


# --------------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------------
def plot_sequence(
    path: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str = "",
) -> Path:
    """PSNR and warping error over the frames of one sequence, as a PNG (matplotlib, Agg backend).

    ``rows``: per-frame rows with ``frame`` and ``psnr`` and, from the second frame, ``warp_error``.
    Flicker shows as spikes of the warping error (and, often, dips of PSNR).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from s2svr_lightning.atomic import atomic_write_bytes

    frames = [int(r["frame"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    try:
        if any("psnr" in r for r in rows):
            ax.plot(frames, [float(r.get("psnr", float("nan"))) for r in rows], color="tab:blue", marker=".")
        ax.set_xlabel("frame")
        ax.set_ylabel("PSNR (dB)", color="tab:blue")
        right = ax.twinx()
        right.plot(
            frames, [float(r.get("warp_error", float("nan"))) for r in rows], color="tab:red", marker="."
        )
        right.set_ylabel("warping error (MSE, [0, 1])", color="tab:red")
        ax.set_title(title)
        fig.tight_layout()
        atomic_write_bytes(Path(path), lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
    return Path(path)
