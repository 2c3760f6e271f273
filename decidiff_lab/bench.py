"""Latency harness: whole pipeline calls and their parts, timed in interleaved rounds.

The one home of timing: `time_interleaved` (calls taking turns, round after round), `time_call`
(one call, summarised), `synchronize` (wait for the device's queued work) and `cpu_threads` (a
fixed CPU thread count), which `unet_tools`' per-block latencies and `search`'s rounds use too.
`bench_cases` times several pipelines and step counts in the same rounds and returns plain dicts
(one per preset x steps) that notebooks tabulate and plot and the CLI writes as JSON; `speedup`
and `decompose_speedup` turn them into ratios with bootstrap intervals. Speed claims are ratios
measured in one run, never typed in.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Callable, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .accounting import unet_flops
from .errors import UserError
from .generate import generate, squeezed_schedule
from .memory import default_dtype
from .schedulers import SqueezedDPMSolverMultistepScheduler
from .tables import markdown

PROMPT = "a blue square to the left of a green triangle"


def synchronize(device) -> None:
    """Wait for the device's queued work, so a timer measures it and not its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps" and hasattr(torch.mps, "synchronize"):
        torch.mps.synchronize()


def time_interleaved(calls: dict, repeats: int = 5, warmup: int = 1, device="cpu",
                     desc: str | None = None, clock: Callable[[], float] = time.perf_counter) -> dict[object, list[float]]:
    """Seconds of every call in each of `repeats` rounds, the calls taking turns within a round.

    Why rounds: a machine that drifts (another process, a CPU clock that boosts or throttles) then
    shifts every call alike, and round k of one call can be paired with round k of another; timing
    each call's repeats back to back puts all of a drift on one of them. The order reverses every
    other round, so no call always runs first or right after the same neighbour. `desc` shows a
    progress bar over the rounds. `clock` is for tests: a fake one makes every timing exact.
    """
    if repeats < 1:
        raise UserError(f"repeats must be at least 1 (got {repeats!r})")
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    samples = {name: [] for name in names}
    for k in tqdm(range(repeats), desc=desc, unit="round", disable=desc is None):
        for name in names if k % 2 == 0 else reversed(names):
            synchronize(device)
            start = clock()
            calls[name]()
            synchronize(device)
            samples[name].append(clock() - start)
    return samples


