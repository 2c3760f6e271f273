"""Samplers for the course: DeciDiffusion 2.0's "refined DPM++" and per-step schedule tables.

`SqueezedDPMSolverMultistepScheduler` is a diffusers `DPMSolverMultistepScheduler` with Deci 2.0's
defaults and a `squeeze_mode` that turns the 16-step linspace schedule into 10 (or 11) steps.
`schedule_table` lays out any scheduler's steps (timestep, sigma, log-SNR) for plotting,
`noise_schedule_curves` its training noise schedule (drawn by `plotting.plot_noise_schedules`), and
`make_scheduler` builds the five schedulers the notebooks compare, by name.

Classifier-free guidance and guidance rescale are not re-implemented here: the diffusers pipeline
already has `guidance_scale` and `guidance_rescale` (Deci 2.0: 7.5 and 0.8); `check_guidance` only
validates them.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Literal

import numpy as np
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.configuration_utils import register_to_config
# diffusers loads a pipeline component named ["decidiff_lab.schedulers", cls] only if this
# module exposes the base class it checks against (see DiffusionPipeline's loader).
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401

from .errors import UserError

_PARENT_ARGS = set(inspect.signature(DPMSolverMultistepScheduler.__init__).parameters) - {"self"}

_SQUEEZE_EXAMPLE = '(e.g. "10,6": 10 steps, keep the first 6)'


def _check_squeeze(n: int, i: int, label: str) -> None:
    if i < 1:
        raise UserError(f"squeeze_mode {label}: I must be at least 1 {_SQUEEZE_EXAMPLE}")
    if i >= n:
        raise UserError(f"squeeze_mode {label}: I must be smaller than N {_SQUEEZE_EXAMPLE}")


def parse_squeeze_mode(squeeze_mode: str | None) -> tuple[int, int] | None:
    """Parse "N,I" into (N, I); None means no squeezing. Raises a one-line ValueError otherwise."""
    if squeeze_mode is None:
        return None
    try:
        n, i = (int(p) for p in str(squeeze_mode).split(","))
    except ValueError:
        raise UserError(f'squeeze_mode must be "N,I" {_SQUEEZE_EXAMPLE} or None, got {squeeze_mode!r}') from None
    _check_squeeze(n, i, repr(squeeze_mode))
    return n, i


def squeeze_timesteps(timesteps, n: int, i: int) -> list[int]:
    """Deci's squeeze: keep the first `i` timesteps, then `n - i` evenly spaced multiples of
    k = t[i-1] // (n-i+1) counting down, (n-i)k, ..., 2k, k.

    The early, high-noise steps are kept as they are; the rest of the trajectory is covered by
    fewer, evenly spaced steps, so the sampler needs N U-Net calls instead of len(timesteps).
    """
    t = [int(x) for x in timesteps]
    _check_squeeze(n, i, f"'{n},{i}'")
    if n > len(t):
        raise UserError(
            f"squeeze_mode '{n},{i}' asks for {n} steps but the base schedule has only {len(t)}: "
            f"ask for at least {n} inference steps (Deci uses 16) or lower N"
        )
    k = t[i - 1] // (n - i + 1)
    if k < 1:
        raise UserError(
            f"squeeze_mode '{n},{i}': timestep {t[i - 1]} is too small to split into {n - i} steps; lower N - I"
        )
    return t[:i] + [k * j for j in range(n - i, 0, -1)]


class SqueezedDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
    """DeciDiffusion 2.0's "refined DPM++": DPM-Solver++(2M) on a squeezed linspace schedule.

    `set_timesteps(num_inference_steps)` builds the usual linspace list from `num_inference_steps`
    (Deci's pipeline always passes 16) and, when `squeeze_mode="N,I"` is set, squeezes it to N steps
    with `squeeze_timesteps`; `self.timesteps`, `self.sigmas` and `self.num_inference_steps` then
    describe the N steps and the solver state is reset. With the defaults, 16 steps and "10,6" give
    998, 936, 873, 811, 748, 686, 548, 411, 274, 137. `squeeze_mode=None` is plain DPM-Solver++ with
    Deci's defaults. Explicit `set_timesteps(timesteps=...)` are used as given, never re-squeezed.

    `final_sigmas_type` (where the last step lands) defaults to `"sigma_min"`, the sigma at
    timestep 0, to be faithful to Deci's patch: on diffusers 0.21.4 the last DPM-Solver step went
    to timestep 0. Current diffusers defaults to `"zero"` (the last step lands on the model's clean
    prediction); pass `final_sigmas_type="zero"` for that.

    In `StableDiffusionPipeline(num_inference_steps=16)` the loop runs `len(scheduler.timesteps)`,
    i.e. N U-Net steps, but the progress bar's total stays 16 (`retrieve_timesteps` returns the
    requested count unless custom timesteps are passed), so it stops at 10/16. For an exact bar,
    pass `timesteps=scheduler.squeezed_timesteps(16)` instead of `num_inference_steps`.

    Karras sigmas (and the other sigma re-spacings) are refused: Deci's schedule is linspace
    timesteps. All other `DPMSolverMultistepScheduler` arguments are accepted, so `from_config` of a
    stock DPM-Solver config works.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "squaredcos_cap_v2",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "v_prediction",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "heun",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "sigma_min",
        lambda_min_clipped: float = -7.5,
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 1,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        squeeze_mode: str | None = "10,6",
    ):
        respaced = {
            "use_karras_sigmas": use_karras_sigmas,
            "use_exponential_sigmas": use_exponential_sigmas,
            "use_beta_sigmas": use_beta_sigmas,
            "use_lu_lambdas": use_lu_lambdas,
            "use_flow_sigmas": use_flow_sigmas,
        }
        on = [name for name, value in respaced.items() if value]
        if on:
            raise UserError(
                f"SqueezedDPMSolverMultistepScheduler does not support {on[0]}=True (Deci's refined DPM++ "
                f"uses linspace timesteps); pass {on[0]}=False, or use DPMSolverMultistepScheduler"
            )
        parse_squeeze_mode(squeeze_mode)  # fail at construction, not mid-pipeline
        # Forward every argument the installed parent knows (older diffusers know fewer).
        args = {k: v for k, v in locals().items() if k in _PARENT_ARGS}
        super().__init__(**args)
        # Our defaults differ from the parent's: mark none as "default" so that
        # DPMSolverMultistepScheduler.from_config(this.config) keeps Deci's schedule.
        self.register_to_config(_use_default_values=[])

    def squeezed_timesteps(self, num_inference_steps: int = 16) -> list[int]:
        """The timesteps `set_timesteps(num_inference_steps)` would use, without changing state."""
        base = copy.copy(self)  # set_timesteps rebinds attributes, so a shallow copy keeps self intact
        DPMSolverMultistepScheduler.set_timesteps(base, num_inference_steps)
        squeeze = parse_squeeze_mode(self.config.squeeze_mode)
        if squeeze is None:
            return base.timesteps.tolist()
        return squeeze_timesteps(base.timesteps.tolist(), *squeeze)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, **kwargs):
        if self.config.squeeze_mode is not None and timesteps is None:
            timesteps, num_inference_steps = self.squeezed_timesteps(num_inference_steps), None
        # The parent's custom-timesteps path re-interpolates sigmas from alphas_cumprod, appends
        # the final sigma, sets num_inference_steps = len(timesteps) and resets the solver state.
        super().set_timesteps(num_inference_steps, device=device, timesteps=timesteps, **kwargs)


