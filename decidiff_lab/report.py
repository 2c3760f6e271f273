"""From benchmark records to what notebook 06 shows: breakdowns, speed-up factors, costs, tables.

Everything here takes the plain dicts that `decidiff_lab.bench.bench_cases` returns (one per
preset x steps) and turns them into rows, markdown tables (`decidiff_lab.tables.markdown`) and
matplotlib figures. The model card's and blog post's own
figures live here too, as data, every row marked `"quoted": True`: they are Deci's
measurements on Deci's hardware, shown *beside* ours, never mixed into them.
"""

from __future__ import annotations

import numpy as np

from .bench import decompose_speedup
from .errors import UserError
from .tables import markdown

# ------------------------------------------------------------------ the model card's and blog post's figures (quoted)

AI100_SOURCE = "DeciDiffusion 2.0 model card"
AI100_HARDWARE = "Qualcomm Cloud AI 100, FP16, compiled"

# The model card's latency table, as records shaped like ours (quoted, not measured here).
QUOTED_AI100 = [
    {"preset": preset, "steps": steps, "seconds_per_image": seconds, "hardware": AI100_HARDWARE,
     "source": AI100_SOURCE, "quoted": True}
    for preset, steps, seconds in (("deci-v2", 16, 1.335), ("sd15", 16, 2.478),
                                   ("deci-v2", 10, 0.971), ("sd15", 10, 1.684))
]

# The DeciDiffusion 1.0 blog post gives claims, not a latency table (quoted, not measured here).
QUOTED_A10G = [
    {"claim": "speed-up vs SD 1.5", "figure": "3x faster", "value": 3.0},
    {"claim": "cost per 10,000 images vs SD 1.5", "figure": "about 66% lower", "value": -0.66},
    {"claim": "iterations for the same quality", "figure": "40% fewer", "value": -0.40},
    {"claim": "parameters (whole pipeline)", "figure": "1.02 B vs 1.07 B", "value": 1.02 / 1.07},
]
for _row in QUOTED_A10G:
    _row.update(hardware="NVIDIA A10G", source="DeciDiffusion 1.0 blog post", quoted=True)


def quoted_decomposition() -> dict:
    """The AI 100 table split the same way as ours: SD 1.5 @ 16 -> DeciDiffusion 2.0 @ 10 (quoted)."""
    return {**decompose_speedup(QUOTED_AI100, ("sd15", 16), ("deci-v2", 10)), "quoted": True}


def quoted_tables_markdown() -> str:
    """The model card's and the blog post's tables as markdown, each headed and labelled as quoted."""
    ai100 = {(r["preset"], r["steps"]): r["seconds_per_image"] for r in QUOTED_AI100}
    rows = [{"steps": n, "deci": ai100[("deci-v2", n)], "sd": ai100[("sd15", n)],
             "ratio": ai100[("sd15", n)] / ai100[("deci-v2", n)]} for n in (16, 10)]
    ai100_table = markdown(rows, [("steps", "iterations", "{}"), ("deci", "DeciDiffusion 2.0 s/image", "{:.3f}"),
                                  ("sd", "SD 1.5 s/image", "{:.3f}"), ("ratio", "SD 1.5 / Deci", "{:.2f}x")])
    a10g_table = markdown(QUOTED_A10G, [("claim", "claim", "{}"), ("figure", "figure", "{}")])
    return "\n".join([f"**Quoted** from the {AI100_SOURCE} ({AI100_HARDWARE}; not measured here)", "", ai100_table, "",
                      f"**Quoted** from the {QUOTED_A10G[0]['source']} ({QUOTED_A10G[0]['hardware']}; not measured here)",
                      "", a10g_table])