def bootstrap_interval(samples, statistic=np.median, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over `samples` (seeded: the same samples give
    the same interval)."""
    values = np.asarray(samples, dtype=float)
    rng = np.random.default_rng(seed)
    stats = statistic(values[rng.integers(0, len(values), (resamples, len(values)))], axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def summarize(samples: list[float]) -> dict:
    """Minimum (the round least disturbed: the figure ratios use), median with its bootstrap
    interval, maximum, and the samples themselves."""
    return {"min": min(samples), "median": statistics.median(samples), "max": max(samples),
            "interval": bootstrap_interval(samples), "samples": list(samples)}


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device="cpu") -> dict:
    """Median, spread (min/max), bootstrap interval and all samples, in seconds, of `repeats`
    synchronised calls after `warmup`. To compare several calls, time them together with
    `time_interleaved` instead."""
    return summarize(time_interleaved({"call": fn}, repeats, warmup, device)["call"])


@contextmanager
def cpu_threads(num_threads: int | None):
    """`with cpu_threads(1): ...` runs PyTorch's CPU ops on that many threads, then restores the
    previous setting; None changes nothing.

    Why: on a CPU shared with other busy processes (two notebooks tested in parallel on two
    cores), multi-threaded kernels wait on each other at every barrier and small models run up to
    10x slower, with huge spread. One thread per process keeps timings stable and comparable.
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Matmul sizes that reach a device's peak: a GPU's tensor cores are far from full at 1024.
PEAK_MATMUL_SIZE = {"cuda": 8192, "mps": 4096}


def matmul_peak_gflops(device="cpu", dtype: torch.dtype | None = None, n: int | None = None,
                       repeats: int = 5) -> float:
    """This machine's own matmul throughput: the ceiling for the U-Net's achieved FLOP/s.

    Pass the U-Net's dtype (default: the one pipelines load in on `device`, fp16 on CUDA).
    """
    dtype = dtype or default_dtype(device)
    n = n or PEAK_MATMUL_SIZE.get(torch.device(device).type, 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = time_call(lambda: a @ b, repeats=repeats, warmup=2, device=device)["min"]
    return 2 * n**3 / best / 1e9


def peak_memory_bytes(device="cpu") -> int:
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # process peak: KiB on Linux, bytes on macOS
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _set_steps(scheduler, steps: int, device=None) -> None:
    if isinstance(scheduler, SqueezedDPMSolverMultistepScheduler):
        scheduler.set_timesteps(timesteps=squeezed_schedule(scheduler, steps), device=device)
    else:
        scheduler.set_timesteps(steps, device=device)


class BenchCase(NamedTuple):
    """One row of a benchmark: a pipeline at a step count, sampled with its preset's guidance."""
    preset: str
    pipe: object
    steps: int
    guidance_scale: float = 5.0
    guidance_rescale: float = 0.0


PARTS = ("text_encoder_seconds", "unet_seconds_per_step", "unet_seconds_per_step_no_cfg",
         "scheduler_seconds_per_step", "vae_decode_seconds")


def _case_calls(case: BenchCase, prompt: str) -> dict[str, Callable[[], object]]:
    """The whole call and each of its parts: text encoding (the prompt and the empty prompt
    guidance needs), a U-Net step on the guidance batch of 2 and on 1, the scheduler's loop, the decode."""
    pipe, steps = case.pipe, case.steps
    device = pipe._execution_device  # where an offloaded pipeline runs (its `device` says cpu)
    side = pipe.unet.config.sample_size
    latents = torch.randn(1, pipe.unet.config.in_channels, side, side, device=device, dtype=pipe.unet.dtype)
    with torch.inference_mode():
        text, negative = pipe.encode_prompt(prompt, device, 1, True)
    both = torch.cat([negative, text])
    _set_steps(pipe.scheduler, steps, device)
    t = pipe.scheduler.timesteps[0]

    def scheduler_loop():
        _set_steps(pipe.scheduler, steps, device)
        x = latents
        for step_t in pipe.scheduler.timesteps:
            x = pipe.scheduler.step(latents, step_t, x).prev_sample

    calls = {
        "whole": lambda: generate(pipe, prompt, steps=steps, guidance_scale=case.guidance_scale,
                                  guidance_rescale=case.guidance_rescale),
        "text_encoder_seconds": lambda: pipe.encode_prompt(prompt, device, 1, True),
        "unet_seconds_per_step": lambda: pipe.unet(torch.cat([latents] * 2), t, both),
        "unet_seconds_per_step_no_cfg": lambda: pipe.unet(latents, t, text),
        "scheduler_seconds_per_step": scheduler_loop,
        "vae_decode_seconds": lambda: pipe.vae.decode(latents / pipe.vae.config.scaling_factor),
    }
    return {name: torch.inference_mode()(fn) for name, fn in calls.items()}


def _check_case(case: BenchCase) -> None:
    if isinstance(case.steps, bool) or not isinstance(case.steps, int) or case.steps < 1:
        raise UserError(f"steps must be a positive integer (got {case.steps!r})")


def _time_cases(cases: list[BenchCase], repeats: int, warmup: int, prompt: str, parts_only: bool = False) -> list[dict]:
    """Per case, the samples of every call, all cases' calls taking turns in the same rounds."""
    for case in cases:
        _check_case(case)
    calls = {}
    for i, case in enumerate(cases):
        for name, fn in _case_calls(case, prompt).items():
            if not (parts_only and name == "whole"):
                calls[(i, name)] = fn
    progress = [dict(getattr(c.pipe, "_progress_bar_config", {})) for c in cases]
    for case in cases:
        case.pipe.set_progress_bar_config(disable=True)
    try:
        samples = time_interleaved(calls, repeats, warmup, cases[0].pipe._execution_device)
    finally:
        for case, config in zip(cases, progress):
            case.pipe._progress_bar_config = config  # leave each pipeline's progress bar as it was
    return [{name: samples[(i, name)] for (j, name) in calls if j == i} for i in range(len(cases))]


def component_times(pipe, steps: int, repeats: int = 5, warmup: int = 1, prompt: str = PROMPT) -> dict:
    """Seconds for each part of one image, the minimum of `repeats` interleaved rounds."""
    (samples,) = _time_cases([BenchCase("", pipe, steps)], repeats, warmup, prompt, parts_only=True)
    times = {name: min(values) for name, values in samples.items()}
    times["scheduler_seconds_per_step"] /= len(pipe.scheduler.timesteps)
    return times


def harness_overhead_seconds(device="cpu", repeats: int = 1000) -> float:
    """What timing itself costs per measured call (sync + two clock reads)."""
    return time_call(lambda: None, repeats=repeats, warmup=10, device=device)["median"]


def bench_cases(cases: list[BenchCase], repeats: int = 5, warmup: int = 1, usd_per_hour: float | None = None,
                peak_gflops: float | None = None, prompt: str = PROMPT) -> list[dict]:
    """One record per case: whole-call latency, its parts, memory, FLOPs, FLOP/s, cost.

    Every case's whole call and parts take turns in the same `repeats` rounds (`time_interleaved`),
    so ratios between cases are measured under the same conditions. `seconds_per_image` is the
    minimum over rounds (the round least disturbed), beside the median and its bootstrap interval;
    parts are minima too, so parts and whole are comparable. `samples` keeps the per-round whole
    times, which `speedup` pairs round by round. `peak_gflops`: one `matmul_peak_gflops()` for the
    whole run (measured here when None).
    """
    if not cases:
        raise UserError("bench_cases needs at least one BenchCase")
    device = cases[0].pipe._execution_device
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed = _time_cases(cases, repeats, warmup, prompt)
    peak = peak_gflops or matmul_peak_gflops(device, cases[0].pipe.unet.dtype)
    overhead = harness_overhead_seconds(device)
    records = []
    for case, samples in zip(cases, timed):
        pipe = case.pipe
        whole = summarize(samples.pop("whole"))
        parts = {name: min(values) for name, values in samples.items()}
        _set_steps(pipe.scheduler, case.steps)
        parts["scheduler_seconds_per_step"] /= len(pipe.scheduler.timesteps)
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
        flops = unet_flops(pipe.unet, resolution=side, batch=2, vae_factor=pipe.vae_scale_factor)  # CFG batch
        achieved = flops / parts["unet_seconds_per_step"] / 1e9
        seconds = whole["min"]
        record = {
            "preset": case.preset, "steps": case.steps, "device": str(device),
            "dtype": str(pipe.unet.dtype).replace("torch.", ""), "repeats": repeats,
            "seconds_per_image": seconds, "seconds_median": whole["median"],
            "seconds_interval": list(whole["interval"]), "seconds_min": whole["min"], "seconds_max": whole["max"],
            "spread_fraction": (whole["max"] - whole["min"]) / seconds, "samples": whole["samples"],
            "images_per_second": 1 / seconds, **parts,
            "peak_memory_bytes": peak_memory_bytes(device), "gflops_per_unet_step": flops / 1e9,
            "achieved_gflops": achieved, "matmul_peak_gflops": peak, "peak_fraction": achieved / peak,
            "harness_overhead_fraction": overhead / seconds,
        }
        if usd_per_hour is not None:
            record["usd_per_10k_images"] = seconds * 10_000 / 3600 * usd_per_hour
        records.append(record)
    return records


def bench_pipeline(pipe, preset: str, steps: int, repeats: int = 5, warmup: int = 1, guidance_scale: float = 5.0,
                   guidance_rescale: float = 0.0, usd_per_hour: float | None = None, peak_gflops: float | None = None,
                   prompt: str = PROMPT) -> dict:
    """`bench_cases` for one pipeline at one step count. To compare cases, bench them together."""
    (record,) = bench_cases([BenchCase(preset, pipe, steps, guidance_scale, guidance_rescale)], repeats, warmup,
                            usd_per_hour, peak_gflops, prompt)
    return record


def _find(records: list[dict], key: tuple[str, int]) -> dict:
    for r in records:
        if (r["preset"], r["steps"]) == tuple(key):
            return r
    raise UserError(f"no record for {key}: bench that preset and step count")


def speedup(records: list[dict], base: tuple[str, int], fast: tuple[str, int]) -> dict:
    """base time / fast time: the ratio of minima, and the per-round ratios' median with its
    bootstrap interval (round k of one case ran beside round k of the other)."""
    a, b = _find(records, base), _find(records, fast)
    if len(a.get("samples", ())) == len(b.get("samples", ())) > 0:
        return paired_ratio(a["samples"], b["samples"])
    return {"ratio": a["seconds_per_image"] / b["seconds_per_image"]}


def paired_ratio(slow: list[float], fast: list[float]) -> dict:
    """slow / fast from two calls timed in the same rounds (`time_interleaved`): the ratio of minima
    (each call's least disturbed round), and the per-round ratios' median with its bootstrap
    interval (round k of one ran beside round k of the other)."""
    paired = np.asarray(slow) / np.asarray(fast)
    return {"ratio": min(slow) / min(fast), "paired_median": float(np.median(paired)),
            "interval": bootstrap_interval(paired)}


def decompose_speedup(records: list[dict], base: tuple[str, int], fast: tuple[str, int]) -> dict:
    """Split base->fast into "fewer steps" (base architecture, fast steps) and "cheaper U-Net"
    (fast architecture, base steps); all four ratios measured, the product only as a check.

    `interaction` = measured_total / product: 1 when time is all U-Net steps; the fixed costs
    (text encoder, VAE decode) that neither factor touches pull it away from 1. Factors are ratios
    of minima; records from `bench_cases` add a bootstrap interval to each (`*_interval`).
    """
    t = {(r["preset"], r["steps"]): r["seconds_per_image"] for r in records}
    (arch_a, steps_a), (arch_b, steps_b) = base, fast
    needed = [(arch_a, steps_a), (arch_a, steps_b), (arch_b, steps_a), (arch_b, steps_b)]
    missing = [k for k in needed if k not in t]
    if missing:
        raise UserError(f"decompose_speedup needs records for {missing}: bench those presets and steps")
    factors = {"fewer_steps": speedup(records, base, (arch_a, steps_b)),
               "cheaper_unet": speedup(records, base, (arch_b, steps_a)),
               "measured_total": speedup(records, base, fast)}
    split = {name: f["ratio"] for name, f in factors.items()}
    split["product"] = split["fewer_steps"] * split["cheaper_unet"]
    split["interaction"] = split["measured_total"] / split["product"]
    # Where the records kept their rounds: each factor's interval over the rounds' paired ratios.
    split.update({f"{name}_interval": f["interval"] for name, f in factors.items() if "interval" in f})
    return split


def read_ratio(claim: str, ratio: float, interval: tuple[float, float] | None = None, above: float = 1.0) -> str:
    """A measured ratio read in words against what a lesson expects of it: `claim` holds when the
    ratio is above `above` ("DeciDiffusion is faster", 1.0).

    Never raises: a busy or slow machine can widen or even flip a timing, and a lesson that stops
    with an AssertionError blames the learner's machine. So the reading says which of three things
    this run shows: the claim (the whole interval of the per-round ratios' median above `above`),
    the opposite (all of it below), or no verdict (the interval straddles it). Without an interval, only
    the direction of the one ratio.
    """
    # The ratio is usually of best rounds, the interval the per-round ratios' median's: two statistics,
    # so the figure can sit at the interval's edge. Both are named.
    figure = f"{ratio:.2f}x" + (f" from the best rounds; the median per-round ratio's 95% interval is "
                                f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else "")
    if interval is None:
        holds = ratio > above
        return (f"{claim}: {figure}." if holds else
                f"finding: this run contradicts '{claim}': {figure}, not above {above:g}. A busy machine can do "
                "that; rerun it on a quiet one before drawing a conclusion.")
    low, high = interval
    if low > above:
        return f"{claim}: {figure}, all of it above {above:g}."
    if high < above:
        return (f"finding: this run contradicts '{claim}': {figure}, all of it below {above:g}. If the machine "
                "was busy, rerun it; if it persists, it is a real result on this machine worth understanding.")
    return (f"not settled by this run: '{claim}': {figure}, which spans {above:g}. More rounds or a quieter "
            "machine narrow it.")


def markdown_table(records: list[dict]) -> str:
    """The bench records as a markdown table, one row per (preset, steps)."""
    cols = [("preset", "{}"), ("steps", "{}"), ("seconds_per_image", "{:.3f}"), ("images_per_second", "{:.2f}"),
            ("unet_seconds_per_step", "{:.4f}"), ("text_encoder_seconds", "{:.4f}"),
            ("vae_decode_seconds", "{:.4f}"), ("gflops_per_unet_step", "{:.2f}"), ("achieved_gflops", "{:.1f}"),
            ("peak_fraction", "{:.1%}")]
    return markdown(records, [(c, c, fmt) for c, fmt in cols])
