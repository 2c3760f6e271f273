"""`decidiff-lab train-nano`: every nano model, from rendered scenes to the pipelines in data/.

VAE -> CLIP (contrastive, then relations) -> precompute -> both U-Nets through the four phases.
Each stage and each U-Net phase leaves a checkpoint under `workdir`, beside the recipe that made
it (`recipe.json`), so a rerun resumes where it stopped and refuses checkpoints of another recipe.

One process, or many with Hugging Face Accelerate, on any device it finds (CUDA, MPS, CPU):

    accelerate launch --num_processes 8 --mixed_precision bf16 -m decidiff_lab train-nano --out build/nano

The encoder stages run on the main process (the others wait for its checkpoints); the U-Net
phases split each global batch over the processes.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import timedelta
from itertools import zip_longest
from pathlib import Path

import torch
from accelerate import Accelerator, InitProcessGroupKwargs
from diffusers import AutoencoderKL
from transformers import CLIPModel, CLIPTokenizer

from .. import nano
from ..presets import data_dir
from ..shapes import make_dataset
from .data import FrozenParts, encode_captions, phase_data
from .encoders import (resumed_stage, save_clip_vision, shipped_encoders, text_encoder_from_clip, train_clip,
                       train_clip_relations, train_vae)
from .evaluation import evaluate_pipeline, generation_scores, pipeline_for
from .logs import write_rows
from .recipe import RECIPE_FILE, Recipe, check_recipe, save_recipe
from .unet import build_nano_unet, train_unet

_logger = logging.getLogger(__name__)

SHARED = ("vae", "text_encoder", "tokenizer")


def save_pipeline(folder: Path, preset: str, unet, parts: FrozenParts) -> None:
    pipe = pipeline_for(unet, preset, parts)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)  # fp16 on disk: half the MB
    pipe.to(torch.float32)


def share_components(out_dir: Path) -> None:
    """nano-deci keeps nano-sd's VAE and text encoder, as DeciDiffusion keeps SD's: link, don't copy."""
    for name in SHARED:
        target = out_dir / "nano-deci" / name
        shutil.rmtree(target)
        target.symlink_to(Path("..") / "nano-sd" / name, target_is_directory=True)


def train_encoders(recipe: Recipe, workdir: Path, tokenizer) -> tuple[AutoencoderKL, CLIPModel]:
    """The VAE and the CLIP: trained (each stage resumable) or, with `reuse_shipped_encoders`, data/'s."""
    if recipe.reuse_shipped_encoders:
        return shipped_encoders()
    # Half pairs, whatever the U-Nets' mix, so these stages do not depend on it.
    data = make_dataset(recipe.train_images, recipe.seed, nano.IMAGE_SIZE, pair_fraction=0.5)
    log = workdir / "training_log.csv"
    held_out = make_dataset(500, recipe.seed + 2, nano.IMAGE_SIZE, split="test").images
    vae = resumed_stage(workdir / "vae", AutoencoderKL, lambda: train_vae(data.images, recipe, log, held_out))
    contrastive = resumed_stage(workdir / "clip", CLIPModel, lambda: train_clip(data, tokenizer, recipe, log))
    clip = resumed_stage(workdir / "clip-relations", CLIPModel,
                         lambda: train_clip_relations(contrastive, data, tokenizer, recipe, log))
    return vae, clip


def train_nano(out_dir: Path, workdir: Path, recipe: Recipe | None = None, only: tuple = ("nano-sd", "nano-deci"),
               accelerator: Accelerator | None = None) -> None:
    """Train every nano model into `out_dir`; resumable from the checkpoints in `workdir`."""
    recipe = recipe or Recipe()
    # The encoder stages take up to 40 minutes on the main process while the others wait.
    accelerator = accelerator or Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=3))])
    main = accelerator.is_main_process
    out_dir, workdir = Path(out_dir), Path(workdir)
    check_recipe(recipe, workdir)  # every process reads it, and gets the same verdict, before anyone writes it
    accelerator.wait_for_everyone()
    if main:
        save_recipe(recipe, workdir)
    tokenizer = CLIPTokenizer.from_pretrained(data_dir() / "clip-tokenizer")
    if main:
        vae, clip = train_encoders(recipe, workdir, tokenizer)
    accelerator.wait_for_everyone()
    if not main:
        vae, clip = train_encoders(recipe, workdir, tokenizer)  # loads what the main process saved
    parts = FrozenParts(vae.requires_grad_(False).to(accelerator.device),
                        text_encoder_from_clip(clip).to(accelerator.device), tokenizer)
    phases = phase_data(recipe, parts)

    for preset in only:
        unet, noise_scheduler = build_nano_unet(preset, recipe.seed)
        start = time.monotonic()
        joint = parts.text_encoder if recipe.joint_text_encoder and preset == only[0] else None

        def score(trained, preset=preset, start=start):
            report = evaluate_pipeline(pipeline_for(trained, preset, parts), preset, recipe.score_prompts) \
                if recipe.score_prompts else None
            _logger.info("%s phase done: %s", preset, report and
                        f"single {report['single']['accuracy']:.2f}, pair {report['pair']['accuracy']:.2f}")
            return {"minutes": round((time.monotonic() - start) / 60, 2), **(generation_scores(report) if report else {})}

        rows = train_unet(unet, noise_scheduler, phases, recipe, preset, score=score, accelerator=accelerator,
                          checkpoints=workdir, deadline=start + recipe.unet_minutes * 60, text_encoder=joint)
        if main:
            write_rows(workdir / f"{preset}_phases.csv", [{k: v for k, v in r.items() if k not in ("losses", "lrs")}
                                                          for r in rows])
            # The loss and learning rate of every step (no lr in a row that a pre-#26 checkpoint resumed).
            write_rows(workdir / f"{preset}_losses.csv", [{"phase": r["phase"], "step": i + 1, "loss": loss, "lr": lr}
                                                          for r in rows for i, (loss, lr)
                                                          in enumerate(zip_longest(r["losses"], r.get("lrs", [])))])
            save_pipeline(out_dir / preset, preset, accelerator.unwrap_model(unet), parts)
        if joint is not None:  # freeze it; the next U-Net trains on its (now fixed) states
            joint.requires_grad_(False)
            for phase in phases:
                phase.tensors["text_states"] = encode_captions(joint, tokenizer, phase.tensors["vocab"]).cpu()
    if main:
        if set(only) == {"nano-sd", "nano-deci"}:
            share_components(out_dir)
        save_clip_vision(clip, out_dir / "nano-clip")
        logs = out_dir / "nano-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for csv_file in workdir.glob("*.csv"):  # the curves notebook 07 plots, the loss per step
            shutil.copy(csv_file, logs / csv_file.name)
        shutil.copy(workdir / RECIPE_FILE, out_dir / RECIPE_FILE)  # the recipe beside what it made
    accelerator.wait_for_everyone()