# --- named schedulers and schedule tables ---------------------------------------------------

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,  # SD 1.5's shipped default (PLMS)
    "euler": EulerDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "squeezed-dpm++": SqueezedDPMSolverMultistepScheduler,
}

NOISE_SCHEDULES = {
    "sd15": dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
    ),
    "deci2": dict(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        steps_offset=1,
    ),
}

# As in SD 1.5's scheduler_config.json (PNDM) and its usual DDIM swap-in.
_EXTRA = {
    "ddim": dict(clip_sample=False, set_alpha_to_one=False),
    "pndm": dict(skip_prk_steps=True, set_alpha_to_one=False),
}


def make_scheduler(name: str, noise_schedule: str | None = None, **overrides):
    """Build a scheduler by name. `noise_schedule` is "sd15" (scaled-linear, epsilon) or "deci2"
    (cosine, v-prediction); by default "deci2" for "squeezed-dpm++" and "sd15" for the others."""
    if name not in SCHEDULERS:
        raise UserError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    noise_schedule = noise_schedule or ("deci2" if name == "squeezed-dpm++" else "sd15")
    if noise_schedule not in NOISE_SCHEDULES:
        raise UserError(f"unknown noise_schedule {noise_schedule!r}; choose one of {', '.join(NOISE_SCHEDULES)}")
    config = {**NOISE_SCHEDULES[noise_schedule], **_EXTRA.get(name, {}), **overrides}
    return SCHEDULERS[name](**config)


