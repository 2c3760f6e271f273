"""What DeciDiffusion's quoted recipe costs to recreate: GPU-hours computed from its steps and batches.

Only the U-Net trains on every sample (the VAE latents and CLIP states are precomputed, the blog
post's trick), so the work is: samples x U-Net forward FLOPs at the phase's resolution x 3 (a
backward pass costs about two forwards). Divided by an H100's peak, that is a floor no real run
reaches; `utilization` (the share of peak a run achieves) turns it into an estimate.
"""

from __future__ import annotations

from ..accounting import build_components, unet_flops
from ..errors import UserError
from .recipe import QUOTED_RECIPE

H100_BF16_TFLOPS = 989.0  # NVIDIA H100 SXM datasheet: dense BF16 tensor-core peak (1,979 is with sparsity)
BACKWARD_AND_FORWARD = 3  # training FLOPs per sample, in forwards
PHASE_RESOLUTION = {"1": 256, "2": 512, "3": 512}  # the quoted phases with stated steps (phase 4 has none)


def quoted_recipe_gpu_hours(preset: str = "deci-v2", utilization: float = 1.0,
                            peak_tflops: float = H100_BF16_TFLOPS) -> list[dict]:
    """One row per quoted phase with stated steps: samples, training PFLOPs, H100-hours at `utilization`."""
    if not 0 < utilization <= 1:
        raise UserError(f"utilization is a share of peak, in (0, 1] (got {utilization})")
    unet = build_components(preset)["unet"]  # on the meta device: no weights, no memory
    rows = []
    for phase in QUOTED_RECIPE:
        if phase["samples"] is None:
            continue
        side = PHASE_RESOLUTION[phase["phase"]]
        flops = BACKWARD_AND_FORWARD * unet_flops(unet, side) * phase["samples"]
        rows.append({"phase": phase["phase"], "resolution": side, "samples": phase["samples"], "pflops": flops / 1e15,
                     "gpu_hours": flops / (peak_tflops * 1e12 * utilization) / 3600, "hardware": phase["hardware"]})
    return rows
