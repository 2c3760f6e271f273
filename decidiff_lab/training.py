"""The nano training recipe: VAE -> CLIP (contrastive, then relations) -> precompute -> both U-Nets
through four phases.

Mirrors DeciDiffusion's recipe in miniature (FACTS.md): (1) from scratch at low resolution,
(2) at full resolution, (3) EMA on, another LR schedule, the "qualitative" subset, (4) a short
fine-tune on a small curated set; VAE latents and CLIP text states precomputed once; LAMB.
Both U-Nets see the same data and the same number of samples. Every stage writes a
checkpoint folder under `workdir`, so a rerun resumes where it stopped.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from pytorch_optimizer import Lamb
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPTokenizer

from . import nano
from .flexible_unet import FlexibleUNet2DConditionModel
from .shapes import make_dataset, to_tensor
from .vae_tools import encode


@dataclass
class Recipe:
    """Budgets and hyper-parameters; the defaults are what shipped in data/."""

    seed: int = 0
    train_images: int = 20_000
    qualitative_images: int = 4_000
    pair_fraction: float = 0.5  # share of two-object scenes in the U-Nets' data
    vae_minutes: float = 16.0
    vae_batch: int = 32
    vae_lr: float = 1e-3
    clip_minutes: float = 12.0  # measured: the CLIP only starts telling positions apart after ~5 min
    clip_batch: int = 128
    clip_lr: float = 1e-3
    # Then the relations stage: each image beside its swapped twin (measured: two-object placement
    # 37% -> 66% in 6 minutes, where the first stage had plateaued; data/README.md).
    clip_relation_minutes: float = 12.0
    clip_relation_batch: int = 64  # scenes; their twins double it
    clip_relation_lr: float = 3e-4
    unet_samples: int = 200_000  # per U-Net, split over the phases below
    unet_batch: int = 64
    unet_lr: float = 3e-3  # LAMB's trust ratio scales it per layer
    phase_fractions: tuple = (0.3, 0.5, 0.15, 0.05)
    late_lr_scale: float = 0.3  # phases 3-4: a low constant LR, a fraction of unet_lr
    caption_dropout: float = 0.1  # empty prompt, so classifier-free guidance has an unconditional
    # Option: fine-tune CLIP's text tower jointly with nano-sd's U-Net, then freeze it for nano-deci
    # (which keeps SD's text encoder, as DeciDiffusion does). The shipped models keep it frozen.
    joint_text_encoder: bool = False
    ema_decay: float = 0.999
    unet_minutes: float = 50.0  # a safety cap per U-Net, not its budget (that is unet_samples)
    # Take the shipped VAE and CLIP from data/ instead of training them: a few minutes of either
    # are too weak to learn from (measured: 19 dB, position-blind), so --quick trains U-Nets only.
    reuse_shipped_encoders: bool = False

    @classmethod
    def quick(cls) -> "Recipe":
        """A few minutes end to end, for learners and notebook 06."""
        return cls(train_images=3_000, qualitative_images=600, vae_minutes=1.5, clip_minutes=0.5,
                   unet_samples=12_000, unet_minutes=3.0, reuse_shipped_encoders=True)


def log_row(path: Path, row: dict) -> None:
    """Append `row` to a CSV; stages log different columns, so the header is their union."""
    rows = []
    if path.exists():
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    rows.append(row)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def _cosine_in_time(step: int, fraction_done: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 0 at `fraction_done` = 1. Over a time budget the LR
    reaches its floor when the deadline does, however many steps this machine manages."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, fraction_done)))


def _cosine(step: int, total: int, warmup: int = 100) -> float:
    """The same decay over a known number of steps."""
    return _cosine_in_time(step, (step - warmup) / max(1, total - warmup), warmup)


# ------------------------------------------------------------------ VAE


def train_vae(images: np.ndarray, recipe: Recipe, log: Path, held_out: np.ndarray) -> AutoencoderKL:
    torch.manual_seed(recipe.seed)
    vae = AutoencoderKL(**nano.VAE)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    rng = np.random.default_rng(recipe.seed)
    start, budget = time.monotonic(), recipe.vae_minutes * 60
    step = 0
    with tqdm(desc="VAE", unit="step") as bar:
        while (elapsed := time.monotonic() - start) < budget:
            for g in opt.param_groups:
                g["lr"] = recipe.vae_lr * max(0.02, _cosine_in_time(step, elapsed / budget))
            x = to_tensor(images[rng.integers(0, len(images), recipe.vae_batch)])
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
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
    from .shapes import parse_caption, swap_roles
    from .text_tools import placement_variants

    if parse_caption(caption)[2] and rng.random() < 0.5:
        return swap_roles(caption)
    others = placement_variants(caption)[1:]
    return others[rng.integers(len(others))]


def train_clip(data, tokenizer: CLIPTokenizer, recipe: Recipe, log: Path) -> CLIPModel:
    torch.manual_seed(recipe.seed)
    config = CLIPConfig(text_config=nano.CLIP_TEXT, vision_config=nano.CLIP_VISION,
                        projection_dim=nano.CLIP_PROJECTION_DIM)
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
    from .text_tools import placement_accuracy

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
    from .shapes import meaning, render, swap_roles, swapped_twin
    from .text_tools import placement_variants

    torch.manual_seed(recipe.seed)
    opt = torch.optim.AdamW(clip.parameters(), lr=recipe.clip_relation_lr, weight_decay=0.01)
    rng = np.random.default_rng(recipe.seed + 3)
    start, budget = time.monotonic(), recipe.clip_relation_minutes * 60
    step, losses = 0, []
    clip.train()
    with tqdm(desc="CLIP relations", unit="step") as bar:
        while (elapsed := time.monotonic() - start) < budget:
            for g in opt.param_groups:
                g["lr"] = recipe.clip_relation_lr * _cosine_in_time(step, elapsed / budget, warmup=20)
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


# ------------------------------------------------------------ precompute


@torch.no_grad()
def encode_text(text_encoder, tokenizer, captions: list[str]) -> torch.Tensor:
    tokens = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return text_encoder(tokens.input_ids)[0]


@torch.no_grad()
def precompute(vae, text_encoder, tokenizer, data) -> dict:
    """The seed's trick: encode every image and every distinct caption once, train on tensors."""
    latents = encode(vae, data.images)  # scaled; in small batches: 2x faster on a CPU than 256 at once
    vocab = sorted(set(data.captions)) + [""]  # "" is the unconditional (dropped) caption
    index = {c: i for i, c in enumerate(vocab)}
    return {
        "latents": latents,
        "caption_ids": torch.tensor([index[c] for c in data.captions]),
        "vocab": vocab,
        "tokens": tokenizer(vocab, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids,
        "text_states": encode_text(text_encoder, tokenizer, vocab),
        "empty_id": index[""],
    }


# ----------------------------------------------------------------- U-Net


def build_nano_unet(kind: str):
    torch.manual_seed(0)
    if kind == "nano-sd":
        return UNet2DConditionModel(**nano.UNET_SD), DDPMScheduler(**nano.SD_SCHEDULE)
    return FlexibleUNet2DConditionModel(nano.UNET_DECI), DDPMScheduler(**nano.DECI_SCHEDULE)


def _target_and_weight(scheduler, latents, noise, t):
    """Objective per schedule, with min-SNR-5 weighting (stable training at tiny batch)."""
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac)
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, t), snr.clamp(max=5) / (snr + 1)
    return noise, snr.clamp(max=5) / snr


