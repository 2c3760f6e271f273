"""A tiny architecture search under a latency budget, on the nano U-Net-NAS space.

Deci's AutoNAC searched DeciDiffusion's U-Net for the best accuracy at a latency budget on
the target hardware. Here, in miniature: enumerate U-Net-NAS configs on nano-sd's channels,
*measure* each one's latency on this machine (CFG batch, 8x8 latents), keep those under the
budget, and pick the one with the most capacity (parameters) left. Accuracy is then checked
by training the pick (data/README.md): training every candidate would take hours here.

    result = search(repeats=5)
    result["pick"], result["budget_ms"]; plot_search(result)
"""

from __future__ import annotations

import itertools
import statistics

import torch
from diffusers import UNet2DConditionModel

from . import nano
from .accounting import count_parameters, unet_flops
from .bench import cpu_threads, time_interleaved
from .errors import UserError
from .flexible_unet import FlexibleUNet2DConditionModel

# 16 -> 10 steps buys 1.6x, so a 3.5x end-to-end speed-up needs a U-Net >= 2.2x cheaper.
BUDGET_FRACTION = 0.45


@torch.inference_mode()
def unet_latencies(unets: list, side: int = 8, batch: int = 2, repeats: int = 15, warmup: int = 3,
                   progress: bool = False) -> list[float]:
    """Median seconds of one call of each U-Net (batch 2 = one step with classifier-free guidance).

    Timed in rounds, one call of every model per round, so that a machine that slows down or speeds
    up during the search (another process, CPU boost) shifts every model alike: the ratios to the
    reference, which decide the pick, stay put even when the absolute times do not.
    """
    calls = []
    for unet in unets:
        unet.eval()
        gen = torch.Generator("cpu").manual_seed(0)
        x = torch.randn(batch, unet.config.in_channels, side, side, generator=gen)
        text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=gen)
        t = torch.full((batch,), 500)
        calls.append(lambda unet=unet, x=x, t=t, text=text: unet(x, t, text))
    samples = time_interleaved(dict(enumerate(calls)), repeats, warmup, desc="timing rounds" if progress else None)
    return [statistics.median(samples[i]) for i in range(len(calls))]


def candidates() -> dict[str, dict]:
    """16 configs: 1 or 2 down ResNets per level, attention kept or not at the 8x8 level, the 4x4
    level and the mid block (nano-sd's channels 64/128/128)."""
    found = {}
    for resnets, (att0, att1), mid in itertools.product((1, 2), ((1, 1), (0, 1), (1, 0), (0, 0)), (1, 0)):
        label = f"resnets {resnets}, attention 8x8:{att0} 4x4:{att1} mid:{mid}"
        found[label] = nano.deci_config(down_resnets=(resnets,) * 3, down_attentions=(att0, att1, 0),
                                        up_attentions=(0, att1, att0), mid_attentions=mid)
    return found


def search(budget_fraction: float = BUDGET_FRACTION, repeats: int = 15, warmup: int = 3,
           space: dict[str, dict] | None = None, reference: dict | None = None, side: int = 8,
           progress: bool = True, num_threads: int | None = 1) -> dict:
    """Measure every candidate of `space` (default: `candidates()`) against the `reference`
    U-Net (default: nano-sd's `UNet2DConditionModel` kwargs) and pick the largest within budget.

    Returns {"rows", "pick", "reference_ms", "budget_ms", "budget_fraction"}. Each row: candidate,
    params, latency_ms, vs_reference (latency ratio), gflops (CFG batch 2), within_budget. The pick
    is the candidate with the most parameters within budget (ties: the faster); when none fits,
    the fastest candidate, so a search always returns something to train.

    Measured on the CPU with `num_threads` threads (default 1: stable timings even when other
    processes share the CPU; None keeps PyTorch's setting), in interleaved rounds (`unet_latencies`).
    """
    if not 0 < budget_fraction:
        raise UserError(f"budget_fraction must be > 0 (a share of the reference latency), got {budget_fraction!r}")
    space = candidates() if space is None else space
    if not space:
        raise UserError("search needs at least one candidate config")
    with cpu_threads(num_threads):
        return _search(budget_fraction, repeats, warmup, space, reference, side, progress)


def _search(budget_fraction, repeats, warmup, space, reference, side, progress) -> dict:
    torch.manual_seed(0)
    reference_unet = UNet2DConditionModel(**(reference or nano.UNET_SD))
    unets = {label: FlexibleUNet2DConditionModel(config) for label, config in space.items()}
    reference_s, *latencies = unet_latencies([reference_unet, *unets.values()], side=side, repeats=repeats,
                                             warmup=warmup, progress=progress)
    budget_s = budget_fraction * reference_s
    rows = []
    for (label, unet), seconds in zip(unets.items(), latencies):
        rows.append({"candidate": label, "params": count_parameters(unet), "latency_ms": seconds * 1e3,
                     "vs_reference": seconds / reference_s,
                     "gflops": unet_flops(unet, resolution=side * 8, batch=2) / 1e9,
                     "within_budget": seconds <= budget_s})
    within = [r for r in rows if r["within_budget"]]
    best = (max(within, key=lambda r: (r["params"], -r["latency_ms"])) if within
            else min(rows, key=lambda r: r["latency_ms"]))
    return {"rows": rows, "pick": best["candidate"], "reference_ms": reference_s * 1e3,
            "reference_params": count_parameters(reference_unet), "budget_ms": budget_s * 1e3,
            "budget_fraction": budget_fraction}


def plot_search(result: dict, ax=None):
    """Latency vs parameters: every candidate, the reference, the budget line and the pick."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4))[1]
    rows = result["rows"]
    for inside, colour, label in ((True, "tab:green", "within budget"), (False, "tab:gray", "over budget")):
        mine = [r for r in rows if r["within_budget"] == inside]
        if mine:
            ax.scatter([r["latency_ms"] for r in mine], [r["params"] / 1e6 for r in mine], c=colour, label=label)
    pick = next(r for r in rows if r["candidate"] == result["pick"])
    ax.scatter([pick["latency_ms"]], [pick["params"] / 1e6], marker="*", s=300, facecolors="none",
               edgecolors="tab:red", linewidths=2, label="pick")
    ax.scatter([result["reference_ms"]], [result["reference_params"] / 1e6], marker="s", c="tab:blue",
               label="reference (nano-sd)")
    ax.axvline(result["budget_ms"], color="tab:red", linestyle="--",
               label=f"budget ({result['budget_fraction']:.0%} of reference)")
    ax.set(xlabel="measured latency per U-Net step, CFG batch 2 (ms)", ylabel="parameters (M)",
           title="Latency-budgeted search")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax
