"""Latency harness: whole pipeline calls and their parts, warm-up, repeats, median and spread.

The one home of timing: `time_call` (median/min/max of synchronised calls), `synchronize` (wait for
the device's queued work) and `cpu_threads` (a fixed CPU thread count), which `unet_tools`'
per-block latencies and `search`'s timing rounds use too.

Returns plain dicts (one per preset x steps) that notebooks tabulate and plot and the CLI
writes as JSON. Speed claims are ratios measured in one run, never typed in.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Callable

import torch

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


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device="cpu") -> dict:
    """Median, spread (min/max) and all samples, in seconds, of `repeats` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": samples}


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


@torch.inference_mode()
def component_times(pipe, steps: int, repeats: int = 5, warmup: int = 1, prompt: str = PROMPT) -> dict:
    """Seconds for each part of one image: text encoding, a U-Net step with and without the CFG
    batch, a scheduler step, the VAE decode."""
    device = pipe._execution_device  # where an offloaded pipeline runs (its `device` says cpu)
    side = pipe.unet.config.sample_size
    latents = torch.randn(1, pipe.unet.config.in_channels, side, side, device=device, dtype=pipe.unet.dtype)
    text, negative = pipe.encode_prompt(prompt, device, 1, True)
    both = torch.cat([negative, text])
    _set_steps(pipe.scheduler, steps, device)
    t = pipe.scheduler.timesteps[0]

    def scheduler_loop():
        _set_steps(pipe.scheduler, steps, device)
        x = latents
        for step_t in pipe.scheduler.timesteps:
            x = pipe.scheduler.step(latents, step_t, x).prev_sample

    run = dict(repeats=repeats, warmup=warmup, device=device)
    return {
        "text_encoder_seconds": time_call(lambda: pipe.encode_prompt(prompt, device, 1, True), **run)["median"],
        "unet_seconds_per_step": time_call(lambda: pipe.unet(torch.cat([latents] * 2), t, both), **run)["median"],
        "unet_seconds_per_step_no_cfg": time_call(lambda: pipe.unet(latents, t, text), **run)["median"],
        "scheduler_seconds_per_step": time_call(scheduler_loop, **run)["median"] / steps,
        "vae_decode_seconds": time_call(
            lambda: pipe.vae.decode(latents / pipe.vae.config.scaling_factor), **run)["median"],
    }


def harness_overhead_seconds(device="cpu", repeats: int = 1000) -> float:
    """What timing itself costs per measured call (sync + two clock reads)."""
    return time_call(lambda: None, repeats=repeats, warmup=10, device=device)["median"]


def bench_pipeline(pipe, preset: str, steps: int, repeats: int = 5, warmup: int = 1, guidance_scale: float = 5.0,
                   guidance_rescale: float = 0.0, usd_per_hour: float | None = None, peak_gflops: float | None = None,
                   prompt: str = PROMPT) -> dict:
    """One record: whole-call latency (median/spread), its parts, memory, FLOPs, FLOP/s, cost.

    `peak_gflops`: pass one `matmul_peak_gflops()` measured once, so every record of a run is
    compared with the same ceiling (measured here when None).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps must be a positive integer (got {steps!r})")
    if repeats < 1:
        raise UserError(f"repeats must be at least 1 (got {repeats!r})")
    device = pipe._execution_device  # where an offloaded pipeline runs (its `device` says cpu)
    progress = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        whole = time_call(lambda: generate(pipe, prompt, steps=steps, guidance_scale=guidance_scale,
                                           guidance_rescale=guidance_rescale),
                          repeats=repeats, warmup=warmup, device=device)
        parts = component_times(pipe, steps, repeats, warmup, prompt=prompt)
    finally:
        pipe.set_progress_bar_config(**progress)  # leave the pipeline's progress bar as it was
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    flops = unet_flops(pipe.unet, resolution=side, batch=2, vae_factor=pipe.vae_scale_factor)  # CFG batch
    peak = peak_gflops or matmul_peak_gflops(device, pipe.unet.dtype)
    achieved = flops / parts["unet_seconds_per_step"] / 1e9
    seconds = whole["median"]
    record = {
        "preset": preset, "steps": steps, "device": str(device), "dtype": str(pipe.unet.dtype).replace("torch.", ""),
        "repeats": repeats, "seconds_per_image": seconds, "seconds_min": whole["min"], "seconds_max": whole["max"],
        "spread_fraction": (whole["max"] - whole["min"]) / seconds, "images_per_second": 1 / seconds, **parts,
        "peak_memory_bytes": peak_memory_bytes(device), "gflops_per_unet_step": flops / 1e9,
        "achieved_gflops": achieved, "matmul_peak_gflops": peak, "peak_fraction": achieved / peak,
        "harness_overhead_fraction": harness_overhead_seconds(device) / seconds,
    }
    if usd_per_hour is not None:
        record["usd_per_10k_images"] = seconds * 10_000 / 3600 * usd_per_hour
    return record


def decompose_speedup(records: list[dict], base: tuple[str, int], fast: tuple[str, int]) -> dict:
    """Split base->fast into "fewer steps" (base architecture, fast steps) and "cheaper U-Net"
    (fast architecture, base steps); all four ratios measured, the product only as a check.

    `interaction` = measured_total / product: 1 when time is all U-Net steps; the fixed costs
    (text encoder, VAE decode) that neither factor touches pull it away from 1.
    """
    t = {(r["preset"], r["steps"]): r["seconds_per_image"] for r in records}
    (arch_a, steps_a), (arch_b, steps_b) = base, fast
    needed = [(arch_a, steps_a), (arch_a, steps_b), (arch_b, steps_a), (arch_b, steps_b)]
    missing = [k for k in needed if k not in t]
    if missing:
        raise UserError(f"decompose_speedup needs records for {missing}: bench those presets and steps")
    steps_factor = t[(arch_a, steps_a)] / t[(arch_a, steps_b)]
    unet_factor = t[(arch_a, steps_a)] / t[(arch_b, steps_a)]
    total = t[(arch_a, steps_a)] / t[(arch_b, steps_b)]
    return {"fewer_steps": steps_factor, "cheaper_unet": unet_factor, "product": steps_factor * unet_factor,
            "measured_total": total, "interaction": total / (steps_factor * unet_factor)}


def markdown_table(records: list[dict]) -> str:
    """The bench records as a markdown table, one row per (preset, steps)."""
    cols = [("preset", "{}"), ("steps", "{}"), ("seconds_per_image", "{:.3f}"), ("images_per_second", "{:.2f}"),
            ("unet_seconds_per_step", "{:.4f}"), ("text_encoder_seconds", "{:.4f}"),
            ("vae_decode_seconds", "{:.4f}"), ("gflops_per_unet_step", "{:.2f}"), ("achieved_gflops", "{:.1f}"),
            ("peak_fraction", "{:.1%}")]
    return markdown(records, [(c, c, fmt) for c, fmt in cols])
