"""Quality vs steps on a tiny random pipeline: every sampler runs exactly `steps` U-Net calls,
scores are well-formed and deterministic, and the pipeline is left as it was."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from diffusers import UNet2DConditionModel

from decidiff_lab.errors import UserError
from decidiff_lab.quality import SAMPLERS, plot_quality_vs_steps, quality_vs_steps, sampler_for, summarize
from decidiff_lab.schedulers import SqueezedDPMSolverMultistepScheduler
from decidiff_lab.bench import cpu_threads
from tiny_parts import TEXT_DIM


@pytest.fixture(autouse=True)
def one_cpu_thread():
    # Tests run two at a time on two cores: one thread each avoids OpenMP oversubscription (10x slowdowns).
    with cpu_threads(1):
        yield

PROMPTS = ["a red circle on the left", "a blue square above a green triangle"]


@pytest.fixture
def pipe(make_tiny_pipe):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=TEXT_DIM,
        norm_num_groups=4, attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    pipe = make_tiny_pipe(unet=unet, scheduler=SqueezedDPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(leave=False)
    return pipe


def test_sampler_for_keeps_the_noise_schedule(pipe):
    for name in SAMPLERS:
        scheduler = sampler_for(pipe, name, 10)
        assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
        assert scheduler.config.prediction_type == "v_prediction"
    squeezed = sampler_for(pipe, "squeezed-dpm++", 10)
    assert squeezed.config.squeeze_mode == "10,6"  # Deci's 16 -> 10
    assert squeezed.squeezed_timesteps(16) == [998, 936, 873, 811, 748, 686, 548, 411, 274, 137]
    assert sampler_for(pipe.scheduler, "ddim", 4).config.beta_schedule == "squaredcos_cap_v2"


def test_each_row_runs_exactly_its_steps(pipe):
    calls = []
    pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    original = pipe.scheduler
    rows = quality_vs_steps(pipe, steps_list=(2, 4), prompts=PROMPTS, progress=False)
    assert [(r["sampler"], r["steps"]) for r in rows] == [(s, n) for s in SAMPLERS for n in (2, 4)]
    assert len(calls) == len(SAMPLERS) * (2 + 4)  # one batched CFG call per step
    for row in rows:
        for key in ("accuracy", "single", "pair", "color", "shape", "place", "count", "attributes"):
            assert 0 <= row[key] <= 1
        assert row["attributes"] == pytest.approx((row["color"] + row["shape"] + row["place"] + row["count"]) / 4)
    assert pipe.scheduler is original
    assert pipe._progress_bar_config == {"leave": False}
    again = quality_vs_steps(pipe, steps_list=(2, 4), prompts=PROMPTS, progress=False)
    assert again == rows  # same prompts, same seeds


def test_default_prompts_and_missing_kind(pipe):
    rows = quality_vs_steps(pipe, steps_list=(2,), samplers=("ddim",), prompts_per_kind=1, progress=False)
    assert len(rows) == 1 and rows[0]["single"] is not None and rows[0]["pair"] is not None
    rows = quality_vs_steps(pipe, steps_list=(2,), samplers=("ddim",), prompts=PROMPTS[:1], progress=False)
    assert rows[0]["pair"] is None


@pytest.mark.parametrize("samplers, steps, fragment", [(("euler",), (4,), "unknown sampler"),
                                                      (("squeezed-dpm++",), (1,), "at least 2 steps")])
def test_bad_requests_fail_before_generating(pipe, samplers, steps, fragment):
    calls = []
    pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(UserError, match=fragment):
        quality_vs_steps(pipe, steps_list=steps, samplers=samplers, prompts=PROMPTS, progress=False)
    assert calls == []


def test_summarize_pools_kinds_by_count():
    report = {"overall": 0.25, "n": 4,
              "single": {"n": 3, "accuracy": 1 / 3, "color": 1.0, "shape": 2 / 3, "position": 1 / 3, "count": 1.0},
              "pair": {"n": 1, "accuracy": 0.0, "color": 0.0, "shape": 1.0, "relation": 1.0, "count": 0.0}}
    row = summarize(report)
    assert row["accuracy"] == 0.25 and row["single"] == pytest.approx(1 / 3) and row["pair"] == 0.0
    assert row["color"] == pytest.approx(0.75) and row["shape"] == pytest.approx(0.75)
    assert row["place"] == pytest.approx(0.5) and row["count"] == pytest.approx(0.75)
    assert row["attributes"] == pytest.approx((0.75 + 0.75 + 0.5 + 0.75) / 4)
    only_single = {**report, "pair": {"n": 0, "accuracy": None, "color": None, "shape": None, "relation": None,
                                      "count": None}}
    assert summarize(only_single)["pair"] is None and summarize(only_single)["color"] == 1.0


def test_plot_one_line_per_sampler():
    rows = [{"sampler": s, "steps": n, "accuracy": 0.5, "single": 0.5, "pair": 0.5} for s in SAMPLERS for n in (4, 8)]
    ax = plot_quality_vs_steps(rows, mark_steps=8)
    assert len(ax.lines) == len(SAMPLERS) + 1
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "8 steps"
    plt.close("all")
