"""Temporal consistency metrics: zero for a static reference restored exactly, spikes exactly where flicker
is injected, the forward-backward mask, chunked accumulation, the restorer's test stage."""

from __future__ import annotations

import math

import pytest
import torch

from s2svr_lightning.data.datasets.synthetic import SyntheticConfig, SyntheticSource
from s2svr_lightning.flow_estimators import TVL1Flow, temporal_metrics
from s2svr_lightning.temporal import (
    PairStream,
    TemporalMetrics,
    consistency_mask,
    flow_difference,
    pair_scores,
    warping_error,
)


@pytest.fixture(scope="module")
def moving():
    """A synthetic test sequence (64x64, 6 frames) with its exact flow ``t -> t+1`` and validity."""
    source = SyntheticSource("test", task="vsr", config=SyntheticConfig(height=64, width=64, frames=6))
    clip = source.load(0, 0, 6)
    return clip["hq"], clip["flow"], clip["flow_valid"]


def _static(frames: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    frame = torch.rand(3, 32, 32)
    return frame.expand(frames, 3, 32, 32).clone()


def test_a_static_reference_restored_exactly_scores_zero_with_exact_and_estimated_flow():
    ref = _static()
    zero = torch.zeros(4, 2, 32, 32)
    exact = pair_scores(ref[:-1], ref[1:], ref[:-1], ref[1:], flow=zero)
    assert exact["warp_error"].abs().max() < 1e-20  # zero up to grid_sample's float64 rounding
    assert torch.isnan(exact["tof"]).all()  # not asked for
    est = pair_scores(ref[:-1], ref[1:], ref[:-1], ref[1:], estimator=TVL1Flow(), tof=True)
    assert est["warp_error"].abs().max() < 1e-9
    assert torch.equal(est["tof"], torch.zeros(4, dtype=torch.float64))  # one estimator, same frames


def test_flicker_raises_the_warping_error_at_exactly_the_flickering_frames(moving):
    hq, flow, valid = moving
    metric = TemporalMetrics(mode="auto")
    out = hq.clone()
    out[3] = (out[3] + 0.1).clamp(0, 1)  # one bright frame: pairs (2, 3) and (3, 4) flicker
    metric.update(out[None], hq[None], "a", flow=flow[None], flow_valid=valid[None])
    step = hq.clone()
    step[2:] = (step[2:] * 0.85).clamp(0, 1)  # a brightness step: only pair (1, 2)
    metric.update(step[None], hq[None], "b", flow=flow[None], flow_valid=valid[None])
    metric.update(hq[None], hq[None], "ref", flow=flow[None], flow_valid=valid[None])
    rows = metric.per_frame()
    assert [(r["sequence"], r["frame"]) for r in rows[:5]] == [("a", t) for t in range(1, 6)]
    base = {r["frame"]: r["warp_error"] for r in rows if r["sequence"] == "ref"}
    assert max(base.values()) < 1e-3  # the reference's own: interpolation and 8-bit rounding only
    for seq, spikes in (("a", {3, 4}), ("b", {2})):
        errors = {r["frame"]: r["warp_error"] for r in rows if r["sequence"] == seq}
        assert {t for t, e in errors.items() if e > 5 * max(base.values())} == spikes
        assert all(errors[t] == pytest.approx(base[t], abs=1e-4) for t in errors if t not in spikes)
    assert "tof" not in rows[0]  # auto: the warping error only


def test_warping_error_is_the_masked_mse_of_the_warped_next_frame():
    torch.manual_seed(1)
    wide = torch.rand(3, 16, 24)
    prev, cur = wide[:, :, 2:18], wide[:, :, 4:20]  # content moves 2 px left: flow x = -2
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0] = -2.0
    assert float(warping_error(prev[None], cur[None], flow)) == pytest.approx(0.0, abs=1e-12)
    valid = torch.zeros(1, 1, 16, 16)
    valid[..., 5, 5] = 1.0
    shifted = cur + 0.1
    err = warping_error(prev[None], shifted[None], flow, valid, quantize=False)
    assert float(err) == pytest.approx(0.01, rel=1e-6)  # one pixel, mean over its three channels
    assert math.isnan(float(warping_error(prev[None], cur[None], flow, torch.zeros(1, 1, 16, 16))))


