"""The latency harness on a tiny random pipeline: fields, arithmetic, errors (timings are not asserted)."""

import pytest
import torch

from decidiff_lab import bench
from decidiff_lab.schedulers import make_scheduler

FIELDS = ("preset", "steps", "seconds_per_image", "unet_seconds_per_step", "unet_seconds_per_step_no_cfg",
          "scheduler_seconds_per_step", "text_encoder_seconds", "vae_decode_seconds", "peak_memory_bytes",
          "gflops_per_unet_step", "achieved_gflops", "matmul_peak_gflops", "peak_fraction", "images_per_second",
          "spread_fraction", "harness_overhead_fraction", "seconds_median", "seconds_interval", "samples")


def test_time_call_runs_warmup_then_repeats():
    calls = []
    result = bench.time_call(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and len(result["samples"]) == 4
    assert result["min"] <= result["median"] <= result["max"]


def test_interleaved_calls_take_turns_and_the_order_reverses_every_other_round():
    order = []
    samples = bench.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                     repeats=3, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rounds a b, b a, a b
    assert {name: len(v) for name, v in samples.items()} == {"a": 3, "b": 3}


def test_zero_repeats_is_a_clear_error():
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        bench.time_interleaved({"a": lambda: None}, repeats=0)


def test_bootstrap_interval_is_seeded_and_brackets_the_median():
    samples = [1.0, 1.1, 0.9, 1.05, 3.0, 0.95, 1.02]
    low, high = bench.bootstrap_interval(samples)
    assert (low, high) == bench.bootstrap_interval(samples)
    assert low <= 1.02 <= high and high < 3.0  # one outlier does not drag the median's interval to it
    assert bench.bootstrap_interval([2.0] * 5) == (2.0, 2.0)


def test_speedup_pairs_rounds_and_takes_the_ratio_of_minima():
    records = [{"preset": "sd", "steps": 16, "seconds_per_image": 2.0, "samples": [2.0, 4.0, 2.2]},
               {"preset": "deci", "steps": 10, "seconds_per_image": 1.0, "samples": [1.0, 2.0, 1.1]}]
    result = bench.speedup(records, ("sd", 16), ("deci", 10))
    assert result["ratio"] == 2.0
    assert result["paired_median"] == pytest.approx(2.0)  # round 2 slowed both alike: its ratio is still 2
    assert result["interval"] == pytest.approx((2.0, 2.0))
    with pytest.raises(ValueError, match="no record for"):
        bench.speedup(records, ("sd", 10), ("deci", 10))


def test_bench_cases_times_every_case_in_the_same_rounds(make_tiny_pipe, monkeypatch):
    pipe_a, pipe_b = make_tiny_pipe(), make_tiny_pipe(scheduler=make_scheduler("squeezed-dpm++"))
    rounds = []
    real = bench.time_interleaved
    monkeypatch.setattr(bench, "time_interleaved", lambda calls, *a, **k: rounds.append(list(calls)) or real(calls, *a, **k))
    records = bench.bench_cases([bench.BenchCase("a", pipe_a, 2), bench.BenchCase("b", pipe_b, 10)],
                                repeats=2, warmup=0, peak_gflops=100.0)
    assert len(rounds) == 2 and rounds[0][0] == (0, "whole") and (1, "whole") in rounds[0]  # one run, then the overhead
    assert [(r["preset"], r["steps"], len(r["samples"])) for r in records] == [("a", 2, 2), ("b", 10, 2)]
    for r in records:
        assert r["seconds_per_image"] == min(r["samples"]) <= r["seconds_median"]
        assert r["seconds_interval"][0] <= r["seconds_median"] <= r["seconds_interval"][1]
    split = bench.speedup(records, ("a", 2), ("b", 10))
    assert split["ratio"] > 0 and len(split["interval"]) == 2


def test_matmul_peak_is_a_positive_rate():
    assert bench.matmul_peak_gflops(n=64, repeats=2) > 0


def _record_syncs(monkeypatch):
    calls = []
    monkeypatch.setattr(bench.torch.cuda, "synchronize", lambda device=None: calls.append(("cuda", device)))
    monkeypatch.setattr(bench.torch.mps, "synchronize", lambda: calls.append(("mps", None)))
    return calls


def test_sync_waits_for_the_gpu_that_is_timed(monkeypatch):
    calls = _record_syncs(monkeypatch)
    bench.synchronize("cuda:1")
    bench.synchronize(torch.device("mps"))
    bench.synchronize("cpu")
    assert calls == [("cuda", torch.device("cuda:1")), ("mps", None)]


@pytest.mark.parametrize("device, n, dtype", [("cpu", 1024, torch.float32), ("cuda:1", 8192, torch.float16),
                                              ("mps", 4096, torch.float32)])
def test_matmul_peak_is_measured_at_a_size_that_fills_the_device(monkeypatch, device, n, dtype):
    _record_syncs(monkeypatch)
    made = []
    monkeypatch.setattr(bench.torch, "randn", lambda *shape, device, dtype: made.append((shape, device, dtype))
                        or torch.zeros(2, 2))
    bench.matmul_peak_gflops(device, None if device != "mps" else torch.float32, repeats=1)
    assert made == [((n, n), device, dtype)] * 2  # default dtype: the one pipelines load in there


def test_an_offloaded_pipeline_is_timed_where_it_runs(tiny_pipe, monkeypatch):
    # With model CPU offload `pipe.device` reports where the weights wait, not where they run.
    monkeypatch.setattr(type(tiny_pipe), "device", property(lambda self: torch.device("meta")))
    monkeypatch.setattr(type(tiny_pipe), "_execution_device", property(lambda self: torch.device("cpu")))
    record = bench.bench_pipeline(tiny_pipe, "tiny", steps=2, repeats=1, warmup=0, peak_gflops=100.0)
    assert record["device"] == "cpu" and record["unet_seconds_per_step"] > 0


def test_bench_record_has_every_field_and_consistent_arithmetic(tiny_pipe):
    tiny_pipe.set_progress_bar_config(leave=False)
    record = bench.bench_pipeline(tiny_pipe, "tiny", steps=2, repeats=2, warmup=1, usd_per_hour=3.6,
                                  peak_gflops=100.0)
    assert all(k in record for k in FIELDS)
    assert record["preset"] == "tiny" and record["steps"] == 2 and record["repeats"] == 2
    assert record["seconds_min"] == record["seconds_per_image"] <= record["seconds_median"] <= record["seconds_max"]
    assert record["images_per_second"] == pytest.approx(1 / record["seconds_per_image"])
    assert record["usd_per_10k_images"] == pytest.approx(record["seconds_per_image"] * 10)  # 10k images at $1/1000 s
    assert record["matmul_peak_gflops"] == 100.0
    assert record["peak_fraction"] == pytest.approx(record["achieved_gflops"] / 100.0)
    assert record["gflops_per_unet_step"] > 0 and record["peak_memory_bytes"] > 0
    assert tiny_pipe._progress_bar_config == {"leave": False}  # restored after the benchmark


def test_component_times_with_the_squeezed_scheduler(make_tiny_pipe):
    pipe = make_tiny_pipe(scheduler=make_scheduler("squeezed-dpm++"))
    parts = bench.component_times(pipe, steps=10, repeats=1, warmup=0)
    assert set(parts) == {"text_encoder_seconds", "unet_seconds_per_step", "unet_seconds_per_step_no_cfg",
                          "scheduler_seconds_per_step", "vae_decode_seconds"}
    assert all(v > 0 for v in parts.values())
    assert len(pipe.scheduler.timesteps) == 10  # the squeezed 16 -> 10 list


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_bad_steps_are_a_clear_error(tiny_pipe, steps):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        bench.bench_pipeline(tiny_pipe, "tiny", steps=steps, repeats=1)


def test_bad_repeats_are_a_clear_error(tiny_pipe):
    with pytest.raises(ValueError, match="repeats"):
        bench.bench_pipeline(tiny_pipe, "tiny", steps=2, repeats=0)


def _records(times):
    return [{"preset": p, "steps": s, "seconds_per_image": t} for (p, s), t in times.items()]


def test_decompose_speedup_splits_steps_and_architecture():
    # time = 0.1 s fixed + steps x per-step cost (sd: 0.05 s, deci: 0.02 s)
    times = {(p, s): 0.1 + s * c for p, c in (("sd", 0.05), ("deci", 0.02)) for s in (16, 10)}
    split = bench.decompose_speedup(_records(times), ("sd", 16), ("deci", 10))
    assert split["fewer_steps"] == pytest.approx(0.9 / 0.6)
    assert split["cheaper_unet"] == pytest.approx(0.9 / 0.42)
    assert split["measured_total"] == pytest.approx(0.9 / 0.3)
    assert split["product"] == pytest.approx(split["fewer_steps"] * split["cheaper_unet"])
    assert split["interaction"] == pytest.approx(split["measured_total"] / split["product"])
    assert split["interaction"] < 1  # fixed costs: the factors overstate the total


def test_without_fixed_costs_the_factors_multiply_exactly():
    times = {(p, s): s * c for p, c in (("sd", 0.05), ("deci", 0.02)) for s in (16, 10)}
    split = bench.decompose_speedup(_records(times), ("sd", 16), ("deci", 10))
    assert split["product"] == pytest.approx(split["measured_total"])
    assert split["interaction"] == pytest.approx(1.0)


def test_decompose_speedup_names_the_missing_runs():
    times = {("sd", 16): 1.0, ("deci", 10): 0.5}
    with pytest.raises(ValueError, match=r"\('sd', 10\), \('deci', 16\)"):
        bench.decompose_speedup(_records(times), ("sd", 16), ("deci", 10))


def test_markdown_table_has_a_row_per_record():
    record = {"preset": "nano-deci", "steps": 10, "seconds_per_image": 0.1234, "images_per_second": 8.1,
              "unet_seconds_per_step": 0.01, "text_encoder_seconds": 0.002, "vae_decode_seconds": 0.003,
              "gflops_per_unet_step": 0.5, "achieved_gflops": 50.0, "peak_fraction": 0.25}
    lines = bench.markdown_table([record, {**record, "steps": 16}]).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| preset | steps |")
    assert "| nano-deci | 10 | 0.123 |" in lines[2] and "25.0%" in lines[2]
