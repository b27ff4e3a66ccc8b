"""Smoke tests of the benchmark harness at tiny sizes: the measuring tools measure what they claim.

No speed targets here (they depend on the machine); only that MAC counts, memory accounting and the
report are right.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import memory  # noqa: E402
import run_all  # noqa: E402
import speed  # noqa: E402


def test_count_macs_of_a_conv_is_exact():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    x = torch.rand(1, 4, 10, 12)
    assert speed.count_macs(lambda: conv(x)) == 4 * 6 * 9 * 10 * 12


def test_conv_probe_gives_a_rate_and_a_layout():
    rate, layout = speed.ConvProbe(channels=8, size=(16, 16), precision="fp32").rate(repeats=2)
    assert math.isfinite(rate) and rate > 0
    assert layout in ("contiguous", "channels_last")


def test_run_measured_reports_the_child_peak_memory():
    # a child that touches 300 MiB: its own peak, not this process's (which is larger, torch loaded)
    code = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    peak, seconds = memory.run_measured([sys.executable, "-c", code])
    assert 300 * 2**20 <= peak < 400 * 2**20
    assert seconds > 0
    with pytest.raises(RuntimeError, match="exit code 3"):
        memory.run_measured([sys.executable, "-c", "import sys; sys.exit(3)"])


def test_run_child_caps_memory_instead_of_meeting_the_oom_killer():
    code, _, _, tail = memory.run_child(
        [sys.executable, "-c", "b = bytearray(2 * 2**30)"], memory_limit=2**30
    )
    assert code == 1 and "MemoryError" in tail
    code, peak, _, _ = memory.run_child([sys.executable, "-c", "b = bytearray(2**20)"], memory_limit=2**30)
    assert code == 0 and 0 < peak < 2**30


def test_clips_are_h264_with_a_sound_track_as_long_as_the_video(tmp_path):
    import av

    frames = list(memory.panned_frames(30, (32, 48)))
    assert len(frames) == 30 and frames[0].shape == (32, 48, 3) and frames[0].dtype == np.uint8
    assert not np.array_equal(frames[0], frames[5])  # the camera moves
    path = memory.write_clip(tmp_path / "clip.mp4", frames)
    with av.open(str(path)) as clip:
        video, audio = clip.streams.video[0], clip.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert sum(1 for _ in clip.decode(video=0)) == 30
        clip.seek(0)
        packets = [p for p in clip.demux(audio) if p.size]
        end = max(p.pts + p.duration for p in packets) * audio.time_base
    assert abs(float(end) - 30 / 25) <= 1024 / memory.AUDIO_RATE  # within one AAC frame of 1.2 s


@pytest.mark.slow
def test_cli_memory_rows_give_each_runs_peak_of_the_command_users_run(monkeypatch):
    commands = []
    measured = memory.run_measured

    def spy(cmd, **kwargs):
        commands.append(cmd)
        return measured(cmd, **kwargs)

    monkeypatch.setattr(memory, "run_measured", spy)
    rows = memory.bench_cli(**{**memory.quick_cli_settings(), "lengths": (2, 4)}, log=lambda m: None)
    assert [(r["frames"], r["mode"]) for r in rows] == [
        (n, mode) for n in (2, 4) for mode in ("degrade", "reference")
    ]
    assert len(commands) == 8 and all(c[1:3] == ["-m", "s2svr_lightning.restore"] for c in commands)
    assert "--degrade" in commands[0] and "--reference" in commands[2]
    for row in rows:
        assert len(row["peaks"]) == 2 and all(200 < p < 4000 for p in row["peaks"])  # MiB: torch is loaded
        assert row["spread_mib"] == pytest.approx(max(row["peaks"]) - min(row["peaks"]))
        assert row["median_mib"] == pytest.approx(sum(row["peaks"]) / 2)
    assert rows[0]["vs_shortest"] == rows[1]["vs_shortest"] == 1.0
    assert rows[2]["vs_shortest"] == pytest.approx(rows[2]["median_mib"] / rows[0]["median_mib"])


@pytest.mark.slow
def test_segments_rows_measure_the_distance_to_one_stream():
    import segments

    rows = segments.bench_segments(frames=8, workers=2, warmups=(0, 4), lq_size=(16, 24), log=lambda m: None)
    stream, k0, k4 = rows
    assert stream["identical"] == "8/8" and stream["ref_delta_db"] == 0
    # the second segment starts at frame 4: K = 4 restores it from frame 0, as one stream does
    assert k4["identical"] == "8/8" and k4["vs_stream_db"] == 60.0 and k4["ref_delta_db"] == 0
    assert k0["vs_stream_db"] < 60.0 and k0["join_min_db"] < 60.0 and k0["extra"] == 0
    assert k4["extra"] == 0.5  # (2 - 1) x 4 / 8
    assert segments.choose_warmup(rows, join_floor=59.9) == 4
    join, near = segments.after_join(rows, 2, count=3)
    assert join == 4 and [list(r) for r in near] == [["run", "+0", "+1", "+2"]] * 3


def test_speed_rows_at_tiny_size():
    rows = speed.bench_speed(
        builders=["s2svr_deblur"],
        frames=2,
        warmup=2,
        sizes={"s2svr_deblur": (16, 24)},
        overrides={"channels": 8, "num_blocks": 1},
        precisions=["fp32"],
        log=lambda m: None,
    )
    (row,) = rows
    assert row["builder"] == "s2svr_deblur" and row["lq_size"] == "16x24"
    assert row["ms_per_frame"] > 0 and row["fps"] == pytest.approx(1000 / row["ms_per_frame"])
    # one steady-state push costs at least the convs of the restorer itself (flow net excluded)
    assert row["gmacs_per_frame"] > 0 and 0 < row["pct_of_peak"]
    # the flow net's share under each flow-input rule; 256x256 reads 16x the pixels of the padded 16x24.
    # This 8-channel restorer costs little beside the full-size flow net, so a share may round up to 1
    # when the separately timed flow call is slower than the whole timed step was.
    assert all(0 < row[f"flow_share_{rule}"] <= 1 for rule in speed.FLOW_RULES)
    assert row["flow_ms_256x256"] > row["flow_ms_native"]
    assert row["flow_share_256x256"] >= row["flow_share_native"]


def test_train_step_rows_per_setting_with_ratios_to_fp32():
    import train_step

    quick = train_step.quick_settings()
    rows = train_step.bench_train_step(
        presets=["deblur"],
        settings=["fp32", "step_flow+bf16+compile"],
        steps=2,
        shapes=quick["shapes"],
        overrides=quick["overrides"],
        threads=1,
        compile_backend="aot_eager",
        log=lambda m: None,
    )
    fp32, other = rows
    assert [r["setting"] for r in rows] == ["fp32", "step_flow+bf16+compile"]
    assert fp32["status"] == other["status"] == "ok"  # compiled, not fallen back to eager
    assert fp32["sample"] == other["sample"] == "3 x 32x32 LQ"
    assert fp32["peak_x_fp32"] == fp32["step_x_fp32"] == fp32["cpu_x_fp32"] == 1.0
    assert other["peak_x_fp32"] == pytest.approx(other["peak_gib"] / fp32["peak_gib"])
    assert other["step_x_fp32"] == pytest.approx(other["step_s"] / fp32["step_s"])
    assert all(r["step_s"] > 0 and 0.1 < r["peak_gib"] < 4 for r in rows)


def test_train_step_settings_and_the_half_crop_comparison(monkeypatch):
    import train_step

    assert train_step.parse_setting("step_flow+bf16") == {
        "checkpointing": "step_flow",
        "precision": "bf16-mixed",
        "compile": False,
    }
    assert train_step.parse_setting("fp32") == {
        "checkpointing": "none",
        "precision": "32-true",
        "compile": False,
    }
    for bad in ("fp16", "step+step_flow", "fp32+bf16", "bf16+bf16"):
        with pytest.raises(ValueError, match="expected a setting of"):
            train_step.parse_setting(bad)

    # fp32 runs out of memory at the recipe crop: every setting runs again at half the crop, and only the
    # rows beside a measured fp32 row get ratios
    def fake_row(name, setting, frames, crop, steps, overrides, limit, threads, backend):
        row = {"preset": name, "setting": setting, "sample": f"{frames} x {crop}", "peak_gib": crop / 32}
        if setting == "fp32" and crop == 256:
            return {**row, "status": "out of memory (> 12.0 GiB)"}
        factor = 0.5 if setting == "step" else 1.0
        return {
            **row,
            "status": "ok",
            "peak_gib": factor * crop / 32,
            "step_s": 2.0 / factor,
            "cpu_step_s": 1.0,
        }

    monkeypatch.setattr(train_step, "_child_row", fake_row)
    rows = train_step.bench_train_step(presets=["deblur"], settings=["fp32", "step"], log=lambda m: None)
    assert [(r["setting"], r["sample"]) for r in rows] == [
        ("fp32", "7 x 256"),
        ("step", "7 x 256"),
        ("fp32", "7 x 128"),
        ("step", "7 x 128"),
    ]
    assert rows[1]["peak_x_fp32"] is None and rows[1]["step_s"] == 4.0
    assert (rows[3]["peak_x_fp32"], rows[3]["step_x_fp32"], rows[3]["cpu_x_fp32"]) == (0.5, 2.0, 1.0)


def test_render_prints_one_document_with_every_section():
    results = {
        "machine": {"cpu": "cpu", "threads": 2, "torch": "2", "python": "3", "bf16_units": True},
        "quick": True,
        "seconds": 1.0,
        "speed": [{"builder": "s2svr_vsr", "precision": "fp32", "ms_per_frame": 12.5, "pct_of_peak": 81.0}],
        "memory": [{"frames": 50, "streaming_mib": 300.0, "whole_mib": 900.0, "streaming_growth": 1.0}],
        "train": [{"preset": "vsr", "step_s": 2.5}],
    }
    text = run_all.render(results)
    assert text.count("\n## ") == 3
    assert "| s2svr_vsr | fp32 |" in text and "| 12.5 |" in text and "| 81.0 |" in text
    assert "| 50 | 300 | 900 |" in text


def test_flow_quality_writes_every_row_for_each_degradation(tmp_path, capsys):
    import json

    import flow_quality

    out = tmp_path / "flow.json"
    argv = ["--steps", "2", "--teacher-steps", "3", "--sequences", "2", "--test-sequences", "1"]
    argv += ["--frames", "3", "--seeds", "0,1", "--jobs", "1", "--threads", "1"]
    assert flow_quality.main([*argv, "--degradations", "bicubic,blur", "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert set(table) == {"bicubic", "blur"}
    for rows in table.values():
        assert set(flow_quality.ROWS) <= set(rows)
        for row in flow_quality.ROWS:
            assert math.isfinite(rows[row]) and rows[row] >= 0 and len(rows[f"{row}_seeds"]) == 2
            assert rows[row] == pytest.approx(sum(rows[f"{row}_seeds"]) / 2)
        assert rows["zero"] > 0 and rows["zero_std"] > 0  # the synthetic video moves, seeds differ
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("| degradation"))
    separator = printed.splitlines()[printed.splitlines().index(header) + 1]
    assert header.count("|") == separator.count("|")
    assert "Teacher 3 steps; each student and the supervised net 2 steps" in printed
    with pytest.raises(SystemExit):
        flow_quality.parse_args(["--degradations", "bicubic,fog"])


def test_ablation_writes_every_group_and_row(tmp_path, capsys):
    import json

    import ablation

    out = tmp_path / "ablation.json"
    argv = ["--teacher-steps", "2", "--student-steps", "1", "--restorer-steps", "2", "--sequences", "2"]
    argv += ["--seeds", "0", "--test-sequences", "1", "--channels", "8", "--jobs", "1", "--json", str(out)]
    assert ablation.main(argv) == 0
    table = json.loads(out.read_text())
    assert set(table["alignment"]) == {"oracle", "student_distilled", "student_plain", "teacher_lq", "zero"}
    assert set(table["length"]) == {"5", "15", "30"} and set(table["radius"]) == {"0", "1", "2"}
    for group in ("alignment", "length", "radius"):
        assert all(math.isfinite(v) and 0 < v < 100 for v in table[group].values())
    assert table["radius"]["1"] == table["alignment"]["student_distilled"]  # one restorer, two rows
    assert "| alignment | zero |" in capsys.readouterr().out
    assert table["spread"]["alignment"]["zero"] == 0.0 and table["seeds"] == [0]  # one seed: no spread
    # --resume reuses the finished seed (nothing trains: a changed table would mean it ran again)
    table["per_seed"][0]["alignment"]["zero"] = 12.5
    out.write_text(json.dumps(table))
    assert ablation.main([*argv, "--resume"]) == 0
    assert "[seed 0] from" in capsys.readouterr().err
    assert json.loads(out.read_text())["alignment"]["zero"] == 12.5
    with pytest.raises(SystemExit):
        ablation.parse_args(["--frames", "10"])
    with pytest.raises(SystemExit):
        ablation.parse_args(["--resume"])  # nothing to resume from


def test_thread_settings_rows_run_each_setting_in_its_own_process():
    import threads

    rows = threads.bench_threads(busy=False, workloads=["conv"], repeats=2)
    assert [(r["threads"], r["wait_policy"]) for r in rows] == threads.SETTINGS
    assert all(r["ms"] > 0 and r["machine"] == "quiet" for r in rows)
    assert rows[0]["ratio_to_1_thread"] == 1.0
    assert rows[1]["ratio_to_1_thread"] == pytest.approx(rows[1]["ms"] / rows[0]["ms"])


def test_data_loading_measures_every_layout_on_tiny_trees(tmp_path):
    import data_loading

    rows = data_loading.bench_data_loading(
        quick=True, samples=1, workers=(0, 1), batches=1, root=tmp_path, log=lambda m: None
    )
    assert [r["layout"] for r in rows] == list(data_loading.LAYOUTS)
    by = {r["layout"]: r for r in rows}
    for r in rows:
        assert (
            r["per_worker"] == pytest.approx(1000 / r["ms_cpu"]) and r["loader_0"] > 0 and r["loader_1"] > 0
        )
        shares = [r[f"{s}_pct"] for s in (*data_loading.STAGES, "other")]
        assert all(s >= 0 for s in shares) and sum(shares) <= 100.5
    # the stages are attributed where the work is: decoding every file, degrading only on the fly
    assert all(by[n]["decode_pct"] > 20 for n in ("reds", "gopro", "mfqe", "paired", "synthetic_render"))
    assert by["reds"]["degrade_pct"] == 0 and by["synthetic"]["decode_pct"] == 0
    assert all(by[n]["degrade_pct"] > 0 for n in ("vimeo", "video_folder_vsr", "video_folder_cve"))
    assert by["vimeo"]["sample"] == "6 x 32x32"  # 3 frames mirrored
    text = data_loading.render(rows, [{"preset": "vsr", "status": "ok", "step_s": 4.0}])
    assert text.count("| reds |") == 2 and "| 0.25 |" in text  # the CPU step's rate, beside the VSR rows


def test_workers_needed_is_the_ceiling_of_the_sample_rates():
    import data_loading

    assert data_loading.workers_needed(2.0, 4, 3.0) == 3  # 8 samples/s from workers of 3 each
    assert data_loading.workers_needed(1.0, 2, 2.0) == 1 and data_loading.workers_needed(0.1, 1, 50.0) == 1
    with pytest.raises(ValueError, match="expected positive"):
        data_loading.workers_needed(1.0, 1, 0.0)


def test_data_loading_summary_pools_the_samples_of_every_round():
    import data_loading

    def run(cpu, decode):
        stages = dict.fromkeys(data_loading.STAGES, 0.0)
        stages["decode"] = decode
        return {"cpu": cpu, "wall": [2 * t for t in cpu], "stages": stages, "setup_s": 1.0, "sample": "s"}

    row = data_loading.summarize([run([0.1, 0.3], 0.2), run([0.2], 0.1)])
    assert row["ms_cpu"] == pytest.approx(200.0) and row["ms_wall"] == pytest.approx(400.0)
    assert row["decode_pct"] == pytest.approx(50.0) and row["other_pct"] == pytest.approx(50.0)


def test_motion_table_has_every_synthetic_task_and_the_default_moves_like_real_video(tmp_path, capsys):
    import json

    import motion

    out = tmp_path / "motion.json"
    argv = ["--sequences", "2", "--size", "64", "--frames", "4", "--json", str(out)]
    assert motion.main([*argv, "--configs", "demo,demo_deblur,demo_cve,bench_ablation"]) == 0
    table = json.loads(out.read_text())
    assert set(table) == {"demo", "demo_deblur", "demo_cve", "bench_ablation"}
    keys = {"mean_lq_px", "median_lq_px", "p90_lq_px", "p99_lq_px", "share_above_1_lq_px", "headroom_db"}
    for row in table.values():
        assert keys <= set(row)
        assert row["median_lq_px"] <= row["p90_lq_px"] <= row["p99_lq_px"]
    # the bar for the default: REDS-like motion, a long tail, and alignment that pays at the input
    assert table["demo"]["mean_lq_px"] > 1.2 and table["demo"]["p99_lq_px"] > 3.0
    assert table["demo"]["headroom_db"] > 6.0
    assert table["demo_deblur"]["mean_lq_px"] > table["demo"]["mean_lq_px"]  # blur needs faster scenes
    assert "| demo | vsr x4 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        motion.parse_args(["--configs", "demo,nope"])


def test_real_footage_scores_every_flow_and_restorer_on_held_out_clips(
    tmp_path, make_video, moving_photo, capsys
):
    import json

    import real_footage

    train = make_video(tmp_path / "pan.mp4", moving_photo(frames=12, height=64, width=96, step=(1, 3)))
    other = make_video(tmp_path / "other.mp4", moving_photo(frames=6, height=64, width=64, step=(2, 0)))
    out = tmp_path / "real.json"
    argv = [
        "--video",
        str(train),
        "--train-frames",
        "0:7",
        "--test-frames",
        "7:12",
        "--extra-test",
        str(other),
    ]
    argv += ["--crop", "64"]
    argv += ["--teacher-steps", "2", "--synthetic-teacher-steps", "1", "--synthetic-sequences", "1"]
    argv += ["--student-steps", "1"]
    argv += ["--restorer-steps", "1", "--channels", "8", "--jobs", "1", "--json", str(out)]
    assert real_footage.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["flow"]) == {"pan", "other", "seconds_per_pair"}
    for clip in ("pan", "other"):
        scores = result["flow"][clip]
        assert set(real_footage.FLOW_ROWS) <= set(scores)
        assert all(math.isfinite(scores[row]) and scores[row] >= 0 for row in real_footage.FLOW_ROWS)
        assert 0 < scores["visible"] <= 1
        # the camera pans 3 px per frame: TV-L1 aligns the held-out frames far better than no flow
        assert scores["tvl1"] < 0.5 * scores["zero"] or clip == "other"
        assert set(result["restorer"][clip]) == set(real_footage.RESTORER_ROWS)
    assert result["footage"] == {"train/pan": 7, "test/pan": 5, "test/other": 6}
    assert "| student_distilled |" in capsys.readouterr().out
    for bad in (["--crop", "30"], ["--crop", "32"], ["--test-frames", "9:3"], ["--train-frames", "a:b"]):
        with pytest.raises(SystemExit):
            real_footage.parse_args(["--video", str(train), *bad])
