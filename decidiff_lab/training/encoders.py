"""The frozen parts' own stages: the VAE, then CLIP (contrastive, then relations), each trained
against a wall-clock budget; and the shipped ones, for a run that trains only the U-Nets."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPTokenizer

from .. import nano
from ..errors import UserError
from ..loading import load_nano_clip
from .. import presets
from ..shapes import make_dataset, meaning, parse_caption, render, swap_roles, swapped_twin, to_tensor
from ..text_tools import placement_accuracy, placement_variants
from .logs import log_row
from .recipe import Recipe


def cosine_in_time(step: int, fraction_done: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 0 at `fraction_done` = 1. These stages run against a time
    budget, so the LR reaches its floor when the deadline does, however many steps this machine
    manages: a step-count schedule (diffusers.optimization, used for the U-Nets) cannot know that."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, fraction_done)))


def train_vae(images: np.ndarray, recipe: Recipe, log: Path, held_out: np.ndarray) -> AutoencoderKL:
    with torch.random.fork_rng(devices=[]):  # seeded init, the caller's global seed left as it was
        torch.manual_seed(recipe.seed)
        vae = AutoencoderKL(**nano.VAE)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    rng = np.random.default_rng(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)  # the posterior's samples
    start, budget = time.monotonic(), recipe.vae_minutes * 60
    step = 0
    with tqdm(desc="VAE", unit="step") as bar:
        while (elapsed := time.monotonic() - start) < budget:
            for g in opt.param_groups:
                g["lr"] = recipe.vae_lr * max(0.02, cosine_in_time(step, elapsed / budget))
            x = to_tensor(images[rng.integers(0, len(images), recipe.vae_batch)])
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample(generator=gen)).sample
            # L1 keeps edges and hues crisp; a tiny KL keeps latents near Gaussian (SD uses ~1e-6).
            loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update()
            if step % 100 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    psnr = vae_psnr(vae, held_out)
    # Unit-variance latents, as SD's 0.18215 does for its VAE.
    with torch.no_grad():
        latents = vae.encode(to_tensor(images[:2000])).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    log_row(log, {"stage": "vae", "steps": step, "minutes": recipe.vae_minutes, "psnr_db": round(psnr, 2),
                  "scaling_factor": round(vae.config.scaling_factor, 5)})
    return vae


@torch.no_grad()
def vae_psnr(vae: AutoencoderKL, images: np.ndarray) -> float:
    x = to_tensor(images)
    recon = torch.cat([vae.decode(vae.encode(b).latent_dist.mean).sample for b in x.split(16)])
    mse = F.mse_loss(recon.clamp(-1, 1), x).item() / 4  # [-1, 1] -> [0, 1] range
    return 10 * math.log10(1.0 / mse)


# ----------------------------------------------------------------- CLIP


def _hard_negative(caption: str, rng: np.random.Generator) -> str:
    """The same objects, another place: captions that differ only in position or relation."""
    if parse_caption(caption)[2] and rng.random() < 0.5:
        return swap_roles(caption)
    others = placement_variants(caption)[1:]
    return others[rng.integers(len(others))]


def train_clip(data, tokenizer: CLIPTokenizer, recipe: Recipe, log: Path) -> CLIPModel:
    config = CLIPConfig(text_config=nano.CLIP_TEXT, vision_config=nano.CLIP_VISION,
                        projection_dim=nano.CLIP_PROJECTION_DIM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        clip = CLIPModel(config)
    opt = torch.optim.AdamW(clip.parameters(), lr=recipe.clip_lr, weight_decay=0.01)
    rng = np.random.default_rng(recipe.seed + 1)
    deadline = time.monotonic() + recipe.clip_minutes * 60
    step, hits = 0, []
    with tqdm(desc="CLIP", unit="step") as bar:
        while time.monotonic() < deadline:
            idx = rng.integers(0, len(data), recipe.clip_batch)
            captions = [data.captions[i] for i in idx]
            negatives = [_hard_negative(c, rng) for c in captions]
            tokens = tokenizer(captions + negatives, padding="max_length", max_length=77, return_tensors="pt")
            out = clip(input_ids=tokens.input_ids, pixel_values=to_tensor(data.images[idx]), return_loss=False)
            img, txt = F.normalize(out.image_embeds, dim=-1), F.normalize(out.text_embeds, dim=-1)
            logits = clip.logit_scale.exp() * img @ txt.T  # images x (captions + hard negatives)
            target = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : len(idx)].T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            hits.append((logits.argmax(1) == target).float().mean().item())
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", top1=f"{np.mean(hits[-20:]):.2f}")
    clip.eval()
    log_row(log, {"stage": "clip", "steps": step, "minutes": recipe.clip_minutes,
                  "top1_vs_batch_and_hard_negatives": round(float(np.mean(hits[-20:])), 3),
                  **placement_scores(clip, tokenizer, recipe.seed)})
    return clip


def placement_scores(clip: CLIPModel, tokenizer: CLIPTokenizer, seed: int = 0) -> dict:
    """Can its text tower tell places apart? A U-Net trained on its frozen states needs that.
    `text_tools.placement_accuracy` on 200 held-out single-object and 200 two-object images."""
    scores = {}
    for key, pair_fraction, offset in (("single_position_accuracy", 0.0, 7), ("pair_relation_accuracy", 1.0, 8)):
        data = make_dataset(200, seed + offset, nano.IMAGE_SIZE, split="test", pair_fraction=pair_fraction)
        scores[key] = round(placement_accuracy(clip, tokenizer, data.images, data.captions), 3)
    return scores


def _multi_positive_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Cross-entropy where several columns are right (two wordings of one pair, repeated captions)."""
    return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, -1e4), 1)).mean()


