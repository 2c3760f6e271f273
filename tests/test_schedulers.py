"""Deci's squeezed DPM-Solver++, schedule tables, and a real StableDiffusionPipeline run on tiny
random components (no hub, no weights)."""

import json
import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel

from decidiff_lab.schedulers import (
    SCHEDULERS,
    SqueezedDPMSolverMultistepScheduler,
    check_guidance,
    make_scheduler,
    parse_squeeze_mode,
    schedule_table,
    squeeze_timesteps,
)
from tiny_parts import TEXT_DIM

DECI_10_6 = [998, 936, 873, 811, 748, 686, 548, 411, 274, 137]
DECI_16 = [998, 936, 873, 811, 748, 686, 624, 561, 499, 437, 374, 312, 250, 187, 125, 62]


def squeezed(**kwargs):
    scheduler = SqueezedDPMSolverMultistepScheduler(**kwargs)
    scheduler.set_timesteps(16)
    return scheduler


# --- the squeeze ----------------------------------------------------------------------------


def test_deci_defaults_and_10_6_timesteps():
    scheduler = squeezed()
    assert scheduler.timesteps.tolist() == DECI_10_6
    assert scheduler.num_inference_steps == 10
    assert len(scheduler.sigmas) == 11
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.final_sigmas_type == "sigma_min"


def test_squeeze_off_is_plain_16_step_dpm():
    assert squeezed(squeeze_mode=None).timesteps.tolist() == DECI_16


def test_squeeze_helper_on_the_patch_docstring_example():
    made_up = [967, 907, 846, 786, 725, 665, 604, 544, 483, 423, 362, 302, 241, 181, 120, 60]
    assert squeeze_timesteps(made_up, 10, 6) == made_up[:6] + [532, 399, 266, 133]


def test_squeeze_11_7():
    timesteps = squeezed(squeeze_mode="11,7").timesteps.tolist()
    k = DECI_16[6] // 5
    assert timesteps == DECI_16[:7] + [4 * k, 3 * k, 2 * k, k]
    assert len(timesteps) == 11


def test_squeezed_timesteps_has_no_side_effects():
    scheduler = squeezed(squeeze_mode=None)
    before = scheduler.timesteps.clone()
    scheduler.register_to_config(squeeze_mode="10,6")
    assert scheduler.squeezed_timesteps(16) == DECI_10_6
    assert torch.equal(scheduler.timesteps, before)


@pytest.mark.parametrize(
    "mode, fragment",
    [
        ("10", '"N,I"'),
        ("a,b", '"N,I"'),
        ("10,6,2", '"N,I"'),
        ("", '"N,I"'),
        ("6,10", "smaller than N"),
        ("10,10", "smaller than N"),
        ("0,0", "at least 1"),
        ("10,0", "at least 1"),
    ],
)
def test_invalid_squeeze_modes(mode, fragment):
    with pytest.raises(ValueError, match=fragment) as err:
        SqueezedDPMSolverMultistepScheduler(squeeze_mode=mode)
    assert "\n" not in str(err.value)
    assert repr(mode) in str(err.value)


def test_squeeze_longer_than_base_schedule():
    scheduler = SqueezedDPMSolverMultistepScheduler(squeeze_mode="20,6")
    with pytest.raises(ValueError, match="only 16"):
        scheduler.set_timesteps(16)
    scheduler.set_timesteps(25)
    assert len(scheduler.timesteps) == 20


def test_parse_squeeze_mode():
    assert parse_squeeze_mode(" 10 , 6 ") == (10, 6)
    assert parse_squeeze_mode(None) is None


def test_karras_refused():
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        SqueezedDPMSolverMultistepScheduler(use_karras_sigmas=True)
    stock = DPMSolverMultistepScheduler(use_karras_sigmas=True)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        SqueezedDPMSolverMultistepScheduler.from_config(stock.config)


# --- configs --------------------------------------------------------------------------------


def test_save_and_from_pretrained_round_trip(tmp_path):
    original = squeezed(squeeze_mode="11,7", final_sigmas_type="zero")
    original.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["squeeze_mode"] == "11,7"
    loaded = SqueezedDPMSolverMultistepScheduler.from_pretrained(tmp_path)
    loaded.set_timesteps(16)
    assert loaded.config.squeeze_mode == "11,7"
    assert loaded.config.final_sigmas_type == "zero"
    assert torch.equal(loaded.timesteps, original.timesteps)
    assert torch.equal(loaded.sigmas, original.sigmas)


def test_from_config_round_trips():
    original = squeezed(squeeze_mode="11,7")
    copy = SqueezedDPMSolverMultistepScheduler.from_config(original.config)
    copy.set_timesteps(16)
    assert copy.config.squeeze_mode == "11,7"
    assert torch.equal(copy.timesteps, original.timesteps)
    # A stock DPM-Solver config is accepted; its unset options take Deci's defaults.
    from_stock = SqueezedDPMSolverMultistepScheduler.from_config(DPMSolverMultistepScheduler().config)
    from_stock.set_timesteps(16)
    assert from_stock.timesteps.tolist() == DECI_10_6
    # Going back to the stock class keeps Deci's schedule (only squeeze_mode is dropped).
    back = DPMSolverMultistepScheduler.from_config(original.config)
    assert back.config.beta_schedule == "squaredcos_cap_v2"
    assert back.config.lambda_min_clipped == -7.5


# --- sigmas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["10,6", "11,7", None])
def test_sigmas_match_alphas_cumprod(mode):
    scheduler = squeezed(squeeze_mode=mode)
    sigmas = scheduler.sigmas[:-1].double()
    ac = scheduler.alphas_cumprod.double()[scheduler.timesteps]
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert torch.allclose(sigmas, ((1 - ac) / ac).sqrt(), rtol=1e-5, atol=0)