def _final_sigma(scheduler) -> float:
    """The VP sigma the last step lands on."""
    if hasattr(scheduler, "final_alpha_cumprod"):  # DDIM, PNDM: step to alphas_cumprod[0] or 1
        ac = float(scheduler.final_alpha_cumprod)
        return math.sqrt((1 - ac) / ac)
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(scheduler.timesteps) + 1:  # Euler, DPM-Solver
        return float(sigmas[-1])
    return 0.0


def schedule_table(scheduler, num_inference_steps: int) -> list[dict]:
    """One row per step: step, timestep, sigma, alpha_cumprod, log_snr, dlog_snr.

    Computed from `alphas_cumprod` at `timesteps` (fractional timesteps, as Euler's, interpolate
    sigma linearly in t like diffusers does), so every scheduler is measured the same way.
    sigma is the VP sigma sqrt((1-ac)/ac), log_snr = log(ac/(1-ac)) = -2 log sigma, and dlog_snr
    is the step to the next row's log-SNR; the last row steps to the final sigma (inf when that
    is 0). Works on a copy: the scheduler passed in is left untouched. `pandas.DataFrame(rows)`
    turns the result into a table.
    """
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(num_inference_steps)
    ac = sched.alphas_cumprod.double().numpy()
    timesteps = sched.timesteps.tolist()
    sigmas = np.interp(np.asarray(timesteps, dtype=np.float64), np.arange(len(ac)), np.sqrt((1 - ac) / ac))
    sigmas = [float(s) for s in sigmas] + [_final_sigma(sched)]
    log_snr = [-2 * math.log(s) if s > 0 else math.inf for s in sigmas]
    return [
        {
            "step": i,
            "timestep": t,
            "sigma": sigmas[i],
            "alpha_cumprod": 1 / (1 + sigmas[i] ** 2),
            "log_snr": log_snr[i],
            "dlog_snr": log_snr[i + 1] - log_snr[i],
        }
        for i, t in enumerate(timesteps)
    ]


def noise_schedule_curves(scheduler) -> dict:
    """t, alphas_cumprod and log-SNR = log(ac / (1 - ac)) at every training timestep."""
    ac = scheduler.alphas_cumprod.double().numpy()
    return {"t": np.arange(len(ac)), "alphas_cumprod": ac, "log_snr": np.log(ac / (1 - ac))}


def check_guidance(guidance_scale: float, guidance_rescale: float = 0.0) -> None:
    """Refuse negative or non-finite guidance values before they reach the pipeline."""
    for name, value in (("guidance_scale", guidance_scale), ("guidance_rescale", guidance_rescale)):
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{name} must be a finite number >= 0 (Deci 2.0 uses 7.5 and 0.8), got {value!r}")


def check_distinct_timesteps(scheduler, steps: int) -> None:
    """Refuse a sampler that would visit one timestep twice at `steps` steps (Karras sigmas on a cosine
    schedule do: diffusers' step lookup then fails deep inside the pipeline with an IndexError).

    Sets `scheduler`'s timesteps, as the pipeline does again first thing when it runs: a copy would
    cost ten times as much, inside every timed `generate` call."""
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    if len(set(timesteps)) < len(timesteps):
        raise UserError(f"{type(scheduler).__name__} visits some timesteps twice at {steps} steps on this noise "
                        f"schedule ({', '.join(map(str, timesteps[:6]))}, ...): Karras sigmas suit SD-like schedules, "
                        "not a cosine one; use the preset's own sampler")
