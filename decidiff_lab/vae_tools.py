"""The VAE as a lossy compressor: round trips, latent statistics, and where the error goes.

`encode` / `decode` wrap diffusers' `AutoencoderKL` with the pipeline's conventions (pixels in
[-1, 1], latents multiplied by `vae.config.scaling_factor`), taking and giving uint8 images, so
notebook 01 can measure reconstruction error (PSNR) by image content: edges vs flat regions,
small vs large objects. Works on any device and dtype the VAE lives on.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch.utils.flop_counter import FlopCounterMode

from .errors import UserError
from .shapes import to_tensor


@torch.no_grad()
def encode(vae, images, scaled: bool = True, sample: bool = False, seed: int = 0, batch: int = 8) -> torch.Tensor:
    """uint8 N x H x W x 3 -> latents N x C x H/f x W/f (float32, CPU), `batch` images at a time.

    The posterior's mean by default (what a round trip uses), a seeded sample with `sample`.
    `scaled` multiplies by the scaling factor, as the pipeline does before the U-Net sees them.
    """
    generator = torch.Generator(vae.device).manual_seed(seed)
    out = []
    for x in to_tensor(images).split(batch):
        posterior = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
        out.append((posterior.sample(generator) if sample else posterior.mean).float().cpu())
    return torch.cat(out) * (vae.config.scaling_factor if scaled else 1.0)


@torch.no_grad()
def decode(vae, latents: torch.Tensor, scaled: bool = True, batch: int = 8) -> np.ndarray:
    """Latents (scaled, as `encode` gives them) -> uint8 N x H x W x 3, `batch` latents at a time."""
    z = latents / vae.config.scaling_factor if scaled else latents
    x = torch.cat([vae.decode(b.to(vae.device, vae.dtype)).sample.float().cpu() for b in z.split(batch)])
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def round_trip(vae, images) -> np.ndarray:
    """decode(encode(images)): what the VAE keeps of each image."""
    return decode(vae, encode(vae, images))


def psnr(reference, reconstruction, mask=None):
    """Peak signal-to-noise ratio in dB (peak 255), per image for N x H x W x 3 input.

    `mask` (H x W or N x H x W, bool) restricts it to those pixels; inf where nothing differs.
    """
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(reconstruction, dtype=np.float64)
    if a.shape != b.shape:
        raise UserError(f"shapes differ: {a.shape} vs {b.shape}")
    squared = ((a - b) ** 2).mean(axis=-1)  # per pixel, over RGB
    if mask is None:
        mask = np.ones(squared.shape, dtype=bool)
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), squared.shape)
    pixels = mask.sum(axis=(-2, -1))
    if np.any(pixels == 0):
        raise UserError("the mask selects no pixel in at least one image")
    mse = (squared * mask).sum(axis=(-2, -1)) / pixels
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0**2 / mse)


def error_map(reference, reconstruction) -> np.ndarray:
    """Absolute error per pixel, averaged over RGB: N x H x W (or H x W) floats in [0, 255]."""
    return np.abs(np.asarray(reference, float) - np.asarray(reconstruction, float)).mean(axis=-1)


def edge_mask(images, threshold: float = 20.0, width: int = 1) -> np.ndarray:
    """Pixels within `width` px of a colour change (a neighbour differing by > threshold)."""
    x = np.asarray(images, dtype=np.float64)
    edges = np.zeros(x.shape[:-1], dtype=bool)
    dy = np.abs(np.diff(x, axis=-3)).max(axis=-1) > threshold
    dx = np.abs(np.diff(x, axis=-2)).max(axis=-1) > threshold
    edges[..., 1:, :] |= dy
    edges[..., :-1, :] |= dy
    edges[..., :, 1:] |= dx
    edges[..., :, :-1] |= dx
    for _ in range(width - 1):  # grow by one pixel in each direction
        grown = edges.copy()
        grown[..., 1:, :] |= edges[..., :-1, :]
        grown[..., :-1, :] |= edges[..., 1:, :]
        grown[..., :, 1:] |= edges[..., :, :-1]
        grown[..., :, :-1] |= edges[..., :, 1:]
        edges = grown
    return edges


def box_mask(shape, size: int, margin: float = 1.0) -> np.ndarray:
    """H x W mask of a `shapes.Shape`'s bounding box (+ margin px) on a size x size image."""
    k = size / 64.0  # shapes are placed on a canonical 64-px canvas
    half = shape.size / 2 + margin
    ys, xs = (np.arange(size) + 0.5)[:, None] / k, (np.arange(size) + 0.5)[None, :] / k
    return (np.abs(xs - shape.cx) <= half) & (np.abs(ys - shape.cy) <= half)


def latent_shape(vae, image_size: int) -> tuple[int, int, int]:
    """(channels, height, width) of the latent of a square image: factor 2 per encoder block after the first."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if image_size % factor:
        raise UserError(f"image size {image_size} is not a multiple of the VAE's factor {factor}")
    return (vae.config.latent_channels, image_size // factor, image_size // factor)


def compression_ratio(image_shape, latent_shape) -> float:
    """How many numbers of the image each latent number stands for (e.g. 3x64x64 / 4x8x8 = 48)."""
    return float(np.prod(image_shape) / np.prod(latent_shape))


def decode_flops(vae, image_size: int) -> int:
    """FLOPs of one decode of a square image, counted on a `meta` copy (no memory, any size)."""
    with torch.device("meta"):
        meta = AutoencoderKL(**{k: v for k, v in dict(vae.config).items() if not k.startswith("_")})
        z = torch.zeros(1, *latent_shape(vae, image_size))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta.decode(z)
    return counter.get_total_flops()


def round_trip_figure(originals, reconstructions, titles=None, vmax: float = 64.0, size: float = 1.6):
    """Three rows: originals, reconstructions, error heat maps (one shared colour scale, 0..vmax)."""
    import matplotlib.pyplot as plt

    errors = error_map(originals, reconstructions)
    n = len(originals)
    fig, axes = plt.subplots(3, n, figsize=(size * n + 0.8, size * 3), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(originals[i], interpolation="nearest")
        axes[1, i].imshow(reconstructions[i], interpolation="nearest")
        heat = axes[2, i].imshow(errors[i], cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, label in enumerate(("original", "decoded", "|error|")):
        axes[row, 0].set_ylabel(label, fontsize=8)
    bar = fig.colorbar(heat, ax=axes.ravel().tolist(), shrink=0.4, pad=0.02)
    bar.set_label("|error| (0-255)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    return fig