def text_encoder_trainables(text_encoder) -> list[torch.nn.Parameter]:
    """Everything but the 49,408-row token table: it stays shared with the nano CLIP (and small on disk)."""
    params = [p for name, p in text_encoder.named_parameters() if "token_embedding" not in name]
    for p in params:
        p.requires_grad_(True)
    return params


def train_unet_phase(unet, noise_scheduler, tensors: dict, samples: int, recipe: Recipe, lr_schedule: str,
                     desc: str, ema=None, deadline: float | None = None, text_encoder=None) -> dict:
    """One phase: `samples` training samples drawn from `tensors` (precomputed latents + text).

    With `text_encoder`, the text states are computed from `tensors["tokens"]` and the encoder
    is fine-tuned jointly (its token table excepted); otherwise the precomputed states are used.
    """
    params = list(unet.parameters()) + (text_encoder_trainables(text_encoder) if text_encoder else [])
    opt = Lamb(params, lr=recipe.unet_lr, weight_decay=0.01)
    steps = max(1, samples // recipe.unet_batch)
    gen = torch.Generator().manual_seed(recipe.seed + len(desc))
    latents, caption_ids, text = tensors["latents"], tensors["caption_ids"], tensors["text_states"]
    losses = []
    unet.train()
    for step in tqdm(range(steps), desc=desc, unit="step"):
        scale = _cosine(step, steps) if lr_schedule == "cosine" else recipe.late_lr_scale
        for g in opt.param_groups:
            g["lr"] = recipe.unet_lr * scale
        idx = torch.randint(0, len(latents), (recipe.unet_batch,), generator=gen)
        ids = caption_ids[idx].clone()
        ids[torch.rand(len(ids), generator=gen) < recipe.caption_dropout] = tensors["empty_id"]
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        target, weight = _target_and_weight(noise_scheduler, x0, noise, t)
        states = text_encoder(tensors["tokens"][ids])[0] if text_encoder is not None else text[ids]
        pred = unet(noise_scheduler.add_noise(x0, noise, t), t, states).sample
        loss = (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if ema is not None:
            ema.step(unet.parameters())
        losses.append(loss.item())
        if deadline and time.monotonic() > deadline:
            break
    unet.eval()
    if text_encoder is not None:
        text_encoder.eval()
    return {"phase": desc, "steps": step + 1, "samples": (step + 1) * recipe.unet_batch,
            "loss_first": round(float(np.mean(losses[:20])), 4), "loss_last": round(float(np.mean(losses[-50:])), 4)}




# ------------------------------------------------------------ the recipe


def nano_scheduler(kind: str):
    """nano-sd: DPM-Solver++ on SD 1.5's schedule; nano-deci: Deci 2.0's squeezed DPM-Solver++."""
    from .schedulers import make_scheduler

    return make_scheduler("dpm++" if kind == "nano-sd" else "squeezed-dpm++")


def save_pipeline(folder: Path, kind: str, unet, vae, text_encoder, tokenizer) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=nano_scheduler(kind), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)  # fp16 on disk: half the MB
    pipe.to(torch.float32)


SHARED = ("vae", "text_encoder", "tokenizer")


def share_components(out_dir: Path) -> None:
    """nano-deci keeps nano-sd's VAE and text encoder, as DeciDiffusion keeps SD's: link, don't copy."""
    import shutil

    for name in SHARED:
        target = out_dir / "nano-deci" / name
        shutil.rmtree(target)
        target.symlink_to(Path("..") / "nano-sd" / name, target_is_directory=True)


def save_clip_vision(clip: CLIPModel, folder: Path) -> None:
    """The nano CLIP minus its token table (nano-sd's text_encoder holds the same one): saves 12 MB."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    clip.config.save_pretrained(folder)
    weights = {k: v.half().contiguous() for k, v in clip.state_dict().items() if "token_embedding" not in k}
    save_file(weights, folder / "model_without_token_embedding.safetensors")


def evaluate_pipeline(pipe, kind: str, prompts_per_kind: int = 24, seed: int = 0, steps: int | None = None,
                      guidance_scale: float = nano.GUIDANCE, guidance_rescale: float = 0.0, split: str = "test") -> dict:
    """The checker's report on `prompts_per_kind` single-object and two-object captions of `split`
    (`quality.checker_report`). Steps default to the kind's: nano-deci 10, others 16."""
    from .quality import checker_report
    from .shapes import prompt_set

    steps = nano.DEFAULT_STEPS.get(kind, 16) if steps is None else steps
    pipe.set_progress_bar_config(disable=True)
    prompts = prompt_set("mixed", split, 2 * prompts_per_kind, seed)  # half single, half pairs
    return checker_report(pipe, prompts, steps, guidance_scale, guidance_rescale, seed)


def shipped_encoders() -> tuple[AutoencoderKL, CLIPModel]:
    """The VAE and CLIP in data/ (fp32), for a run that trains only the U-Nets."""
    from .errors import UserError
    from .loading import load_nano_clip
    from .presets import data_dir

    vae_dir = data_dir() / "nano-sd" / "vae"
    if not (vae_dir / "config.json").is_file():
        raise UserError(f"no shipped VAE in {vae_dir}: train everything with `decidiff-lab train-nano` instead")
    return AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).eval(), load_nano_clip().float().eval()


