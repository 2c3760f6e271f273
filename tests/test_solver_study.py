"""solver_study: samplers run exactly the asked number of calls, the loop and the slope fit behave."""

import numpy as np
import pytest
import torch

from decidiff_lab.errors import UserError
from decidiff_lab.schedulers import make_scheduler
from decidiff_lab.solver_study import (SAMPLERS, convergence, experiment_sampler, fit_slope, relative_error,
                                       run_sampler, squeeze_for_calls)


@pytest.mark.parametrize("schedule", ["sd15", "deci2"])
@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("calls", [2, 3, 10, 16])
def test_experiment_sampler_runs_exactly_calls(schedule, name, calls):
    base = make_scheduler("squeezed-dpm++" if schedule == "deci2" else "dpm++", schedule)
    assert len(experiment_sampler(base, name, calls).timesteps) == calls


def test_squeeze_for_calls_is_decis_at_10():
    assert squeeze_for_calls(10) == (16, 6)
    assert squeeze_for_calls(16) == (26, 10)
    base = make_scheduler("squeezed-dpm++")
    assert experiment_sampler(base, "squeezed DPM++", 10).timesteps.tolist() == [998, 936, 873, 811, 748, 686, 548, 411, 274, 137]


def test_bad_input():
    base = make_scheduler("dpm++")
    with pytest.raises(UserError):
        experiment_sampler(base, "heun", 4)
    with pytest.raises(UserError):
        experiment_sampler(base, "DDIM", 0)
    with pytest.raises(UserError):
        squeeze_for_calls(1)
    with pytest.raises(UserError):
        run_sampler(lambda x, t: x, make_scheduler("dpm++"), torch.zeros(1, 4, 2, 2))


def test_ddim_trailing_starts_at_999_and_lands_on_x0():
    sched = experiment_sampler(make_scheduler("dpm++", "sd15"), "DDIM", 10)
    assert sched.timesteps[0] == 999 and float(sched.final_alpha_cumprod) == 1.0


def _exact_denoiser(x0):
    """An epsilon 'model' that knows the clean latent: every sampler must land on x0."""
    ac = make_scheduler("dpm++", "sd15").alphas_cumprod

    def denoise(x, t):
        a = ac[int(t)].sqrt()
        return (x - a * x0) / (1 - ac[int(t)]).sqrt()
    return denoise


def test_run_sampler_hook_and_exact_model():
    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    base = make_scheduler("dpm++", "sd15")
    seen = []
    out = run_sampler(_exact_denoiser(x0), experiment_sampler(base, "DPM++", 5), noise,
                      on_step=lambda i, t, x, m, prev: seen.append(i))
    assert seen == [0, 1, 2, 3, 4]
    # Lands on x0 up to the start: the loop starts from pure noise, not from the path's point at t = 999
    # (sqrt(ac_999) = 0.07 of signal missing).
    assert relative_error(out, x0) < 0.05 < relative_error(noise, x0)


def test_convergence_and_slope():
    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    res = convergence(_exact_denoiser(x0), make_scheduler("dpm++", "sd15"), noise, calls_list=(2, 4),
                      samplers=("DDIM", "squeezed DPM++"), reference_calls=20)
    assert [(r["sampler"], r["calls"]) for r in res["rows"]] == [("DDIM", 2), ("DDIM", 4), ("squeezed DPM++", 2), ("squeezed DPM++", 4)]
    assert res["check_error"] < 1e-3 and all(r["error"] < 0.1 for r in res["rows"])
    rows = [{"sampler": "s", "calls": n, "error": n ** -2.0} for n in (4, 8, 16)] + [{"sampler": "s", "calls": 32, "error": np.nan}]
    assert fit_slope(rows, "s") == pytest.approx(-2.0)
    with pytest.raises(UserError):
        fit_slope(rows, "s", min_calls=16)