def side_by_side(records: list[dict], deci: str, sd: str, steps=(16, 10)) -> list[dict]:
    """Per step count: our measured seconds for `deci` and `sd` beside the AI 100's quoted ones."""
    ours = {(r["preset"], r["steps"]): r["seconds_per_image"] for r in records}
    quoted = {(r["preset"], r["steps"]): r["seconds_per_image"] for r in QUOTED_AI100}
    rows = []
    for n in steps:
        if (deci, n) not in ours or (sd, n) not in ours:
            raise UserError(f"side_by_side needs records for {deci} and {sd} at {n} steps")
        rows.append({"steps": n, "ours_deci": ours[(deci, n)], "ours_sd": ours[(sd, n)],
                     "ours_speedup": ours[(sd, n)] / ours[(deci, n)],
                     "quoted_deci": quoted[("deci-v2", n)], "quoted_sd": quoted[("sd15", n)],
                     "quoted_speedup": quoted[("sd15", n)] / quoted[("deci-v2", n)]})
    return rows


SIDE_BY_SIDE_COLUMNS = [
    ("steps", "steps", "{}"), ("ours_deci", "ours: Deci s/img", "{:.3f}"), ("ours_sd", "ours: SD s/img", "{:.3f}"),
    ("ours_speedup", "ours: SD/Deci", "{:.2f}x"), ("quoted_deci", "AI 100 (quoted): Deci 2.0", "{:.3f}"),
    ("quoted_sd", "AI 100 (quoted): SD 1.5", "{:.3f}"), ("quoted_speedup", "AI 100 (quoted): SD/Deci", "{:.2f}x"),
]


# ------------------------------------------------------------------ tables


def label(record: dict) -> str:
    return f"{record['preset']} @ {record['steps']}"


# ------------------------------------------------------------------ where the time goes

COMPONENTS = ("text encoder", "U-Net steps", "scheduler", "VAE decode", "other")


def breakdown(record: dict) -> dict:
    """Seconds per image by component, from one bench record.

    Each part was timed on its own (text encoder with the empty prompt for guidance, one U-Net
    step on the guidance batch times `steps`, the scheduler's steps, the VAE decode). "other"
    is what the whole pipeline call took beyond their sum (Python glue, latents, image
    post-processing), floored at 0; `unexplained` keeps the signed difference.
    """
    steps = record["steps"]
    parts = {
        "text encoder": record["text_encoder_seconds"],
        "U-Net steps": steps * record["unet_seconds_per_step"],
        "scheduler": steps * record["scheduler_seconds_per_step"],
        "VAE decode": record["vae_decode_seconds"],
    }
    rest = record["seconds_per_image"] - sum(parts.values())
    return {**parts, "other": max(0.0, rest), "whole": record["seconds_per_image"], "unexplained": rest}


def breakdown_rows(records: list[dict]) -> list[dict]:
    """One row per record: seconds per component and the U-Net's share of the whole call."""
    rows = []
    for r in records:
        parts = breakdown(r)
        rows.append({"label": label(r), **{c: parts[c] for c in COMPONENTS}, "whole": parts["whole"],
                     "unet_share": parts["U-Net steps"] / parts["whole"]})
    return rows


def plot_breakdown(records: list[dict], ax=None, title: str = "Where one image's time goes (measured)"):
    """Stacked bars, one per record: text encoder, U-Net steps, scheduler, VAE decode, other."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 3.6))[1]
    rows = breakdown_rows(records)
    names = [r["label"] for r in rows]
    bottom = [0.0] * len(rows)
    for component in COMPONENTS:
        values = [r[component] for r in rows]
        ax.bar(names, values, bottom=bottom, label=component)
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, r in enumerate(rows):
        ax.annotate(f"{r['whole']:.3g} s", (i, max(bottom[i], r["whole"])), ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="seconds per image", title=title)
    ax.set_ylim(0, max(max(bottom), max(r["whole"] for r in rows)) * 1.15)
    ax.legend(fontsize=8, loc="upper right")
    return ax


# ------------------------------------------------------------------ the speed-up, split


def plot_decomposition(splits: dict[str, dict], ax=None, title: str = "Speed-up, split into its two causes"):
    """Grouped bars per split (e.g. {"ours (measured)": ..., "AI 100 (quoted)": ...}):
    fewer steps, cheaper U-Net, their product and the measured total, with a line at 1x."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 3.4))[1]
    keys = [("fewer_steps", "fewer steps"), ("cheaper_unet", "cheaper U-Net"), ("product", "product"),
            ("measured_total", "total (end to end)")]
    width = 0.8 / len(splits)
    x = np.arange(len(keys))
    for i, (name, split) in enumerate(splits.items()):
        bars = ax.bar(x + (i - (len(splits) - 1) / 2) * width, [split[k] for k, _ in keys], width, label=name)
        ax.bar_label(bars, fmt="%.2fx", fontsize=8)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, [name for _, name in keys])
    ax.set(ylabel="times faster", title=title)
    ax.set_ylim(0, max(s[k] for s in splits.values() for k, _ in keys) * 1.2)
    ax.legend(fontsize=8)
    return ax


