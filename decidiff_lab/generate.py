"""Text to image with any preset's pipeline: seeded, validated, progress bar of the real length."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .errors import UserError
from .memory import MAX_IMAGES, check_images_per_call, decode_latents_safely
from .schedulers import (SqueezedDPMSolverMultistepScheduler, check_distinct_timesteps, check_guidance,
                         parse_squeeze_mode)

BASE_STEPS = 16  # Deci's reference pipeline squeezes its 16-step list to 10


def check_generation_args(steps: int, height: int, width: int, num_images: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps must be a positive integer (got {steps!r})")
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % 8:
            raise UserError(f"{name} must be a positive multiple of 8 (got {value!r}): the VAE downsamples by 8")
    if not isinstance(num_images, int) or num_images < 1:
        raise UserError(f"num_images must be a positive integer (got {num_images!r})")
    if num_images > MAX_IMAGES:
        # The VAE decoder's widest activation: 128 channels at full resolution, fp32, CFG-free.
        gib = num_images * 128 * height * width * 4 * 3 / 2**30
        raise UserError(f"num_images={num_images} in one batch would need roughly {gib:.1f} GiB for the VAE decode "
                        f"alone: use at most {MAX_IMAGES} per call and loop over seeds")


CLIP_WINDOW = 77  # CLIP's positions: start token + 75 + end token


def check_prompt(prompt: str, tokenizer=None) -> str:
    """Clean a prompt and warn about what CLIP will not see; never raises on odd text."""
    if not isinstance(prompt, str):
        raise UserError(f"a prompt must be text (got {type(prompt).__name__})")
    # Undecodable bytes (surrogate escapes from a non-UTF-8 terminal) and control characters.
    cleaned = prompt.encode("utf-8", "replace").decode("utf-8")
    cleaned = "".join(ch if ch.isprintable() or ch == " " else " " for ch in cleaned)
    if cleaned != prompt:
        warnings.warn("prompt contained control characters or undecodable bytes: replaced them", stacklevel=3)
    if not cleaned.strip():
        warnings.warn("empty prompt: generating unconditionally (what classifier-free guidance subtracts)",
                      stacklevel=3)
    if tokenizer is not None:
        ids = tokenizer(cleaned[:20_000], truncation=False).input_ids
        if len(ids) > CLIP_WINDOW:
            dropped = len(ids) - CLIP_WINDOW
            warnings.warn(f"prompt is {len(ids)} tokens; CLIP reads {CLIP_WINDOW}, so the last {dropped} are dropped",
                          stacklevel=3)
    return cleaned


def squeezed_schedule(scheduler: SqueezedDPMSolverMultistepScheduler, steps: int) -> list[int]:
    """`steps` timesteps: the squeeze when `steps` is its N, from a base list 1.6x as long
    (Deci: 16 -> 10); plain linspace otherwise.

    Passed to the pipeline as explicit timesteps, so its progress bar counts the steps run.
    """
    squeeze = parse_squeeze_mode(scheduler.config.squeeze_mode)
    if squeeze and steps == squeeze[0]:
        return scheduler.squeezed_timesteps(round(steps * BASE_STEPS / 10))
    plain = SqueezedDPMSolverMultistepScheduler.from_config(scheduler.config, squeeze_mode=None)
    return plain.squeezed_timesteps(steps)


def generate(pipe, prompts: str | list[str], steps: int | None = None, guidance_scale: float = 7.5,
             guidance_rescale: float = 0.0, seed: int = 0, height: int | None = None, width: int | None = None,
             num_images: int = 1) -> np.ndarray:
    """Images (N x H x W x 3, uint8) for `prompts`, `num_images` each, deterministic per seed."""
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, (list, tuple)):
        raise UserError(f"a prompt must be text or a list of texts (got {type(prompts).__name__})")
    prompts = [check_prompt(p, pipe.tokenizer) for p in prompts]
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = height or side, width or side
    steps = 16 if steps is None else steps
    check_generation_args(steps, height, width, num_images)
    check_images_per_call(pipe, height, width, len(prompts) * num_images)  # what this GPU's free memory holds
    check_guidance(guidance_scale, guidance_rescale)
    kwargs = {"num_inference_steps": steps}
    if isinstance(pipe.scheduler, SqueezedDPMSolverMultistepScheduler):
        kwargs = {"timesteps": squeezed_schedule(pipe.scheduler, steps)}
    else:
        check_distinct_timesteps(pipe.scheduler, steps)
    generator = torch.Generator("cpu").manual_seed(seed)
    half = pipe.vae.dtype != torch.float32  # fp16 VAEs can overflow: decode ourselves, with a fallback
    with torch.inference_mode():
        out = pipe(prompts, height=height, width=width, guidance_scale=guidance_scale,
                   guidance_rescale=guidance_rescale, num_images_per_prompt=num_images,
                   generator=generator, output_type="latent" if half else "np", **kwargs)
        images = out.images
        if half:
            images = pipe.image_processor.postprocess(decode_latents_safely(pipe.vae, images), output_type="np")
    return (images * 255).round().clip(0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """N x H x W x 3 -> one image, `columns` wide (default: as square as possible)."""
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.full((rows * h, columns * w, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        grid[(i // columns) * h:(i // columns + 1) * h, (i % columns) * w:(i % columns + 1) * w] = image
    return grid
