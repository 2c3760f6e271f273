"""Benchmark records -> breakdowns, speed-up splits, costs, quoted tables and plots."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from decidiff_lab import report, tables  # noqa: E402


def _record(preset, steps, seconds, unet=0.02, text=0.01, sched=0.001, vae=0.03, achieved=40.0, peak=200.0):
    return {"preset": preset, "steps": steps, "seconds_per_image": seconds, "unet_seconds_per_step": unet,
            "text_encoder_seconds": text, "scheduler_seconds_per_step": sched, "vae_decode_seconds": vae,
            "achieved_gflops": achieved, "matmul_peak_gflops": peak, "peak_fraction": achieved / peak}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_quoted_rows_are_marked_and_match_the_model_card():
    assert all(r["quoted"] for r in report.QUOTED_AI100 + report.QUOTED_A10G)
    table = {(r["preset"], r["steps"]): r["seconds_per_image"] for r in report.QUOTED_AI100}
    assert table == {("deci-v2", 16): 1.335, ("sd15", 16): 2.478, ("deci-v2", 10): 0.971, ("sd15", 10): 1.684}
    assert [r["value"] for r in report.QUOTED_A10G[:3]] == [3.0, -0.66, -0.40]


def test_quoted_decomposition_uses_the_ai100_table():
    split = report.quoted_decomposition()
    assert split["quoted"] is True
    assert split["fewer_steps"] == pytest.approx(2.478 / 1.684)
    assert split["cheaper_unet"] == pytest.approx(2.478 / 1.335)
    assert split["measured_total"] == pytest.approx(2.478 / 0.971)


def test_quoted_tables_markdown_says_quoted_and_shows_the_figures():
    text = report.quoted_tables_markdown()
    assert text.count("**Quoted**") == 2 and "not measured here" in text
    assert "| 16 | 1.335 | 2.478 | 1.86x |" in text and "| 10 | 0.971 | 1.684 | 1.73x |" in text
    assert "3x faster" in text and "about 66% lower" in text


def test_breakdown_adds_up_to_the_whole_call():
    parts = report.breakdown(_record("a", 10, 0.5))
    assert parts["U-Net steps"] == pytest.approx(0.2) and parts["scheduler"] == pytest.approx(0.01)
    assert sum(parts[c] for c in report.COMPONENTS) == pytest.approx(0.5)
    assert parts["other"] == pytest.approx(0.5 - 0.25)


def test_breakdown_floors_other_at_zero_but_keeps_the_signed_rest():
    parts = report.breakdown(_record("a", 10, 0.2))
    assert parts["other"] == 0.0 and parts["unexplained"] == pytest.approx(-0.05)


def test_breakdown_rows_give_the_unet_share():
    (row,) = report.breakdown_rows([_record("nano-sd", 16, 0.64)])
    assert row["label"] == "nano-sd @ 16" and row["unet_share"] == pytest.approx(0.32 / 0.64)


def test_cost_per_10k_images():
    assert report.cost_per_10k(1.0, 3.6) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        report.cost_per_10k(0.0, 1.0)
    with pytest.raises(ValueError):
        report.cost_per_10k(1.0, -1.0)


def test_cost_table_saving_is_against_the_slowest_by_default():
    rows = report.cost_table([_record("sd", 16, 0.9), _record("deci", 10, 0.3)], usd_per_hour=1.0)
    assert [r["label"] for r in rows] == ["sd @ 16", "deci @ 10"]
    assert rows[0]["saving_vs_base"] == pytest.approx(0.0)
    assert rows[1]["saving_vs_base"] == pytest.approx(2 / 3)  # 3x faster = 66.7% cheaper
    assert rows[1]["images_per_hour"] == pytest.approx(12_000)


def test_side_by_side_puts_ours_beside_the_quoted_table():
    records = [_record(p, s, t) for p, s, t in (("d", 16, 0.4), ("s", 16, 1.2), ("d", 10, 0.25), ("s", 10, 0.8))]
    rows = report.side_by_side(records, "d", "s")
    assert [r["steps"] for r in rows] == [16, 10]
    assert rows[0]["ours_speedup"] == pytest.approx(3.0)
    assert rows[1]["quoted_speedup"] == pytest.approx(1.684 / 0.971)
    assert "AI 100 (quoted)" in tables.markdown(rows, report.SIDE_BY_SIDE_COLUMNS)
    with pytest.raises(ValueError, match="at 10 steps"):
        report.side_by_side(records[:2], "d", "s")


def test_markdown_formats_each_column():
    text = tables.markdown([{"a": 1, "b": 0.12345}], [("a", "A", "{}"), ("b", "B", "{:.2f}")])
    assert text.splitlines() == ["| A | B |", "|---|---|", "| 1 | 0.12 |"]


def test_plots_draw_one_bar_per_record_and_component():
    records = [_record("sd", 16, 0.9), _record("deci", 10, 0.3)]
    ax = report.plot_breakdown(records)
    assert len(ax.containers) == len(report.COMPONENTS) and len(ax.patches) == 2 * len(report.COMPONENTS)
    ax = report.plot_decomposition({"ours": report.quoted_decomposition(), "quoted": report.quoted_decomposition()})
    assert len(ax.patches) == 8
    ax = report.plot_flops(records)
    assert len(ax.patches) == 2 and ax.get_ylim()[1] == pytest.approx(200 * 1.15)


def test_breakdown_arithmetic_is_exact_whatever_the_seconds():
    """Notebook 06 asserts these identities on measured records: they hold for any timings, even disturbed ones."""
    for seconds in (0.5, 0.2, 0.25):  # parts inside the whole, parts beyond it, parts exactly the whole
        record = _record("a", 10, seconds)
        parts = report.breakdown(record)
        assert parts["U-Net steps"] == record["steps"] * record["unet_seconds_per_step"]
        timed = sum(parts[c] for c in report.COMPONENTS if c != "other")
        assert abs(timed + parts["unexplained"] - parts["whole"]) < 1e-12
        assert parts["other"] >= 0.0