def train_clip_relations(clip: CLIPModel, data, tokenizer: CLIPTokenizer, recipe: Recipe, log: Path) -> CLIPModel:
    """Teach the CLIP *where*: every image sits in its batch beside its swapped twin (same objects,
    places exchanged), and is scored against every caption of its objects in every place.

    In-batch contrastive training alone ranks a pair's four arrangements barely above chance: no
    batch holds two images that differ only in order, so neither tower needs it, and the frozen
    text encoder then hands the U-Nets "left of" and "right of" as near-identical states.
    """
    opt = torch.optim.AdamW(clip.parameters(), lr=recipe.clip_relation_lr, weight_decay=0.01)
    rng = np.random.default_rng(recipe.seed + 3)
    start, budget = time.monotonic(), recipe.clip_relation_minutes * 60
    step, losses = 0, []
    clip.train()
    with tqdm(desc="CLIP relations", unit="step") as bar:
        while (elapsed := time.monotonic() - start) < budget:
            for g in opt.param_groups:
                g["lr"] = recipe.clip_relation_lr * cosine_in_time(step, elapsed / budget, warmup=20)
            scenes = [data.scenes[i] for i in rng.integers(0, len(data), recipe.clip_relation_batch)]
            scenes += [t for t in (swapped_twin(s, rng) for s in scenes) if t is not None]
            meanings = [meaning(s.caption) for s in scenes]
            # Every wording of every place of each image's objects (a pair's swapped roles included).
            captions = list(dict.fromkeys(v for s in scenes for c in (s.caption, swap_roles(s.caption))
                                          for v in placement_variants(c)))
            # The end token's state never sees the padding after it (causal mask): pad to the longest only.
            ids = tokenizer(captions, padding="longest", return_tensors="pt").input_ids
            text = F.normalize(clip.text_projection(clip.text_model(input_ids=ids).pooler_output), dim=-1)
            pixels = to_tensor(np.stack([render(s, nano.IMAGE_SIZE) for s in scenes]))
            image = F.normalize(clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output), dim=-1)
            logits = clip.logit_scale.exp() * image @ text.T
            caption_meanings = [meaning(c) for c in captions]  # once per caption, not once per image
            positive = torch.tensor([[m == c for c in caption_meanings] for m in meanings])
            own = [captions.index(s.caption) for s in scenes]  # caption -> image, over the batch's images
            same = torch.tensor([[m == n for n in meanings] for m in meanings])
            loss = (_multi_positive_loss(logits, positive) + _multi_positive_loss(logits[:, own].T, same)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    clip.eval()
    log_row(log, {"stage": "clip-relations", "steps": step, "minutes": recipe.clip_relation_minutes,
                  **placement_scores(clip, tokenizer, recipe.seed)})
    return clip


def text_encoder_from_clip(clip: CLIPModel) -> CLIPTextModel:
    """The pipelines' text encoder: CLIP's text tower, frozen, as SD keeps it."""
    text = CLIPTextModel(clip.config.text_config)
    text.load_state_dict(clip.text_model.state_dict())
    return text.eval().requires_grad_(False)


def shipped_encoders() -> tuple[AutoencoderKL, CLIPModel]:
    """The VAE and CLIP in data/ (fp32), for a run that trains only the U-Nets."""
    vae_dir = presets.data_dir() / "nano-sd" / "vae"
    if not (vae_dir / "config.json").is_file():
        raise UserError(f"no shipped VAE in {vae_dir}: train everything with `decidiff-lab train-nano` instead")
    return AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).eval(), load_nano_clip().float().eval()


def save_clip_vision(clip: CLIPModel, folder: Path) -> None:
    """The nano CLIP minus its token table (nano-sd's text_encoder holds the same one): saves 12 MB."""
    folder.mkdir(parents=True, exist_ok=True)
    clip.config.save_pretrained(folder)
    weights = {k: v.half().contiguous() for k, v in clip.state_dict().items() if "token_embedding" not in k}
    save_file(weights, folder / "model_without_token_embedding.safetensors")


def resumed_stage(folder: Path, model_class, train):
    """A finished stage's model from `folder`, else `train()`'s, saved there: what makes train_nano resumable."""
    if (folder / "config.json").exists():
        return model_class.from_pretrained(folder).eval()
    model = train()
    model.save_pretrained(folder)
    return model
