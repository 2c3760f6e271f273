"""The harness's arithmetic under an injected fake clock: every timing exact, so speed claims are
checked here deterministically instead of on a wall clock in a notebook (README, "Testing")."""

import pytest

from decidiff_lab import bench, report
from decidiff_lab.schedulers import make_scheduler


class FakeClock:
    """A clock that moves only when a timed call says how long it took."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


def test_interleaved_samples_are_exact_under_a_fake_clock():
    clock, round_no = FakeClock(), iter(range(100))
    load = [1.0, 3.0, 1.5]  # a neighbour's load slows every call of a round alike
    current = {}

    def call(seconds):
        return lambda: clock.spend(seconds * load[current["k"]])

    calls = {"slow": call(2.0), "fast": call(0.5)}

    def tick():  # the first call of each round starts it; the order reverses every other round
        current["k"] = next(round_no) // 2

    timed = {name: (lambda fn=fn: (tick(), fn())) for name, fn in calls.items()}
    samples = bench.time_interleaved(timed, repeats=3, warmup=0, clock=clock)
    assert samples == {"slow": [2.0, 6.0, 3.0], "fast": [0.5, 1.5, 0.75]}
    result = bench.paired_ratio(samples["slow"], samples["fast"])
    assert result["ratio"] == 4.0 and result["paired_median"] == 4.0
    assert result["interval"] == (4.0, 4.0)  # load that lands on both alike leaves no trace in the pairs


# Scripted seconds per part: the whole call is its parts plus 10 ms of glue, so "parts <= whole" is exact.
COSTS = {"text_encoder_seconds": 0.02, "unet_seconds_per_step": 0.05, "unet_seconds_per_step_no_cfg": 0.03,
         "scheduler_seconds_per_step": 0.001, "vae_decode_seconds": 0.04}
GLUE = 0.01


def _whole(steps: int, unet_scale: float) -> float:
    return (COSTS["text_encoder_seconds"] + steps * (COSTS["unet_seconds_per_step"] * unet_scale
            + COSTS["scheduler_seconds_per_step"]) + COSTS["vae_decode_seconds"] + GLUE)


@pytest.fixture
def fake_records(make_tiny_pipe, monkeypatch):
    """bench_cases on tiny pipelines, every timed call charged its scripted cost on a fake clock:
    "sd" at 16 and 10 steps, "deci" (a U-Net step half as dear) at 16 and 10."""
    clock, real = FakeClock(), bench.time_interleaved
    cases = [bench.BenchCase(preset, make_tiny_pipe(scheduler=make_scheduler("dpm++")), steps)
             for preset in ("sd", "deci") for steps in (16, 10)]

    def cost(i, name):
        case, scale = cases[i], 0.5 if cases[i].preset == "deci" else 1.0
        if name == "whole":
            return _whole(case.steps, scale)
        if name == "scheduler_seconds_per_step":
            return case.steps * COSTS[name]  # the part times the scheduler's whole loop
        return COSTS[name] * (scale if name.startswith("unet") else 1.0)

    def charged(calls, repeats, warmup, device):
        if not all(isinstance(key, tuple) for key in calls):  # the harness timing its own overhead
            return real(calls, repeats, warmup, device)
        # The real calls are not run (test_bench.py does that): only their scripted cost is charged.
        timed = {key: (lambda key=key: clock.spend(cost(*key))) for key in calls}
        return real(timed, repeats, warmup, device, clock=clock)

    monkeypatch.setattr(bench, "time_interleaved", charged)
    return bench.bench_cases(cases, repeats=3, warmup=0, peak_gflops=100.0)


def test_bench_records_and_breakdown_are_exact(fake_records):
    for r in fake_records:
        scale = 0.5 if r["preset"] == "deci" else 1.0
        assert r["seconds_per_image"] == pytest.approx(_whole(r["steps"], scale))
        assert r["samples"] == pytest.approx([r["seconds_per_image"]] * 3)
        assert r["unet_seconds_per_step"] == pytest.approx(COSTS["unet_seconds_per_step"] * scale)
        assert r["scheduler_seconds_per_step"] == pytest.approx(COSTS["scheduler_seconds_per_step"])
        parts = report.breakdown(r)
        assert parts["unexplained"] == pytest.approx(GLUE)  # parts timed alone add up to the whole less the glue
        assert parts["other"] == pytest.approx(GLUE)


def test_decomposition_is_exact_and_the_fixed_costs_pull_the_product_above_the_total(fake_records):
    split = bench.decompose_speedup(fake_records, ("sd", 16), ("deci", 10))
    assert split["fewer_steps"] == pytest.approx(_whole(16, 1) / _whole(10, 1))
    assert split["cheaper_unet"] == pytest.approx(_whole(16, 1) / _whole(16, 0.5))
    assert split["measured_total"] == pytest.approx(_whole(16, 1) / _whole(10, 0.5))
    # Fixed costs (text encoder, decode, glue) shrink with neither factor: fewer steps save less than 16/10,
    # and the product of the factors overstates the total (Amdahl).
    assert 1 < split["fewer_steps"] < 16 / 10
    assert split["interaction"] < 1
    assert split["fewer_steps_interval"] == pytest.approx((split["fewer_steps"],) * 2)


@pytest.mark.parametrize("ratio, interval, verdict", [
    (2.0, (1.8, 2.2), "DeciDiffusion is faster: 2.00x"),
    (1.05, (0.9, 1.2), "not settled by this run"),
    (0.8, (0.7, 0.9), "finding: this run contradicts"),
    (1.3, None, "DeciDiffusion is faster: 1.30x."),
    (0.9, None, "finding: this run contradicts"),
])
def test_a_ratio_is_read_in_words_and_never_raises(ratio, interval, verdict):
    assert bench.read_ratio("DeciDiffusion is faster", ratio, interval).startswith(verdict)
