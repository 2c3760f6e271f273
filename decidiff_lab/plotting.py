"""Showing images and tensors: ipyplot for labelled grids, matplotlib where output must be stable."""

from __future__ import annotations

import numpy as np


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
