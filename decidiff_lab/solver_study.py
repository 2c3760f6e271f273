"""The solver experiment: how fast each sampler converges to the exact ODE solution.

From fixed noise and text, every sampler integrates the same probability-flow ODE. Its final latent
is compared with a reference from the model's own DPM-Solver++(2M) at 200 steps, as a function of
the number of U-Net evaluations (one per step; with classifier-free guidance each is a batch of 2).
On a log-log plot the error of a solver of order p falls with slope about -p.

- `guided_denoiser(pipe, prompt, ...)`: the CFG model output as a function of (latent, timestep);
- `run_sampler(denoise, scheduler, noise)`: the sampling loop, with a hook on every step;
- `experiment_sampler(base, name, calls)`: DDIM, DPM++, the squeezed DPM++ or DPM++ with Karras
  sigmas on `base`'s noise schedule, set to run exactly `calls` U-Net evaluations;
- `convergence(...)`, `fit_slope(...)`, `plot_convergence(...)`: the experiment, its slopes, its plot.

Notebook 04 writes the sampling loop by hand; notebook 05 uses these to study the solvers.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from .errors import UserError
from .generate import BASE_STEPS
from .schedulers import SqueezedDPMSolverMultistepScheduler

SAMPLERS = ("DDIM", "DPM++", "squeezed DPM++", "DPM++ Karras")
REFERENCE_CALLS = 200

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided_denoiser(pipe, prompt: str, guidance_scale: float, guidance_rescale: float = 0.0) -> Denoiser:
    """f(latent, t) -> the guided model output (epsilon or v, as the model predicts), the prompt
    encoded once. `guidance_scale <= 1` runs the conditional branch only (one U-Net row)."""
    device = pipe._execution_device
    cfg = guidance_scale > 1
    with torch.inference_mode():
        cond, uncond = pipe.encode_prompt(prompt, device, 1, cfg)
    text = torch.cat([uncond, cond]) if cfg else cond

    def denoise(latent: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = torch.cat([latent] * 2) if cfg else latent
        with torch.inference_mode():
            out = pipe.unet(x.to(device, pipe.unet.dtype), t, encoder_hidden_states=text).sample.float()
        if not cfg:
            return out
        out_uncond, out_cond = out.chunk(2)
        guided = out_uncond + guidance_scale * (out_cond - out_uncond)
        if guidance_rescale > 0:
            guided = rescale_noise_cfg(guided, out_cond, guidance_rescale=guidance_rescale)
        return guided

    return denoise


def initial_noise(pipe, seed: int = 0, height: int | None = None) -> torch.Tensor:
    """The pipeline's starting latent for `seed` (1 x C x h x w, fp32, on the pipeline's device)."""
    side = (height or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (1, pipe.unet.config.in_channels, side, side)
    return torch.randn(shape, generator=generator).to(pipe._execution_device)


def run_sampler(denoise: Denoiser, scheduler, noise: torch.Tensor, on_step=None) -> torch.Tensor:
    """The sampling loop on a scheduler whose `set_timesteps` was called (a copy is stepped).

    `on_step(i, t, sample, model_output, prev_sample)` is called after every step, e.g. to check a
    hand-written update against `scheduler.step` on the same inputs. Returns the final latent.
    """
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise UserError("call scheduler.set_timesteps(...) before run_sampler")
    scheduler = copy.deepcopy(scheduler)
    if hasattr(scheduler, "set_begin_index"):
        # Step by position, not by looking the timestep up: Karras sigmas on the cosine schedule give
        # repeated (truncated) timesteps, and diffusers' lookup then starts at the wrong step.
        scheduler.set_begin_index(0)
    sample = noise.float() * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        model_output = denoise(scheduler.scale_model_input(sample, t), t)
        prev = scheduler.step(model_output, t, sample).prev_sample
        if on_step is not None:
            on_step(i, t, sample, model_output, prev)
        sample = prev
    return sample


def squeeze_for_calls(calls: int) -> tuple[int, int]:
    """(steps asked, steps kept) of the squeeze that runs `calls` U-Net evaluations, in Deci's
    proportions: 16 asked -> 10 calls keeps 6, so `calls` keeps round(0.6 calls) of round(1.6 calls)."""
    if calls < 2:
        raise UserError(f"the squeezed DPM++ needs at least 2 calls (it keeps some steps and squeezes the rest), got {calls}")
    return round(calls * BASE_STEPS / 10), max(1, round(0.6 * calls))


def experiment_sampler(base, name: str, calls: int):
    """Sampler `name` on `base`'s noise schedule and DPM-Solver settings, `set_timesteps` done, so
    that it runs exactly `calls` U-Net evaluations.

    DDIM uses "trailing" spacing (it starts at t = 999 like the others, not at 901 as "leading"
    would) and lands where `base` lands (final sigma 0 or sigma at t = 0); "squeezed DPM++" at
    `calls` is asked for round(1.6 calls) and squeezes them (`squeeze_for_calls`).
    """
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise UserError(f"calls must be a positive integer, got {calls!r}")
    config = {k: v for k, v in base.config.items() if k != "squeeze_mode"}
    if name == "DDIM":
        final_zero = config.get("final_sigmas_type", "zero") == "zero"
        sched = DDIMScheduler.from_config(config, timestep_spacing="trailing", clip_sample=False,
                                          set_alpha_to_one=final_zero)
        sched.set_timesteps(calls)
    elif name == "DPM++":
        sched = SqueezedDPMSolverMultistepScheduler.from_config(config, squeeze_mode=None)
        sched.set_timesteps(calls)
    elif name == "squeezed DPM++":
        asked, keep = squeeze_for_calls(calls)
        sched = SqueezedDPMSolverMultistepScheduler.from_config(config, squeeze_mode=f"{calls},{keep}")
        sched.set_timesteps(asked)
    else:
        sched = DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True)
        sched.set_timesteps(calls)
    assert len(sched.timesteps) == calls, (name, calls, len(sched.timesteps))
    return sched


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """||x - reference|| / ||reference|| (Frobenius norms)."""
    return float((x.double() - reference.double()).norm() / reference.double().norm())


def convergence(denoise: Denoiser, base, noise: torch.Tensor, calls_list=(1, 2, 3, 4, 6, 10, 16, 25, 40),
                samplers=SAMPLERS, reference_calls: int = REFERENCE_CALLS) -> dict:
    """The experiment: {"reference": latent, "check": latent at reference_calls // 2,
    "check_error": its error vs the reference, "rows": [{sampler, calls, error, latent}, ...]}.

    Every sampler starts from the same `noise`; the reference is `base`'s DPM-Solver++ ("DPM++")
    at `reference_calls` steps. The squeezed sampler skips 1 call (it needs 2).
    """
    reference = run_sampler(denoise, experiment_sampler(base, "DPM++", reference_calls), noise)
    check = run_sampler(denoise, experiment_sampler(base, "DPM++", reference_calls // 2), noise)
    rows = []
    for name in samplers:
        for calls in calls_list:
            if name == "squeezed DPM++" and calls < 2:
                continue
            latent = run_sampler(denoise, experiment_sampler(base, name, calls), noise)
            rows.append({"sampler": name, "calls": calls, "error": relative_error(latent, reference),
                         "latent": latent})
    return {"reference": reference, "check": check, "check_error": relative_error(check, reference), "rows": rows}


def fit_slope(rows: list[dict], sampler: str, min_calls: int = 4, max_calls: int | None = None,
              key: str = "error") -> float:
    """Least-squares slope of log(error) vs log(calls) for one sampler, over min_calls..max_calls
    (non-finite errors, e.g. a diverged run, are left out)."""
    points = [(r["calls"], r[key]) for r in rows if r["sampler"] == sampler and r["calls"] >= min_calls
              and (max_calls is None or r["calls"] <= max_calls) and np.isfinite(r[key])]
    if len(points) < 2:
        raise UserError(f"need at least 2 points of {sampler!r} between {min_calls} and {max_calls} calls to fit a slope")
    calls, errors = np.array(points, dtype=np.float64).T
    return float(np.polyfit(np.log(calls), np.log(errors), 1)[0])


def plot_convergence(rows: list[dict], ax=None, key: str = "error", floor: float | None = None, title: str = ""):
    """Error vs U-Net evaluations, log-log, one line per sampler; `floor` draws the reference's own
    error (e.g. 100 vs 200 steps) as a dotted line."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 4))[1]
    for name in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == name]
        mine = [r for r in mine if np.isfinite(r[key])]
        ax.loglog([r["calls"] for r in mine], [r[key] for r in mine], marker="o", label=name)
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle=":", label="100 vs 200 steps")
    ax.set(xlabel="U-Net evaluations (steps)", ylabel=f"relative {key} vs 200-step reference", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return ax