# ------------------------------------------------------------------ cost


def cost_per_10k(seconds_per_image: float, usd_per_hour: float) -> float:
    """Dollars for 10,000 images at one image at a time on a machine rented at `usd_per_hour`."""
    if seconds_per_image <= 0 or usd_per_hour < 0:
        raise UserError("seconds_per_image must be > 0 and usd_per_hour >= 0")
    return seconds_per_image * 10_000 / 3600 * usd_per_hour


def cost_table(records: list[dict], usd_per_hour: float, base: dict | None = None) -> list[dict]:
    """Images per hour and dollars per 10,000 images for each record, and the saving vs `base`
    (default: the slowest record). The price is an assumption you pass in; the seconds are measured."""
    base = base or max(records, key=lambda r: r["seconds_per_image"])
    base_cost = cost_per_10k(base["seconds_per_image"], usd_per_hour)
    rows = []
    for r in records:
        usd = cost_per_10k(r["seconds_per_image"], usd_per_hour)
        rows.append({"label": label(r), "seconds_per_image": r["seconds_per_image"],
                     "images_per_hour": 3600 / r["seconds_per_image"], "usd_per_10k_images": usd,
                     "saving_vs_base": 1 - usd / base_cost})
    return rows


# ------------------------------------------------------------------ FLOP/s


def plot_flops(records: list[dict], ax=None, title: str = "Achieved U-Net FLOP/s vs this machine's matmul peak"):
    """Achieved GFLOP/s of one U-Net step per record, against the measured matmul peak (dashed)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 3.2))[1]
    bars = ax.bar([label(r) for r in records], [r["achieved_gflops"] for r in records], color="tab:green")
    ax.bar_label(bars, labels=[f"{r['peak_fraction']:.0%}" for r in records], fontsize=8)
    peak = max(r["matmul_peak_gflops"] for r in records)
    ax.axhline(peak, color="black", ls="--", lw=1, label=f"matmul peak {peak:.0f} GFLOP/s")
    ax.set(ylabel="GFLOP/s", title=title)
    ax.set_ylim(0, peak * 1.15)
    ax.legend(fontsize=8)
    return ax


def plot_runtimes(rows: list[dict], sd: str, deci: str, ax=None,
                  title: str = "Seconds per image, U-Net under each runtime (measured)"):
    """Grouped bars: per runtime, SD's and Deci's seconds per image, labelled with Deci's speed-up over SD.

    `rows`: one dict per runtime with keys runtime, sd, deci (seconds) and deci_vs_sd (the ratio).
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 3.4))[1]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["sd"] for r in rows], 0.4, label=sd, color="tab:gray")
    bars = ax.bar(x + 0.2, [r["deci"] for r in rows], 0.4, label=deci, color="tab:blue")
    ax.bar_label(bars, labels=[f"{r['deci_vs_sd']:.2f}x" for r in rows], fontsize=8)
    ax.set_xticks(x, [r["runtime"] for r in rows])
    ax.set(ylabel="seconds per image", title=title)
    ax.legend(fontsize=8)
    return ax