def test_final_sigma_both_types():
    ac0 = SqueezedDPMSolverMultistepScheduler().alphas_cumprod[0].double()
    sigma_min = squeezed(final_sigmas_type="sigma_min").sigmas
    assert math.isclose(sigma_min[-1].item(), ((1 - ac0) / ac0).sqrt().item(), rel_tol=1e-5)
    assert sigma_min[-1] < sigma_min[-2]
    assert squeezed(final_sigmas_type="zero").sigmas[-1].item() == 0.0


# --- running it -----------------------------------------------------------------------------


def tiny_unet(cross_attention_dim=8):
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=4,
        attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()


def test_denoising_loop_runs_all_squeezed_steps():
    unet, scheduler = tiny_unet(), squeezed()
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma
    context = torch.randn(1, 77, 8, generator=generator)
    steps = 0
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_output = unet(scheduler.scale_model_input(latents, t), t, encoder_hidden_states=context).sample
            latents = scheduler.step(model_output, t, latents).prev_sample
            steps += 1
    assert steps == 10 and scheduler.step_index == 10
    assert torch.isfinite(latents).all()


def test_stable_diffusion_pipeline_runs_10_unet_steps(make_tiny_pipe):
    unet = tiny_unet(cross_attention_dim=TEXT_DIM)  # as wide as the shared tiny text encoder
    pipe = make_tiny_pipe(unet=unet, scheduler=SqueezedDPMSolverMultistepScheduler())
    calls, totals = [], []
    pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    progress_bar = pipe.progress_bar
    pipe.progress_bar = lambda iterable=None, total=None: totals.append(total) or progress_bar(iterable, total)

    def run(**kwargs):
        calls.clear()
        generator = torch.Generator().manual_seed(0)
        kwargs = dict(height=8, width=8, guidance_scale=7.5, guidance_rescale=0.8, output_type="np", **kwargs)
        return pipe("a cat", generator=generator, **kwargs).images

    image = run(num_inference_steps=16)
    assert len(calls) == 10  # one batched (uncond + cond) U-Net call per step
    assert totals[-1] == 16  # the pipeline's bar total is the requested count, not len(timesteps)
    assert image.shape == (1, 8, 8, 3) and torch.isfinite(torch.from_numpy(image)).all()

    # Passing the squeezed list as `timesteps` gives the same run and an exact bar.
    same = run(timesteps=pipe.scheduler.squeezed_timesteps(16))
    assert len(calls) == 10 and totals[-1] == 10
    assert (same == image).all()


# --- schedule tables and helpers ------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_schedule_table(name):
    rows = schedule_table(make_scheduler(name), 16)
    timesteps = [row["timestep"] for row in rows]
    log_snr = [row["log_snr"] for row in rows]
    steps = list(zip(timesteps, timesteps[1:]))
    if name == "pndm":  # PLMS repeats its second timestep
        assert len(rows) == 17 and sum(a == b for a, b in steps) == 1
        assert all(a >= b for a, b in steps) and all(x <= y for x, y in zip(log_snr, log_snr[1:]))
    else:
        assert len(rows) == (10 if name == "squeezed-dpm++" else 16)
        assert all(a > b for a, b in steps) and all(x < y for x, y in zip(log_snr, log_snr[1:]))
    assert [row["step"] for row in rows] == list(range(len(rows)))
    assert all(row["dlog_snr"] >= 0 for row in rows)
    for row in rows:
        assert math.isclose(row["log_snr"], math.log(row["alpha_cumprod"] / (1 - row["alpha_cumprod"])), rel_tol=1e-9)


def test_schedule_table_agrees_with_squeezed_sigmas():
    scheduler = make_scheduler("squeezed-dpm++")
    rows = schedule_table(scheduler, 16)
    assert scheduler.num_inference_steps is None  # the table works on a copy
    scheduler.set_timesteps(16)
    assert [row["timestep"] for row in rows] == DECI_10_6
    for row, sigma in zip(rows, scheduler.sigmas[:-1].tolist()):
        assert math.isclose(row["sigma"], sigma, rel_tol=1e-5)
    final_log_snr = -2 * math.log(scheduler.sigmas[-1].item())
    assert math.isclose(rows[-1]["log_snr"] + rows[-1]["dlog_snr"], final_log_snr, rel_tol=1e-5)
    assert math.isinf(schedule_table(make_scheduler("euler"), 16)[-1]["dlog_snr"])  # lands on sigma 0


def test_make_scheduler_names_and_schedules():
    assert make_scheduler("pndm").config.beta_schedule == "scaled_linear"
    assert make_scheduler("squeezed-dpm++").config.prediction_type == "v_prediction"
    assert make_scheduler("ddim", noise_schedule="deci2").config.beta_schedule == "squaredcos_cap_v2"
    assert make_scheduler("dpm++", solver_order=3).config.solver_order == 3
    with pytest.raises(ValueError, match="ddim, pndm, euler, dpm\\+\\+, squeezed-dpm\\+\\+"):
        make_scheduler("lms")
    with pytest.raises(ValueError, match="sd15, deci2"):
        make_scheduler("ddim", noise_schedule="sd21")


def test_check_guidance():
    check_guidance(7.5, 0.8)
    check_guidance(0.0)
    for scale, rescale in [(-1.0, 0.0), (float("nan"), 0.0), (7.5, -0.1), (7.5, float("nan")), (float("inf"), 0.0)]:
        with pytest.raises(ValueError, match="guidance"):
            check_guidance(scale, rescale)
