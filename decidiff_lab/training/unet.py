"""The U-Net phases: one loop, used by `train-nano` and by notebook 07's mini run alike.

Read top to bottom: the objective (v or epsilon target, min-SNR weight), one phase of LAMB steps
on precomputed tensors, then `train_unet`, which walks the four phases with EMA, scoring and
checkpoints. Distributed through Hugging Face Accelerate: every process draws the same global
batch from the same seeded generator and trains on its slice of it, so N processes follow the
one-process loss curve; EMA, scoring and checkpoints live on the main process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_constant_schedule, get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel, compute_snr
from pytorch_optimizer import Lamb
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import nano
from ..errors import UserError
from ..flexible_unet import FlexibleUNet2DConditionModel
from .data import Phase
from .recipe import Recipe

MIN_SNR_GAMMA = 5.0  # min-SNR weighting (Hang et al. 2023): stable training at a tiny batch


def build_nano_unet(preset: str, seed: int = 0):
    """A freshly initialised nano U-Net and its training noise schedule; the global seed is left alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if preset == "nano-sd":
            return UNet2DConditionModel(**nano.UNET_SD), DDPMScheduler(**nano.SD_SCHEDULE)
        return FlexibleUNet2DConditionModel(nano.UNET_DECI), DDPMScheduler(**nano.DECI_SCHEDULE)


def objective(noise_scheduler, latents, noise, t):
    """(target, per-sample weight): v or epsilon, as the schedule predicts, with min-SNR-5 weights."""
    snr = compute_snr(noise_scheduler, t)
    clipped = snr.clamp(max=MIN_SNR_GAMMA)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, t), clipped / (snr + 1)
    return noise, clipped / snr


def weighted_loss(pred, target, weight):
    return (weight * ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))).mean()


def draw_batch(tensors: dict, batch: int, caption_dropout: float, num_train_timesteps: int, gen: torch.Generator):
    """One training batch from precomputed tensors: (latents, caption ids, noise, timesteps).

    A `caption_dropout` share of captions becomes the empty prompt, so the U-Net also learns the
    unconditional prediction classifier-free guidance needs."""
    idx = torch.randint(0, len(tensors["latents"]), (batch,), generator=gen)
    ids = tensors["caption_ids"][idx].clone()
    ids[torch.rand(len(ids), generator=gen) < caption_dropout] = tensors["empty_id"]
    noise = torch.randn(tensors["latents"][idx].shape, generator=gen)
    t = torch.randint(0, num_train_timesteps, (batch,), generator=gen)
    return tensors["latents"][idx], ids, noise, t


def diffusion_loss(model, noise_scheduler, x0, noise, t, text_states):
    """The training loss of one batch: noise x0 to x_t, predict, min-SNR-weighted MSE to the target."""
    target, weight = objective(noise_scheduler, x0, noise, t)
    pred = model(noise_scheduler.add_noise(x0, noise, t), t, text_states).sample
    return weighted_loss(pred, target, weight)


def text_encoder_trainables(text_encoder) -> list[torch.nn.Parameter]:
    """Everything but the 49,408-row token table: it stays shared with the nano CLIP (and small on disk)."""
    params = [p for name, p in text_encoder.named_parameters() if "token_embedding" not in name]
    for p in params:
        p.requires_grad_(True)
    return params


