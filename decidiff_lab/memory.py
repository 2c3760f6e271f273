"""GPU memory and precision: what a 16 GB T4 in a workshop needs, through diffusers' own switches.

* fp16 on CUDA by default (half the memory, tensor cores), fp32 elsewhere.
* Below `LOW_VRAM_GB`: attention slicing, VAE tiling and model CPU offload, each announced.
* fp16 VAEs can overflow into NaN and give black images: `decode` checks, and on a bad result
  decodes again in fp32 (the VAE's `force_upcast` path) with a warning.
"""

from __future__ import annotations

import warnings

import torch

LOW_VRAM_GB = 12.0


def vram_gb(device: str = "cuda") -> float | None:
    """Total memory of the GPU, in GiB; None off CUDA."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.device(device).index or 0).total_memory / 2**30


def default_dtype(device: str) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def memory_plan(device: str) -> list[str]:
    """The memory savers this device needs, by diffusers' method names."""
    total = vram_gb(device)
    if total is None or total >= LOW_VRAM_GB:
        return []
    return ["enable_attention_slicing", "enable_vae_tiling", "enable_model_cpu_offload"]


def place(pipe, device: str, verbose: bool = True):
    """Move `pipe` to `device`, applying the memory plan (offload replaces `.to(device)`)."""
    plan = memory_plan(device)
    for method in plan:
        if method == "enable_vae_tiling":
            pipe.vae.enable_tiling()
        elif method == "enable_model_cpu_offload":
            pipe.enable_model_cpu_offload(device=device)
        else:
            getattr(pipe, method)()
    if plan and verbose:
        print(f"{vram_gb(device):.0f} GB of GPU memory (< {LOW_VRAM_GB:.0f}): {', '.join(plan)}")
    if "enable_model_cpu_offload" not in plan:
        pipe.to(device)
    return pipe


def is_bad_image(images: torch.Tensor) -> bool:
    """NaN/inf anywhere, or an all-black batch: the signature of an fp16 VAE overflow."""
    return bool(not torch.isfinite(images).all() or images.abs().max() < 1e-3 or (images <= -0.999).all())


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode of scaled latents to [-1, 1] images; retried in fp32 when fp16 overflows."""
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    if vae.dtype != torch.float32 and is_bad_image(images):
        warnings.warn(f"the {str(vae.dtype).replace('torch.', '')} VAE decode gave NaN or a black image: "
                      "decoding again in float32 (the VAE's force_upcast path)", stacklevel=2)
        vae.to(torch.float32)
        vae.register_to_config(force_upcast=True)
        images = vae.decode(latents.float() / vae.config.scaling_factor).sample
    return images