def test_consistency_mask_keeps_consistent_pixels_inside_the_frame():
    fw = torch.zeros(1, 2, 8, 8)
    fw[:, 0] = 2.0
    mask = consistency_mask(fw, -fw)
    assert mask[0, 0, :, :6].eq(1).all() and mask[0, 0, :, 6:].eq(0).all()  # targets beyond the edge
    assert consistency_mask(fw, torch.zeros_like(fw)).eq(0).all()  # backward flow does not undo it


def test_flow_difference_is_the_mean_end_point_distance():
    a = torch.zeros(2, 2, 6, 6)
    b = torch.zeros(2, 2, 6, 6)
    b[0, 0], b[0, 1] = 3.0, 4.0
    assert flow_difference(a, b).tolist() == [5.0, 0.0]


def test_overlapping_chunks_score_every_pair_once_as_the_whole_sequence(moving):
    hq, flow, valid = moving
    out = (hq + 0.03 * torch.randn_like(hq)).clamp(0, 1)
    whole = TemporalMetrics(mode="auto")
    whole.update(out[None], hq[None], "s", flow=flow[None], flow_valid=valid[None])
    chunked = TemporalMetrics(mode="auto")
    for start, stop in ((0, 4), (2, 6)):  # overlap 2; the second chunk scores frames 3.. (2 is owned)
        index = torch.arange(start, stop)
        chunked.update(
            out[None, start:stop],
            hq[None, start:stop],
            "s",
            frame_index=index[None],
            mask=(index >= (0 if start == 0 else 3))[None],
            flow=flow[None, start : stop - 1],
            flow_valid=valid[None, start : stop - 1],
        )
    assert chunked.per_frame() == whole.per_frame()
    assert chunked.summary() == pytest.approx(whole.summary())


def test_pair_stream_matches_the_batched_scores(moving):
    hq, _, _ = moving
    out = (hq + 0.03 * torch.randn_like(hq)).clamp(0, 1)
    est = TVL1Flow()
    stream = PairStream(mode="full", estimator=est)
    pushed = [stream.push(o, r) for o, r in zip(out[:3], hq[:3])]
    batched = pair_scores(out[:2], out[1:3], hq[:2], hq[1:3], estimator=est, tof=True)
    assert pushed[0] is None
    assert [p["warp_error"] for p in pushed[1:]] == pytest.approx(batched["warp_error"].tolist(), abs=1e-12)
    assert [p["tof"] for p in pushed[1:]] == pytest.approx(batched["tof"].tolist(), abs=1e-9)


def test_modes_and_estimators_are_checked():
    assert temporal_metrics({}, "off").mode == "off"
    with pytest.raises(ValueError, match="temporal mode"):
        temporal_metrics({}, "sometimes")
    with pytest.raises(FileNotFoundError, match="no-such.ckpt"):
        temporal_metrics({}, "full", "no-such.ckpt")
    with pytest.raises(ValueError, match="flow estimator"):
        TemporalMetrics(mode="full")
    auto = TemporalMetrics(mode="auto")
    auto.update(torch.rand(1, 3, 3, 16, 16), torch.rand(1, 3, 3, 16, 16), "no flow")  # nothing scored
    assert auto.summary() == {} and auto.per_frame() == []


def test_the_restorer_test_stage_reports_the_warping_error_per_sequence(synthetic_datamodule):
    import lightning as L

    from s2svr_lightning.lit.restorer import RestorerModule

    torch.manual_seed(0)
    dm = synthetic_datamodule(dataset={"size": 64, "frames": 4, "test_sequences": 1})
    module = RestorerModule(
        model="s2svr_vsr", model_overrides={"channels": 8, "num_blocks": 1, "num_layers": 1}
    )
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    result = trainer.test(module, datamodule=dm, verbose=False)[0]
    (row,) = module.test_per_sequence.values()
    assert row["warp_error"] > 0 and "psnr" in row and "tof" not in row  # auto: exact flow, no tOF
    assert result["test/warp_error"] == pytest.approx(row["warp_error"], rel=1e-6)


def test_a_checkpoint_flow_net_is_an_estimator(restorer_ckpt):
    from s2svr_lightning.flow_estimators import NetworkFlow, flow_estimator

    estimator = flow_estimator(restorer_ckpt)
    assert isinstance(estimator, NetworkFlow)
    ref = _static(3)
    flow = estimator(ref[:-1], ref[1:])
    assert flow.shape == (2, 2, 32, 32) and torch.isfinite(flow).all()
    scores = pair_scores(ref[:-1], ref[1:], ref[:-1], ref[1:], estimator=estimator, tof=True)
    assert torch.equal(scores["tof"], torch.zeros(2, dtype=torch.float64))  # same frames, same flow