def _resumed(folder: Path, model_class, train):
    """A finished stage's model from `folder`, else `train()`'s, saved there: what makes train_nano resumable."""
    if (folder / "config.json").exists():
        return model_class.from_pretrained(folder).eval()
    model = train()
    model.save_pretrained(folder)
    return model


def train_nano(out_dir: Path, workdir: Path, recipe: Recipe | None = None, only: tuple = ("nano-sd", "nano-deci")):
    """Train every nano model; resumable (each finished stage is a folder under `workdir`)."""
    from diffusers import StableDiffusionPipeline

    from .presets import data_dir

    recipe = recipe or Recipe()
    out_dir, workdir = Path(out_dir), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "training_log.csv"
    torch.manual_seed(recipe.seed)
    tokenizer = CLIPTokenizer.from_pretrained(data_dir() / "clip-tokenizer")
    # The U-Nets' data: pair scenes as frequent as the recipe says.
    data = make_dataset(recipe.train_images, recipe.seed, nano.IMAGE_SIZE, pair_fraction=recipe.pair_fraction)
    low = make_dataset(recipe.train_images, recipe.seed, nano.LOW_RES, pair_fraction=recipe.pair_fraction)

    if recipe.reuse_shipped_encoders:
        vae, clip = shipped_encoders()
    else:
        # The VAE and CLIP always see half pairs, so their stages do not depend on the U-Nets' mix.
        encoder_data = data if recipe.pair_fraction == 0.5 else make_dataset(recipe.train_images, recipe.seed,
                                                                             nano.IMAGE_SIZE, pair_fraction=0.5)
        vae = _resumed(workdir / "vae", AutoencoderKL, lambda: train_vae(
            encoder_data.images, recipe, log, make_dataset(500, recipe.seed + 2, nano.IMAGE_SIZE, split="test").images))
        contrastive = _resumed(workdir / "clip", CLIPModel, lambda: train_clip(encoder_data, tokenizer, recipe, log))
        clip = _resumed(workdir / "clip-relations", CLIPModel,
                        lambda: train_clip_relations(contrastive, encoder_data, tokenizer, recipe, log))
    text_encoder = text_encoder_from_clip(clip)
    vae.requires_grad_(False)

    phases = [
        ("1 low-res from scratch", precompute(vae, text_encoder, tokenizer, low), "cosine"),
        ("2 full-res", precompute(vae, text_encoder, tokenizer, data), "cosine"),
        ("3 EMA + qualitative", precompute(vae, text_encoder, tokenizer, make_dataset(
            recipe.qualitative_images, recipe.seed + 1, nano.IMAGE_SIZE, subset="qualitative",
            pair_fraction=recipe.pair_fraction)), "constant"),
        ("4 curated fine-tune", precompute(vae, text_encoder, tokenizer, make_dataset(
            240, recipe.seed, nano.IMAGE_SIZE, subset="curated")), "constant"),
    ]
    for kind in only:
        from diffusers.training_utils import EMAModel

        unet, noise_scheduler = build_nano_unet(kind)
        deadline = time.monotonic() + recipe.unet_minutes * 60
        start, ema = time.monotonic(), None
        joint = text_encoder if recipe.joint_text_encoder and kind == only[0] else None
        for (name, tensors, schedule), fraction in zip(phases, recipe.phase_fractions):
            if name.startswith("3"):
                ema = EMAModel(unet.parameters(), decay=recipe.ema_decay)  # EMA only in the last phases
            row = train_unet_phase(unet, noise_scheduler, tensors, int(recipe.unet_samples * fraction), recipe,
                                   schedule, f"{kind} phase {name}", ema=ema, deadline=deadline,
                                   text_encoder=joint)
            if ema is not None:
                ema.store(unet.parameters())
                ema.copy_to(unet.parameters())
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                           scheduler=nano_scheduler(kind), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
            scores = evaluate_pipeline(pipe, kind)
            log_row(workdir / f"{kind}_phases.csv", {
                **row, "minutes": round((time.monotonic() - start) / 60, 2),
                "single_acc": scores["single"]["accuracy"], "single_color": scores["single"]["color"],
                "single_shape": scores["single"]["shape"], "single_position": scores["single"]["position"],
                "pair_acc": scores["pair"]["accuracy"], "pair_relation": scores["pair"]["relation"]})
            print(f"{kind} phase {name}: loss {row['loss_last']}, single {scores['single']['accuracy']:.2f}, "
                  f"pair {scores['pair']['accuracy']:.2f}", flush=True)
            if ema is not None and not name.startswith("4"):
                ema.restore(unet.parameters())  # keep training the raw weights; EMA is what ships
        save_pipeline(out_dir / kind, kind, unet, vae, text_encoder, tokenizer)
        if joint is not None:  # freeze it; the next U-Net trains on its (now fixed) states
            text_encoder.requires_grad_(False)
            for _, tensors, _ in phases:
                tensors["text_states"] = encode_text(text_encoder, tokenizer, tensors["vocab"])
    if set(only) == {"nano-sd", "nano-deci"}:
        share_components(out_dir)
    save_clip_vision(clip, out_dir / "nano-clip")
    logs = out_dir / "nano-logs"
    logs.mkdir(exist_ok=True)
    for csv_file in workdir.glob("*.csv"):  # the curves notebook 06 plots
        (logs / csv_file.name).write_text(csv_file.read_text())