def train_unet_phase(model, noise_scheduler, tensors: dict, samples: int, recipe: Recipe, lr_schedule: str,
                     seed: int, accelerator: Accelerator, desc: str = "", ema: EMAModel | None = None,
                     deadline: float | None = None, text_encoder=None) -> dict:
    """One phase: `samples` training samples drawn from `tensors` (precomputed latents and text).

    `model` is the U-Net as `accelerator.prepare` returned it. With `text_encoder`, the text
    states come from `tensors["tokens"]` and the encoder is fine-tuned jointly (one process only).
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    if recipe.unet_batch % world:
        raise UserError(f"unet_batch {recipe.unet_batch} does not split over {world} processes: "
                        f"pick a multiple of {world}")
    params = list(model.parameters()) + (text_encoder_trainables(text_encoder) if text_encoder else [])
    cosine = lr_schedule == "cosine"
    base = Lamb(params, lr=recipe.unet_lr * (1.0 if cosine else recipe.late_lr_scale), weight_decay=0.01)
    steps = max(1, samples // recipe.unet_batch)
    # Stepped once per global step, on the optimiser itself (Accelerate's wrapper would step it per process).
    schedule = get_cosine_schedule_with_warmup(base, recipe.lr_warmup_steps, steps) if cosine else get_constant_schedule(base)
    opt = accelerator.prepare_optimizer(base)
    gen = torch.Generator().manual_seed(seed)  # the same on every process: one global batch, sliced
    text = tensors["text_states"]
    device, mine = accelerator.device, slice(rank, None, world)
    losses = []
    model.train()
    for step in tqdm(range(steps), desc=desc, unit="step", disable=not accelerator.is_local_main_process):
        x0, ids, noise, t = draw_batch(tensors, recipe.unet_batch, recipe.caption_dropout,
                                       noise_scheduler.config.num_train_timesteps, gen)
        x0, noise, t, ids = (v[mine].to(device) for v in (x0, noise, t, ids))
        states = text_encoder(tensors["tokens"].to(device)[ids])[0] if text_encoder is not None else text.to(device)[ids]
        with accelerator.autocast():
            loss = diffusion_loss(model, noise_scheduler, x0, noise, t, states)  # the mean over this slice
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).parameters())
        losses.append(accelerator.gather(loss.detach()[None]).mean().item())  # the global batch's loss
        if deadline and time.monotonic() > deadline:
            accelerator.set_trigger()
        if deadline and accelerator.check_trigger():  # all processes stop at the same step, or DDP would hang
            break
    model.eval()
    if text_encoder is not None:
        text_encoder.eval()
    return {"phase": desc, "steps": step + 1, "samples": (step + 1) * recipe.unet_batch,
            "loss_first": round(float(np.mean(losses[:20])), 4), "loss_last": round(float(np.mean(losses[-50:])), 4),
            "losses": losses}


# ------------------------------------------------------------------ checkpoints, one folder per phase


def _save_phase(folder: Path, unet, ema: EMAModel | None, row: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, folder / "unet.safetensors")
    if ema is not None:
        save_file({str(i): p.contiguous() for i, p in enumerate(ema.shadow_params)}, folder / "ema.safetensors")
        (folder / "ema.json").write_text(json.dumps({"optimization_step": ema.optimization_step}))
    (folder / "row.json").write_text(json.dumps(row) + "\n")  # written last: marks the phase done


def _load_phase(folder: Path, unet, ema: EMAModel | None) -> dict:
    unet.load_state_dict(load_file(folder / "unet.safetensors"))
    if ema is not None:
        shadow = load_file(folder / "ema.safetensors")
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(shadow[str(i)])
        ema.optimization_step = json.loads((folder / "ema.json").read_text())["optimization_step"]
    return json.loads((folder / "row.json").read_text())


# ------------------------------------------------------------------ the phases


def train_unet(unet, noise_scheduler, phases: list[Phase], recipe: Recipe, preset: str,
               score: Callable[[object], dict] | None = None, accelerator: Accelerator | None = None,
               checkpoints: Path | None = None, deadline: float | None = None, text_encoder=None) -> list[dict]:
    """Train `unet` through `phases` (EMA from the first phase that asks for it); one row per phase.

    After each phase the main process calls `score(unet)` on the EMA weights where EMA is on, adds
    its dict to the row, and training goes on from the raw weights, except after the last phase,
    where the EMA weights are kept (what ships). With `checkpoints`, each finished phase is saved
    there (safetensors) and a rerun resumes after the last one saved.
    """
    accelerator = accelerator or Accelerator()
    if text_encoder is not None and accelerator.num_processes > 1:
        raise UserError("joint_text_encoder trains on one process: launch without --num_processes")
    model = accelerator.prepare_model(unet.to(accelerator.device))
    main = accelerator.is_main_process
    ema, rows = None, []
    for i, (phase, samples) in enumerate(zip(phases, recipe.phase_samples())):
        if phase.spec.ema and ema is None and main:
            ema = EMAModel(unet.parameters(), decay=recipe.ema_decay)
        done = checkpoints / preset / f"phase-{i + 1}" if checkpoints else None
        if done and (done / "row.json").is_file():
            row = _load_phase(done, unet, ema)
        else:
            start = time.perf_counter()
            row = train_unet_phase(model, noise_scheduler, phase.tensors, samples, recipe, phase.spec.lr_schedule,
                                   seed=recipe.seed * 1_000 + i + 1, accelerator=accelerator,
                                   desc=f"{preset} phase {phase.name}", ema=ema, deadline=deadline,
                                   text_encoder=text_encoder)
            row["train_seconds"] = time.perf_counter() - start  # a measurement: callers keep it out of compared rows
            if ema is not None:
                ema.store(unet.parameters())
                ema.copy_to(unet.parameters())
            if main and score is not None:
                row.update(score(unet))
            if ema is not None:
                ema.restore(unet.parameters())
            if done and main:
                _save_phase(done, unet, ema, row)
            accelerator.wait_for_everyone()
        rows.append(row)
    if ema is not None:
        ema.copy_to(unet.parameters())  # the EMA weights are what ships
    return rows
