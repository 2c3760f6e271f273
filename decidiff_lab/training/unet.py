"""The U-Net phases: one loop, used by `train-nano` and by notebook 07's mini run alike.

Read top to bottom: the objective (v or epsilon target, min-SNR weight), one phase of LAMB steps
on precomputed tensors, then `train_unet`, which walks the four phases with EMA, scoring and
checkpoints. Distributed through Hugging Face Accelerate: every process draws the same global
batch from the same seeded generator and trains on its slice of it, so N processes follow the
one-process loss curve; EMA, scoring and checkpoints live on the main process.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DConditionModel
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


def make_optimizer(model, recipe: Recipe, text_encoder=None) -> Lamb:
    """LAMB over the U-Net (and the jointly trained text tower): one per run, carried across phases.

    Why one: `pytorch_optimizer`'s LAMB divides its step by Adam's first-moment bias correction, so a
    fresh one moves every weight tensor by 10x its learning rate at its first step, 5x at its second
    (notebook 07, section 5). Built anew for each phase, it hit phases 3 and 4, which have no cosine
    warm-up, with that jolt; carried over, only the run's first steps see it (phase 1's short warm-up brings it to about twice the peak rate).
    """
    params = list(model.parameters()) + (text_encoder_trainables(text_encoder) if text_encoder else [])
    return Lamb(params, lr=recipe.unet_lr, weight_decay=0.01)


def phase_lr(recipe: Recipe, lr_schedule: str, steps: int) -> Callable[[int], float]:
    """The learning rate at each step (0-based) of a phase of `steps` steps.

    Every phase warms up linearly over its first `recipe.warmup_steps(steps)` steps (a share of the
    phase, so a short phase reaches its peak too), then "cosine" decays to zero by the phase's end
    and "constant" holds `late_lr_scale` x `unet_lr`. A phase of under ten steps gets a one-step
    warm-up, which is no ramp: it starts at its peak (mild, with the carried optimiser's moments).
    """
    peak = recipe.unet_lr * (1.0 if lr_schedule == "cosine" else recipe.late_lr_scale)
    warmup = recipe.warmup_steps(steps)

    def lr(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup  # the first step already moves: no step at lr 0
        if lr_schedule == "constant":
            return peak
        progress = (step - warmup + 1) / (steps - warmup + 1)  # below 1 at the last step: it moves too
        return peak * 0.5 * (1 + math.cos(math.pi * progress))

    return lr


def train_unet_phase(model, noise_scheduler, tensors: dict, samples: int, recipe: Recipe, lr_schedule: str,
                     seed: int, accelerator: Accelerator, desc: str = "", ema: EMAModel | None = None,
                     deadline: float | None = None, text_encoder=None, optimizer=None) -> dict:
    """One phase: `samples` training samples drawn from `tensors` (precomputed latents and text).

    `model` is the U-Net as `accelerator.prepare` returned it; `optimizer`, the run's prepared
    `make_optimizer` (None: a fresh one, for a phase on its own). With `text_encoder`, the text
    states come from `tensors["tokens"]` and the encoder is fine-tuned jointly (one process only).
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    if recipe.unet_batch % world:
        raise UserError(f"unet_batch {recipe.unet_batch} does not split over {world} processes: "
                        f"pick a multiple of {world}")
    opt = optimizer or accelerator.prepare_optimizer(make_optimizer(model, recipe, text_encoder))
    params = [p for group in opt.param_groups for p in group["params"]]
    steps = max(1, samples // recipe.unet_batch)
    lr_at = phase_lr(recipe, lr_schedule, steps)
    gen = torch.Generator().manual_seed(seed)  # the same on every process: one global batch, sliced
    text = tensors["text_states"]
    device, mine = accelerator.device, slice(rank, None, world)
    losses, lrs = [], []
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
        lrs.append(lr_at(step))
        for group in opt.param_groups:  # set by hand each global step: the same on every process
            group["lr"] = lrs[-1]
        opt.step()
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
    head, tail = (max(1, min(n, len(losses) // 5)) for n in (20, 50))  # a short phase: its first and last fifth
    return {"phase": desc, "steps": step + 1, "samples": (step + 1) * recipe.unet_batch,
            "loss_first": round(float(np.mean(losses[:head])), 4), "loss_last": round(float(np.mean(losses[-tail:])), 4),
            "losses": losses, "lrs": lrs}


# ------------------------------------------------------------------ checkpoints, one folder per phase


def _save_optimizer(optimizer, folder: Path) -> None:
    """The optimiser's moments as safetensors (never pickle), its hyper-parameters as JSON."""
    state = optimizer.state_dict()
    save_file({f"{i}.{key}": torch.as_tensor(value).contiguous() for i, moments in state["state"].items()
               for key, value in moments.items()}, folder / "optimizer.safetensors")
    (folder / "optimizer.json").write_text(json.dumps(state["param_groups"]))


def _load_optimizer(optimizer, folder: Path) -> None:
    state = {}
    for name, value in load_file(folder / "optimizer.safetensors").items():
        i, key = name.split(".", 1)
        state.setdefault(int(i), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads((folder / "optimizer.json").read_text())})


def _save_phase(folder: Path, unet, ema: EMAModel | None, row: dict, optimizer) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, folder / "unet.safetensors")
    _save_optimizer(optimizer, folder)  # the next phase goes on with its moments
    if ema is not None:
        save_file({str(i): p.contiguous() for i, p in enumerate(ema.shadow_params)}, folder / "ema.safetensors")
        (folder / "ema.json").write_text(json.dumps({"optimization_step": ema.optimization_step}))
    (folder / "row.json").write_text(json.dumps(row) + "\n")  # written last: marks the phase done


def _load_phase(folder: Path, unet, ema: EMAModel | None, optimizer) -> dict:
    unet.load_state_dict(load_file(folder / "unet.safetensors"))
    if (folder / "optimizer.safetensors").is_file():  # absent from checkpoints of a loop that made one per phase
        _load_optimizer(optimizer, folder)
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
    where the EMA weights are kept (what ships). One LAMB runs through all phases (`make_optimizer`).
    With `checkpoints`, each finished phase is saved there (weights, EMA, optimizer state) and a rerun
    resumes after the last one saved.
    """
    accelerator = accelerator or Accelerator()
    if text_encoder is not None and accelerator.num_processes > 1:
        raise UserError("joint_text_encoder trains on one process: launch without --num_processes")
    model = accelerator.prepare_model(unet.to(accelerator.device))
    optimizer = accelerator.prepare_optimizer(make_optimizer(model, recipe, text_encoder))
    main = accelerator.is_main_process
    ema, rows = None, []
    for i, (phase, samples) in enumerate(zip(phases, recipe.phase_samples())):
        if phase.spec.ema and ema is None and main:
            ema = EMAModel(unet.parameters(), decay=recipe.ema_decay)
        done = checkpoints / preset / f"phase-{i + 1}" if checkpoints else None
        if done and (done / "row.json").is_file():
            row = _load_phase(done, unet, ema, optimizer)
        else:
            start = time.perf_counter()
            row = train_unet_phase(model, noise_scheduler, phase.tensors, samples, recipe, phase.spec.lr_schedule,
                                   seed=recipe.seed * 1_000 + i + 1, accelerator=accelerator,
                                   desc=f"{preset} phase {phase.name}", ema=ema, deadline=deadline,
                                   text_encoder=text_encoder, optimizer=optimizer)
            row["train_seconds"] = time.perf_counter() - start  # a measurement: callers keep it out of compared rows
            if ema is not None:
                ema.store(unet.parameters())
                ema.copy_to(unet.parameters())
            if main and score is not None:
                row.update(score(unet))
            if ema is not None:
                ema.restore(unet.parameters())
            if done and main:
                _save_phase(done, unet, ema, row, optimizer)
            accelerator.wait_for_everyone()
        rows.append(row)
    if ema is not None:
        ema.copy_to(unet.parameters())  # the EMA weights are what ships
    return rows
