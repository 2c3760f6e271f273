"""The latency-budgeted search, on a tiny space (real measurements, one repeat each)."""

import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from decidiff_lab.accounting import build_unet
from decidiff_lab.errors import UserError
from decidiff_lab.search import candidates, plot_search, search, unet_latencies
from decidiff_lab.bench import cpu_threads
from tiny_parts import TEXT_DIM, tiny_flexible_config


@pytest.fixture(autouse=True)
def one_cpu_thread():
    # Tests run two at a time on two cores: one thread each avoids OpenMP oversubscription (10x slowdowns).
    with cpu_threads(1):
        yield

REFERENCE = dict(sample_size=4, block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=TEXT_DIM,
                 norm_num_groups=8, attention_head_dim=2,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
SPACE = {"small": tiny_flexible_config(down_attentions=(0, 0), up_attentions=(0, 0), mid_attentions=0),
         "large": tiny_flexible_config(down_resnets=(2, 2))}


def run(budget_fraction):
    return search(budget_fraction, repeats=1, warmup=0, space=SPACE, reference=REFERENCE, side=4, progress=False)


def test_candidates_are_16_valid_distinct_configs():
    space = candidates()
    assert len(space) == 16 and len({str(c) for c in space.values()}) == 16
    params = {label: sum(p.numel() for p in build_unet(c).parameters()) for label, c in space.items()}
    assert min(params.values()) > 0
    # one ResNet, no attention anywhere is the smallest point of the space
    assert min(params, key=params.get) == "resnets 1, attention 8x8:0 4x4:0 mid:0"


def test_search_result_layout():
    result = run(100.0)
    assert set(result) == {"rows", "pick", "reference_ms", "reference_params", "budget_ms", "budget_fraction"}
    assert [r["candidate"] for r in result["rows"]] == list(SPACE)
    assert result["budget_ms"] == pytest.approx(100.0 * result["reference_ms"])
    for row in result["rows"]:
        assert row["latency_ms"] > 0 and row["gflops"] > 0
        assert row["vs_reference"] == pytest.approx(row["latency_ms"] / result["reference_ms"])
        assert row["within_budget"]
    small, large = result["rows"]
    assert large["params"] > small["params"] and large["gflops"] > small["gflops"]
    assert result["pick"] == "large"  # everything fits: the most capacity wins


def test_search_with_an_impossible_budget_returns_the_fastest():
    result = run(1e-9)
    assert not any(r["within_budget"] for r in result["rows"])
    assert result["pick"] == min(result["rows"], key=lambda r: r["latency_ms"])["candidate"]


@pytest.mark.parametrize("kwargs", [dict(budget_fraction=0), dict(budget_fraction=-1), dict(space={})])
def test_search_refuses_bad_arguments(kwargs):
    with pytest.raises(UserError):
        search(**{"space": SPACE, "reference": REFERENCE, "repeats": 1, "warmup": 0, **kwargs})


def test_plot_search_marks_pick_budget_and_reference():
    ax = plot_search(run(100.0))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "pick" in labels and "reference (nano-sd)" in labels and labels[-1].startswith("budget")
    assert "over budget" not in labels
    plt.close("all")


class RecordingUNet(torch.nn.Module):
    """Stands in for a U-Net: records the order of calls; `slow` adds a busy wait."""

    def __init__(self, name, log, slow=0.0):
        super().__init__()
        self.name, self.log, self.slow = name, log, slow
        self.config = type("Config", (), {"in_channels": 4, "cross_attention_dim": TEXT_DIM})

    def forward(self, x, t, text):
        assert x.shape == (2, 4, 8, 8) and text.shape == (2, 77, TEXT_DIM)
        self.log.append(self.name)
        if self.slow:
            end = time.perf_counter() + self.slow
            while time.perf_counter() < end:
                pass


def test_latencies_are_timed_in_rounds_one_call_per_model():
    # A slowdown during the search must hit every model alike: the models take turns, round by round.
    log = []
    fast, slow = RecordingUNet("a", log), RecordingUNet("b", log, slow=0.005)
    seconds = unet_latencies([fast, slow], repeats=3, warmup=1)
    assert log == ["a", "b"] * 2 + ["b", "a", "a", "b"]  # warm-up, then rounds, every other one reversed
    assert len(seconds) == 2 and 0 < seconds[0] < seconds[1] and seconds[1] >= 0.005
