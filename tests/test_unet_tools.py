"""Hooks inside a running U-Net (call counts, FLOPs per module, block latencies, the skip stack)
and the schedule/table helpers, on tiny random U-Nets."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from diffusers import UNet2DConditionModel

from decidiff_lab import architectures as arch
from decidiff_lab.accounting import build_unet, unet_flops
from decidiff_lab.flexible_unet import FlexibleUNet2DConditionModel
from decidiff_lab.plotting import plot_noise_schedules, plot_timesteps
from decidiff_lab.schedulers import make_scheduler, noise_schedule_curves
from decidiff_lab.tables import text_table
from decidiff_lab.unet_tools import (REST, block_latencies, block_names, count_calls, module_flops,
                                     plot_block_bars, run_order, skip_stack_trace, unet_inputs)
from decidiff_lab.bench import cpu_threads
from tiny_parts import TEXT_DIM, tiny_flexible_config


@pytest.fixture(autouse=True)
def one_cpu_thread():
    # Tests run two at a time on two cores: one thread each avoids OpenMP oversubscription (10x slowdowns).
    with cpu_threads(1):
        yield


def tiny_flexible(**overrides):
    torch.manual_seed(0)
    return FlexibleUNet2DConditionModel(tiny_flexible_config(**overrides)).eval()


def tiny_sd():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=TEXT_DIM,
        norm_num_groups=8, attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_block_names_and_inputs():
    unet = tiny_flexible()
    assert block_names(unet) == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    sample, t, text = unet_inputs(unet, batch=2)
    assert sample.shape == (2, 4, 8, 8) and t.tolist() == [500, 500] and text.shape == (2, 77, TEXT_DIM)
    assert torch.equal(sample, unet_inputs(unet)[0])  # seeded


def test_count_calls_shows_the_mid_block_quirk():
    unet = tiny_flexible()
    names = [f"mid_block.modules_list.{i}" for i in range(len(unet.mid_block.modules_list))]
    with torch.no_grad(), count_calls(unet, names + ["conv_in"]) as calls:
        unet(*unet_inputs(unet))
    assert calls == {"mid_block.modules_list.0": 2, "mid_block.modules_list.1": 1,
                     "mid_block.modules_list.2": 1, "conv_in": 1}
    assert _hook_count(unet) == 0  # hooks removed on exit


def test_sd_mid_block_runs_each_resnet_once():
    unet = tiny_sd()
    with torch.no_grad(), count_calls(unet, ["mid_block.resnets.0", "mid_block.resnets.1"]) as calls:
        unet(*unet_inputs(unet))
    assert calls == {"mid_block.resnets.0": 1, "mid_block.resnets.1": 1}


def test_module_flops_counts_both_calls():
    unet = tiny_flexible()
    first, second = module_flops(unet, ["mid_block.modules_list.0", "mid_block.modules_list.2"], resolution=64)
    assert first["calls"] == 2 and second["calls"] == 1
    # the same ResNet shape, so the same cost per call; the first runs twice
    assert first["gflops_per_call"] == pytest.approx(second["gflops_per_call"])
    assert first["gflops"] == pytest.approx(2 * second["gflops"])
    assert 0 < first["share"] < 1
    assert _hook_count(unet) == 0


def test_full_size_quirk_costs_exactly_one_mid_resnet_call():
    # SD 1.5 as a flexible config has SD's parameters; its only extra work is the repeated ResNet.
    flexible = build_unet(arch.SD15_AS_FLEXIBLE)
    (row,) = module_flops(flexible, ["mid_block.modules_list.0"])
    extra = unet_flops(flexible) - unet_flops(build_unet(arch.SD15_UNET))
    assert row["calls"] == 2
    assert extra == pytest.approx(row["gflops_per_call"] * 1e9)


def test_block_latencies_rows():
    unet = tiny_flexible()
    rows = block_latencies(unet, repeats=2, warmup=1, num_threads=1)
    assert [r["block"] for r in rows] == block_names(unet) + [REST]
    assert all(r["ms"] >= 0 for r in rows) and all(r["ms"] > 0 for r in rows[:-1])
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=0.05)
    assert _hook_count(unet) == 0


def test_skip_stack_trace_on_a_flexible_unet():
    unet = tiny_flexible()  # channels 32/64, one ResNet per down block, a downsampler after block 0
    events = skip_stack_trace(unet)
    pushes = [e for e in events if e["op"] == "push"]
    pops = [e for e in events if e["op"] == "pop"]
    assert [(e["by"], e["shape"]) for e in pushes] == [
        ("conv_in", (32, 8, 8)),
        ("down_blocks.0.modules_list.0", (32, 8, 8)),  # right after the ResNet, before its attention
        ("down_blocks.0.downsamplers.0", (32, 4, 4)),
        ("down_blocks.1.modules_list.0", (64, 4, 4)),
    ]
    assert [e["depth"] for e in events] == [1, 2, 3, 4, 3, 2, 1, 0]
    # last in, first out: the up path pops the shapes in reverse
    assert [e["shape"] for e in pops] == [e["shape"] for e in reversed(pushes)]
    assert all(e["matches"] for e in pops)
    assert pops[0]["by"].startswith("up_blocks.0.") and pops[-1]["by"].startswith("up_blocks.1.")
    assert pops[0]["concat_in"] == 64 + 64
    assert _hook_count(unet) == 0


def test_skip_stack_trace_on_sd_unet_skips_come_after_attention():
    events = skip_stack_trace(tiny_sd())
    pushes = [e for e in events if e["op"] == "push"]
    assert pushes[1]["by"] == "down_blocks.0.attentions.0"  # SD saves after the attention
    assert len(pushes) == len([e for e in events if e["op"] == "pop"]) and events[-1]["depth"] == 0
    assert all(e["matches"] for e in events if e["op"] == "pop")


def test_text_table_alignment_and_formats():
    rows = [{"block": "down_blocks.0", "params": 1234567, "gflops": 1.23456}, {"block": "mid", "params": 5,
                                                                                "gflops": 10.0}]
    table = text_table(rows, formats={"gflops": ".2f"})
    lines = table.splitlines()
    assert lines[0].split() == ["block", "params", "gflops"]
    assert lines[2].split() == ["down_blocks.0", "1,234,567", "1.23"]
    assert lines[3].endswith("10.00") and len(lines) == 4
    assert text_table(rows, columns=["block"]).splitlines()[0] == "block"


def test_noise_schedule_curves():
    linear = noise_schedule_curves(make_scheduler("ddim", "sd15"))
    cosine = noise_schedule_curves(make_scheduler("ddim", "deci2"))
    for curves in (linear, cosine):
        assert len(curves["t"]) == 1000
        assert (curves["log_snr"][1:] < curves["log_snr"][:-1]).all()  # noise only grows with t
    # the cosine schedule destroys the signal almost completely by t = 999, scaled-linear does not
    assert cosine["alphas_cumprod"][-1] < 1e-3 < linear["alphas_cumprod"][-1]


def test_plots_draw_one_series_per_input():
    unet = build_unet(tiny_flexible_config())
    from decidiff_lab.accounting import unet_block_table

    table = unet_block_table(unet, resolution=64)
    ax = plot_block_bars({"a": table, "b": table})
    assert len(ax.containers) == 2 and len(ax.get_xticklabels()) == len(table)
    axes = plot_noise_schedules({"x": make_scheduler("ddim", "sd15"), "y": make_scheduler("ddim", "deci2")})
    assert [len(a.lines) for a in axes] == [2, 2]
    ax = plot_timesteps({"ten": list(range(900, -1, -100)), "three": [999, 500, 1]})
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ten (10)", "three (3)"]
    plt.close("all")


def test_run_order_shows_cells_and_the_repeated_mid_resnet():
    rows = {r["block"]: r for r in run_order(tiny_flexible(down_resnets=(2, 1), up_resnets=(2, 3)))}
    assert rows["down_blocks.0"]["order"] == "R A R v"  # interleaved, then the downsampler
    assert rows["down_blocks.1"]["order"] == "R"
    assert rows["mid_block"]["order"] == "R R A R"  # the published quirk: the first ResNet twice
    assert (rows["mid_block"]["resnets"], rows["mid_block"]["attentions"]) == (2, 1)
    assert rows["up_blocks.0"]["order"] == "R R ^" and rows["up_blocks.1"]["order"] == "R A R R"
    sd = {r["block"]: r["order"] for r in run_order(build_unet(arch.SD15_UNET))}
    assert sd["down_blocks.0"] == "R A R A v" and sd["mid_block"] == "R A R" and sd["up_blocks.3"] == "R A R A R A"


def test_cpu_threads_sets_and_restores():
    from decidiff_lab.bench import cpu_threads

    before = torch.get_num_threads()
    with cpu_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), cpu_threads(before + 1):
        raise RuntimeError("restored even on errors")
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before
