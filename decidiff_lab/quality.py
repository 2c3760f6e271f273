"""Quality vs steps: the caption checker's accuracy for each sampler and step count.

The data behind "the same quality with 40% fewer steps": run one nano pipeline with DDIM,
DPM-Solver++ and Deci's squeezed DPM-Solver++ at several step counts, same prompts and seeds.
"""

from __future__ import annotations

import copy

from tqdm.auto import tqdm

from . import nano
from .checker import evaluate
from .errors import UserError
from .generate import generate
from .memory import MAX_IMAGES
from .schedulers import make_scheduler
from .shapes import prompt_set

SAMPLERS = ("ddim", "dpm++", "squeezed-dpm++")


def sampler_for(pipe, name: str, steps: int):
    """`name` on the noise schedule of `pipe` (a pipeline, or a scheduler); squeezed: N=steps, keep
    60% (Deci: 16 -> 10 keeps 6)."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if name == "squeezed-dpm++" and steps < 2:
        raise UserError(f"squeezed-dpm++ needs at least 2 steps (it keeps some and squeezes the rest), got {steps}")
    base = getattr(pipe, "scheduler", pipe)
    config = {k: v for k, v in base.config.items() if k in (
        "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")}
    if name == "squeezed-dpm++":
        config["squeeze_mode"] = f"{steps},{max(1, round(0.6 * steps))}"
    return make_scheduler(name, **config)


def quality_vs_steps(pipe, steps_list=(4, 6, 8, 10, 12, 16, 25), samplers=SAMPLERS, prompts_per_kind: int = 12,
                     guidance_scale: float = nano.GUIDANCE, seed: int = 0, prompts: list[str] | None = None,
                     progress: bool = True) -> list[dict]:
    """One row per (sampler, steps): sampler, steps and the checker's scores (see `summarize`).

    Same prompts and seed for every row: `prompts_per_kind` held-out single-object and
    two-object captions (or `prompts` as given). The pipeline's scheduler and progress-bar
    settings are restored afterwards. A kind with no prompts scores None.
    """
    if prompts is None:
        prompts = (prompt_set("single", "test", prompts_per_kind, seed)
                   + prompt_set("pair", "test", prompts_per_kind, seed))
    for name in samplers:
        for steps in steps_list:
            sampler_for(pipe.scheduler, name, steps)  # refuse bad names/steps before generating anything
    original = pipe.scheduler
    bar_config = copy.deepcopy(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    rows = []
    try:
        for name in samplers:
            for steps in tqdm(steps_list, desc=name, disable=not progress):
                pipe.scheduler = sampler_for(original, name, steps)
                report = checker_report(pipe, prompts, steps, guidance_scale, seed=seed)
                rows.append({"sampler": name, "steps": steps, **summarize(report)})
    finally:
        pipe.scheduler = original
        pipe._progress_bar_config = bar_config
    return rows


def checker_report(pipe, prompts: list[str], steps: int, guidance_scale: float, guidance_rescale: float = 0.0,
                   seed: int = 0) -> dict:
    """One image per prompt, scored by the caption checker (`checker.evaluate`'s report).

    Generated `MAX_IMAGES` prompts at a time, chunk k seeded `seed + k * MAX_IMAGES`.
    """
    images = [image for start in range(0, len(prompts), MAX_IMAGES)
              for image in generate(pipe, prompts[start:start + MAX_IMAGES], steps=steps, seed=seed + start,
                                    guidance_scale=guidance_scale, guidance_rescale=guidance_rescale)]
    return evaluate(images, prompts)


def summarize(report: dict) -> dict:
    """One flat row from `checker.evaluate`'s report.

    accuracy: share of images fully correct; single / pair: the same per kind (None without
    prompts of that kind); color, shape, place (position for one object, relation for two) and
    count: per-attribute shares over all images; attributes: their mean, a partial-credit score
    that moves before the strict accuracy does.
    """
    kinds = [k for k in ("single", "pair") if report[k]["n"]]
    n = sum(report[k]["n"] for k in kinds)

    def pooled(single_key, pair_key=None):
        return sum(report[k][single_key if k == "single" else (pair_key or single_key)] * report[k]["n"]
                   for k in kinds) / n

    row = {"accuracy": report["overall"], "single": report["single"]["accuracy"], "pair": report["pair"]["accuracy"],
           "color": pooled("color"), "shape": pooled("shape"), "place": pooled("position", "relation"),
           "count": pooled("count")}
    row["attributes"] = (row["color"] + row["shape"] + row["place"] + row["count"]) / 4
    return row


def plot_quality_vs_steps(rows: list[dict], ax=None, key: str = "accuracy", mark_steps: int | None = None):
    """Checker accuracy (or another column of the rows, e.g. "attributes") vs steps, one line per
    sampler; `mark_steps` draws a dotted line at a step count (e.g. 10, DeciDiffusion 2.0's)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    for name in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == name]
        ax.plot([r["steps"] for r in mine], [r[key] for r in mine], marker="o", label=name)
    if mark_steps is not None:
        ax.axvline(mark_steps, color="gray", linestyle=":", label=f"{mark_steps} steps")
    ax.set_xticks(sorted({r["steps"] for r in rows}))
    ax.set(xlabel="denoising steps", ylabel=f"checker {key}", ylim=(0, 1.02), title="Quality vs steps")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax
