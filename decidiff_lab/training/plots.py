"""Notebook 07's figures: loss and checker accuracy against samples seen, phase by phase."""

from __future__ import annotations

import matplotlib.pyplot as plt

from .evaluation import DENOISE_KEYS, GENERATION_KEYS

SCORE_LABELS = {"single_color": "single: colour", "single_shape": "single: shape",
                "single_position": "single: position", "single_acc": "single: all correct",
                "pair_relation": "pair: relation", "pair_acc": "pair: all correct",
                "denoise_single": "single: all correct", "denoise_pair": "pair: all correct",
                "denoise_overall": "all captions"}


def _phase_marks(ax, rows: list[dict]) -> None:
    for row in rows[1:] if rows and rows[0]["samples_seen"] == 0 else rows:
        ax.axvline(row["samples_seen"], color="grey", lw=0.6, ls=":")


def plot_scores(rows: list[dict], ax=None, keys=GENERATION_KEYS, baseline: dict | None = None,
                title: str = "Checker accuracy, generated images"):
    """Checker accuracies against samples seen; dotted lines end each phase. `baseline` (e.g.
    `MiniRun.baseline`) adds a dashed line per key: the score of the noisy input alone."""
    ax = ax or plt.subplots(figsize=(6.5, 3.5))[1]
    x = [r["samples_seen"] for r in rows]
    for key in keys:
        (line,) = ax.plot(x, [r[key] for r in rows], marker="o", label=SCORE_LABELS.get(key, key))
        if baseline and key in baseline:
            ax.axhline(baseline[key], color=line.get_color(), ls="--", lw=0.8)
    _phase_marks(ax, rows)
    ax.set(xlabel="training samples seen", ylabel="accuracy", ylim=(-0.02, 1.02), title=title)
    ax.legend(fontsize=7, ncol=2)
    return ax


def plot_losses(rows: list[dict], ax=None, title: str = "Loss per phase"):
    """Training loss at each phase's start and end (mean of its first 20 / last 50 steps, or of its
    first / last fifth if shorter) and, where present, the validation loss at every checkpoint."""
    ax = ax or plt.subplots(figsize=(6.5, 3.5))[1]
    trained = [r for r in rows if r.get("loss_first") is not None]
    for n, r in enumerate(trained):
        start = r["samples_seen"] - r["samples"]
        ax.plot([start, r["samples_seen"]], [r["loss_first"], r["loss_last"]], color="tab:blue", marker="o",
                label="training loss (phase start, end)" if n == 0 else None)
    if any(r.get("val_loss") is not None for r in rows):
        ax.plot([r["samples_seen"] for r in rows], [r["val_loss"] for r in rows], color="tab:orange", marker="s",
                label="validation loss (fixed batch)")
    _phase_marks(ax, rows)
    ax.set(xlabel="training samples seen", ylabel="weighted MSE", title=title, yscale="log")
    ax.legend(fontsize=7)
    return ax


def plot_curves(rows: list[dict], title: str = "", baseline: dict | None = None):
    """Loss and checker accuracy against samples seen: the figure notebook 07 shows, one panel for
    the loss and one for each score the rows hold (one-step denoising, generation)."""
    panels = [keys for keys in (DENOISE_KEYS, GENERATION_KEYS) if keys[0] in rows[0]]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(15 if len(panels) == 2 else 12, 3.8))
    plot_losses(rows, axes[0])
    for ax, keys in zip(axes[1:], panels):
        if keys is DENOISE_KEYS:
            plot_scores(rows, ax, keys, baseline, title="Checker accuracy, one-step denoising")
        else:
            plot_scores(rows, ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
