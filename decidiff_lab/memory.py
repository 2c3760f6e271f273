"""GPU memory and precision: what a 16 GB T4 in a workshop needs, through diffusers' own switches.

* fp16 on CUDA by default (half the memory, tensor cores), fp32 elsewhere.
* On CUDA the VAE decodes one image at a time (its widest activation is per image: 128 channels
  at full resolution); below `LOW_VRAM_GB` also attention slicing, VAE tiling and model CPU
  offload, each announced.
* `MAX_IMAGES` per call anywhere; `max_images_per_call`: how many images one call can make in the GPU memory that is free,
  estimated by tracing the U-Net and VAE on the `meta` device (no memory, no weights).
* fp16 VAEs can overflow into NaN and give black images: `decode_latents_safely` checks each
  slice, and decodes a bad one again in fp32 with a warning, casting the VAE back afterwards.
  (`vae_tools.decode` is the notebooks' plain decode to uint8 images.)
"""

from __future__ import annotations

import functools
import json
import logging
import warnings
import weakref

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .accounting import build_unet
from .errors import UserError

_logger = logging.getLogger(__name__)

MAX_IMAGES = 64  # per call; more is a loop over seeds, not one batch
LOW_VRAM_GB = 12.0
# Margins for what the trace cannot see: allocator fragmentation and cuDNN/cuBLAS workspaces
# (a guess, not yet checked against torch.cuda.max_memory_allocated on a T4).
ACTIVATION_MARGIN = 1.25
RESERVE_BYTES = 2**30


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
    if torch.device(device).type == "cuda":
        pipe.vae.enable_slicing()  # the VAE's own switch: diffusers 0.42 dropped the pipeline's
    plan = memory_plan(device)
    for method in plan:
        if method == "enable_vae_tiling":
            pipe.vae.enable_tiling()
        elif method == "enable_model_cpu_offload":
            pipe.enable_model_cpu_offload(device=device)
        else:
            getattr(pipe, method)()
    if plan and verbose:
        _logger.info(f"{vram_gb(device):.0f} GB of GPU memory (< {LOW_VRAM_GB:.0f}): {', '.join(plan)}")
    if "enable_model_cpu_offload" not in plan:
        pipe.to(device)
    return pipe


class _FusedAttention(TorchFunctionMode):
    """SDPA as CUDA runs it (flash or memory-efficient kernels: no N x N matrix), not the math
    path that meta tensors would take."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, v = args[0], args[2]
            q.new_empty(q.shape[:-1], dtype=torch.float32)  # the kernel's log-sum-exp, freed at once
            return q.new_empty(*q.shape[:-1], v.shape[-1])
        return func(*args, **(kwargs or {}))


class _PeakMemory(TorchDispatchMode):
    """Bytes of the storages created inside the mode that are alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.storages = {}  # storage id -> [tensors using it, bytes]
        self.external = set()  # weights and inputs made outside: not counted

    def _release(self, key):
        entry = self.storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= self.storages.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in self.storages:
                self.external.add(t.untyped_storage()._cdata)
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.untyped_storage()._cdata in self.external:
                continue
            key = t.untyped_storage()._cdata
            if key not in self.storages:  # views and in-place results share a storage: counted once
                self.storages[key] = [0, t.untyped_storage().nbytes()]
                self.live += self.storages[key][1]
            self.storages[key][0] += 1
            weakref.finalize(t, self._release, key)
        self.peak = max(self.peak, self.live)
        return out


def peak_activation_bytes(fn) -> int:
    """Peak bytes of the tensors `fn` creates, run on `meta` tensors (weights excluded)."""
    with _FusedAttention(), _PeakMemory() as mode, torch.no_grad():
        fn()
    return mode.peak


def _cast(module, dtype: torch.dtype):
    """nn.Module's own `to`: diffusers 0.42's logs a keep-in-float32 warning on every dtype cast."""
    return torch.nn.Module.to(module, dtype)


def _config_key(model) -> str:
    return json.dumps(dict(model.config), sort_keys=True, default=str)  # hashable, for the cache


