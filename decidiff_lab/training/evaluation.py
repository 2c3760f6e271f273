"""Scoring a U-Net in training: the caption checker on generated images, a denoising loss on a
fixed held-out batch, and the checker on one-step reconstructions ("denoise")."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from .. import nano
from ..checker import evaluate
from ..quality import checker_report
from ..schedulers import make_scheduler
from ..shapes import prompt_set
from ..vae_tools import decode
from .data import FrozenParts
from .unet import diffusion_loss

# The checker's scores per checkpoint: images generated from pure noise for held-out captions (the
# shipped logs' columns) and one-step reconstructions of held-out images noised half-way ("denoise").
GENERATION_KEYS = ("single_color", "single_shape", "single_position", "single_acc", "pair_relation", "pair_acc")
DENOISE_KEYS = ("denoise_single", "denoise_pair", "denoise_overall")
SCORE_KEYS = GENERATION_KEYS + DENOISE_KEYS


def nano_scheduler(preset: str):
    """nano-sd: DPM-Solver++ on SD 1.5's schedule; nano-deci: Deci 2.0's squeezed DPM-Solver++."""
    return make_scheduler("dpm++" if preset == "nano-sd" else "squeezed-dpm++")


def evaluate_pipeline(pipe, preset: str, prompts_per_kind: int = 24, seed: int = 0, steps: int | None = None,
                      guidance_scale: float = nano.GUIDANCE, guidance_rescale: float = 0.0, split: str = "test") -> dict:
    """The checker's report on `prompts_per_kind` single-object and two-object captions of `split`
    (`quality.checker_report`). Steps default to the preset's: nano-deci 10, others 16."""
    steps = nano.DEFAULT_STEPS.get(preset, 16) if steps is None else steps
    pipe.set_progress_bar_config(disable=True)
    prompts = prompt_set("mixed", split, 2 * prompts_per_kind, seed)  # half single, half pairs
    return checker_report(pipe, prompts, steps, guidance_scale, guidance_rescale, seed)


def generation_scores(report: dict) -> dict:
    """The checker report's columns every phase row carries (the shipped logs' names)."""
    return {"single_acc": report["single"]["accuracy"], "single_color": report["single"]["color"],
            "single_shape": report["single"]["shape"], "single_position": report["single"]["position"],
            "pair_acc": report["pair"]["accuracy"], "pair_relation": report["pair"]["relation"]}


def _fixed_noise(tensors: dict, noise_scheduler, seed: int, timestep: int | None = None):
    gen = torch.Generator().manual_seed(seed)
    x0 = tensors["latents"]
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(x0),), generator=gen)
    if timestep is not None:
        t = torch.full((len(x0),), timestep)
    return x0, noise, t


@torch.no_grad()
def denoising_loss(unet, noise_scheduler, tensors: dict, seed: int = 0) -> float:
    """The training objective (min-SNR-weighted) on a fixed batch: same noise, same timesteps each call."""
    x0, noise, t = _fixed_noise(tensors, noise_scheduler, seed)
    was_training = unet.training
    unet.eval()
    loss = diffusion_loss(unet, noise_scheduler, x0, noise, t, tensors["text_states"][tensors["caption_ids"]])
    unet.train(was_training)
    return float(loss)


def predicted_clean(noise_scheduler, noisy, pred, t):
    """The clean latent a U-Net output implies (v- or epsilon-prediction); `pred=None`: the noisy
    latent merely rescaled, i.e. what the input alone tells (the no-U-Net baseline)."""
    ac = noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    if pred is None:
        return noisy / ac.sqrt()
    if noise_scheduler.config.prediction_type == "v_prediction":
        return ac.sqrt() * noisy - (1 - ac).sqrt() * pred
    return (noisy - (1 - ac).sqrt() * pred) / ac.sqrt()


@torch.no_grad()
def denoised_images(unet, noise_scheduler, parts: FrozenParts, tensors: dict, timestep: int = 500, seed: int = 0,
                    limit: int | None = None):
    """One-step reconstructions (uint8 images) of the held-out latents noised to `timestep`,
    conditioned on their captions; `unet=None` gives the no-U-Net baseline. `limit`: only the
    first images (same noise as in the full batch)."""
    x0, noise, t = (v[:limit] for v in _fixed_noise(tensors, noise_scheduler, seed, timestep))
    noisy = noise_scheduler.add_noise(x0, noise, t)
    pred = None
    if unet is not None:
        was_training = unet.training
        unet.eval()
        pred = unet(noisy, t, tensors["text_states"][tensors["caption_ids"][:limit]]).sample
        unet.train(was_training)
    clean = predicted_clean(noise_scheduler, noisy, pred, t)
    return decode(parts.vae, clean)


def denoise_scores(unet, noise_scheduler, parts: FrozenParts, tensors: dict, timestep: int = 500,
                   seed: int = 0) -> dict:
    """The caption checker on `denoised_images`: does the U-Net restore the scene its caption describes?"""
    scores = evaluate(list(denoised_images(unet, noise_scheduler, parts, tensors, timestep, seed)), tensors["captions"])
    return {"denoise_single": scores["single"]["accuracy"], "denoise_pair": scores["pair"]["accuracy"],
            "denoise_overall": scores["overall"]}


def pipeline_for(unet, preset: str, parts: FrozenParts) -> StableDiffusionPipeline:
    """A `StableDiffusionPipeline` around a U-Net in training, with `preset`'s sampler and the frozen parts."""
    return StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=unet, scheduler=nano_scheduler(preset), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def checkpoint_row(unet, noise_scheduler, preset: str, parts: FrozenParts, validation: dict,
                   prompts_per_kind: int, seed: int, timestep: int = 500) -> dict:
    """The U-Net as it is now, scored on held-out data: validation loss; the checker on one-step
    denoising from `timestep` ("denoise_*"); with `prompts_per_kind`, the checker on images generated
    from pure noise for held-out captions (the shipped logs' columns: "single_*", "pair_*"). 0 skips
    generation: a short run's generated images score at chance, and sampling is most of the cost."""
    row = {"val_loss": round(denoising_loss(unet, noise_scheduler, validation, seed), 4),
           **denoise_scores(unet, noise_scheduler, parts, validation, timestep, seed)}
    if prompts_per_kind:
        row.update(generation_scores(evaluate_pipeline(pipeline_for(unet, preset, parts), preset, prompts_per_kind,
                                                       seed)))
    return row
