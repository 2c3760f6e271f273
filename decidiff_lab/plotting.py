"""Showing images, tensors and noise schedules: ipyplot for labelled grids, matplotlib where output
must be stable."""

from __future__ import annotations

import numpy as np

from .schedulers import noise_schedule_curves


def show_images(images, labels, width: int = 128) -> None:
    """A labelled, zoomable grid in the notebook (ipyplot)."""
    import ipyplot

    ipyplot.plot_images(list(np.asarray(images)), labels=list(labels), img_width=width, max_images=len(labels),
                        force_b64=True)


def image_figure(images, titles=None, columns: int | None = None, size: float = 1.8, suptitle: str | None = None):
    """A matplotlib grid of uint8 images with small titles (deterministic output)."""
    import matplotlib.pyplot as plt

    images = list(images)
    columns = columns or min(len(images), 6)
    rows = int(np.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows + 0.3 * bool(suptitle)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(image, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=7, wrap=True)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def channels_figure(latents, title: str = "latent channels", size: float = 1.6):
    """One panel per channel of a C x H x W tensor (e.g. a 4 x 8 x 8 VAE latent)."""
    import matplotlib.pyplot as plt

    latents = np.asarray(latents)
    fig, axes = plt.subplots(1, latents.shape[0], figsize=(size * latents.shape[0], size + 0.4), squeeze=False)
    for c, ax in enumerate(axes[0]):
        ax.imshow(latents[c], cmap="RdBu_r", interpolation="nearest")
        ax.set_title(f"channel {c}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_noise_schedules(schedulers: dict, axes=None):
    """Two panels, alphas_cumprod and log-SNR vs t, one line per (label, scheduler)."""
    import matplotlib.pyplot as plt

    axes = axes if axes is not None else plt.subplots(1, 2, figsize=(10, 3.5))[1]
    for label, scheduler in schedulers.items():
        curves = noise_schedule_curves(scheduler)
        axes[0].plot(curves["t"], curves["alphas_cumprod"], label=label)
        axes[1].plot(curves["t"], curves["log_snr"], label=label)
    axes[0].set(xlabel="training timestep t", ylabel="alphas_cumprod (signal kept)", title="How much signal is left")
    axes[1].set(xlabel="training timestep t", ylabel="log-SNR", title="log signal-to-noise ratio")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].figure.tight_layout()
    return axes


def plot_timesteps(timesteps: dict, ax=None, num_train_timesteps: int = 1000):
    """One row per schedule: a dot at each timestep the sampler visits (left: pure noise)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(9, 0.6 + 0.55 * len(timesteps)))[1]
    labels = list(timesteps)
    for row, label in enumerate(labels):
        ts = [int(t) for t in timesteps[label]]
        ax.plot(ts, [row] * len(ts), "o", markersize=5)
        ax.hlines(row, min(ts), max(ts), alpha=0.3)
    ax.set_yticks(range(len(labels)), [f"{label} ({len(timesteps[label])})" for label in labels], fontsize=8)
    ax.set_xlim(num_train_timesteps, -10)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set(xlabel="timestep (sampling runs left to right, from noise to image)")
    ax.grid(axis="x", alpha=0.3)
    ax.figure.tight_layout()
    return ax