@functools.lru_cache(maxsize=32)
def _traced_costs(unet_key: str, vae_key: str, dtype: torch.dtype, height: int, width: int) -> tuple[int, int, int]:
    """(U-Net bytes per image, VAE decode bytes, output bytes per image), traced on meta copies."""
    unet = _cast(build_unet(json.loads(unet_key)), dtype)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(json.loads(vae_key))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    meta = dict(device="meta", dtype=dtype)

    def unet_step():  # one image under classifier-free guidance: a batch of 2
        sample = torch.zeros(2, unet.config.in_channels, height // factor, width // factor, **meta)
        unet(sample, torch.full((2,), 999, device="meta"), torch.zeros(2, 77, unet.config.cross_attention_dim, **meta))

    def vae_decode(dt):
        _cast(vae, dt)
        vae.decode(torch.zeros(1, vae.config.latent_channels, height // factor, width // factor, device="meta", dtype=dt))

    decode_bytes = peak_activation_bytes(lambda: vae_decode(dtype))
    if dtype != torch.float32:  # room for `decode_latents_safely`'s fp32 retry: fp32 activations, fp32 weights
        extra_weights = sum(p.numel() for p in vae.parameters()) * (4 - torch.finfo(dtype).bits // 8)
        decode_bytes = max(decode_bytes, peak_activation_bytes(lambda: vae_decode(torch.float32)) + extra_weights)
    image = 4 * 3 * height * width * torch.finfo(dtype).bits // 8  # the slices, their cat, postprocessing
    return peak_activation_bytes(unet_step), decode_bytes, image


def call_activation_bytes(unet, vae, height: int, width: int, num_images: int = 1,
                          dtype: torch.dtype | None = None) -> int:
    """Estimated peak activation memory of one call making `num_images` images: the U-Net on
    the CFG batch, then the VAE decoding one image at a time (margin included)."""
    per_image, decode_bytes, image = _traced_costs(_config_key(unet), _config_key(vae), dtype or unet.dtype,
                                                   height, width)
    return _call_bytes(per_image, decode_bytes, image, num_images)


def _call_bytes(per_image: int, decode_bytes: int, image: int, num_images: int) -> int:
    return int(ACTIVATION_MARGIN * max(num_images * per_image, decode_bytes + num_images * image))


def free_bytes(device) -> int:
    """Free GPU memory, counting what PyTorch's caching allocator holds but does not use."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def max_images_per_call(pipe, height: int, width: int) -> int:
    """How many images one call can make at height x width in the GPU memory free now (at least 1);
    `MAX_IMAGES` off CUDA."""
    device = torch.device(pipe._execution_device)
    if device.type != "cuda":
        return MAX_IMAGES
    # Offloaded weights come onto the GPU during the call.
    offloaded = sum(p.numel() * p.element_size() for p in pipe.unet.parameters() if p.device.type == "cpu")
    budget = free_bytes(device) - RESERVE_BYTES - offloaded
    costs = _traced_costs(_config_key(pipe.unet), _config_key(pipe.vae), pipe.unet.dtype, height, width)
    return max((n for n in range(1, MAX_IMAGES + 1) if _call_bytes(*costs, n) <= budget), default=1)


def check_images_per_call(pipe, height: int, width: int, count: int) -> None:
    limit = max_images_per_call(pipe, height, width)
    if count > limit:
        device = torch.device(pipe._execution_device)
        where = f" on this GPU ({free_bytes(device) / 2**30:.1f} GiB free)" if device.type == "cuda" else ""
        raise UserError(f"{count} images in one call: at most {limit} image{'s' * (limit > 1)} per call at "
                        f"{height}x{width}{where}: loop over seeds")


def is_bad_image(images: torch.Tensor) -> bool:
    """NaN/inf anywhere, or an all-black batch: the signature of an fp16 VAE overflow."""
    return bool(not torch.isfinite(images).all() or images.abs().max() < 1e-3 or (images <= -0.999).all())


@torch.no_grad()
def decode_latents_safely(vae, latents: torch.Tensor, batch: int = 1) -> torch.Tensor:
    """VAE decode of scaled latents to [-1, 1] images, `batch` images at a time; a slice that
    overflows in half precision is decoded again in fp32."""
    return torch.cat([_decode_slice(vae, z) for z in latents.split(batch)])


def _decode_slice(vae, latents: torch.Tensor) -> torch.Tensor:
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    if vae.dtype == torch.float32 or not is_bad_image(images):
        return images
    dtype = vae.dtype
    warnings.warn(f"the {str(dtype).replace('torch.', '')} VAE decode gave NaN or a black image: "
                  "decoding again in float32", stacklevel=3)
    _cast(vae, torch.float32)
    try:
        images = vae.decode(latents.float() / vae.config.scaling_factor).sample
    finally:
        _cast(vae, dtype)  # the pipeline's later calls feed it `dtype` latents
    return images.to(dtype)  # in [-1, 1]: no overflow left to fear
