"""Notebook 07's run: the recipe's four phases on one fresh U-Net, small enough for a notebook.

The same phase table (`recipe.PHASES`), data (`data.phase_data`) and loop (`unet.train_unet`) as
`train-nano`, with a smaller `Recipe.mini()` and three differences that make it an exercise:

* the VAE and the text encoder are the shipped, frozen nano-sd ones (DeciDiffusion kept SD's
  too): only a fresh U-Net is trained;
* no wall-clock deadline cuts a phase short, so the run is the same on every machine that
  computes the same floats;
* the U-Net is scored before the first phase and after each (`evaluation`): a denoising loss on
  a fixed validation batch and the checker on one-step denoising, plus, on request, the checker
  on generated images. One row per checkpoint, with the shipped `*_phases.csv` logs' column names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import Accelerator

from .. import nano
from ..bench import bootstrap_interval, time_interleaved
from ..loading import load_pipeline
from ..shapes import make_dataset
from .data import FrozenParts, Phase, precompute
from .evaluation import checkpoint_row, denoise_scores
from .recipe import Recipe
from .unet import build_nano_unet, objective, train_unet, weighted_loss


def frozen_parts(preset: str = "nano-sd") -> FrozenParts:
    """The shipped VAE, text encoder and tokenizer of `preset`, frozen, on the CPU."""
    pipe = load_pipeline(preset, device="cpu", dtype=torch.float32, verbose=False)
    for module in (pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    return FrozenParts(pipe.vae, pipe.text_encoder, pipe.tokenizer)


def describe_phases(phases: list[Phase], recipe: Recipe) -> list[dict]:
    """One row per phase: what it trains on, what was precomputed, and its sample budget."""
    return [{"phase": p.name, "resolution": f"{p.spec.resolution}x{p.spec.resolution}", "subset": p.spec.subset,
             "images": p.images, "distinct_captions": len(p.tensors["text_states"]) - 1,  # minus the empty caption
             "latents": "x".join(map(str, p.tensors["latents"].shape)),
             "text_states": "x".join(map(str, p.tensors["text_states"].shape)),
             "lr_schedule": p.spec.lr_schedule, "ema": p.spec.ema, "samples": samples}
            for p, samples in zip(phases, recipe.phase_samples())]


def validation_batch(recipe: Recipe, parts: FrozenParts, n: int = 96) -> dict:
    """Held-out scenes (the test split's combinations, another seed) precomputed like the training data,
    plus their captions, for the validation loss and the denoising score."""
    data = make_dataset(n, recipe.seed + 99, nano.IMAGE_SIZE, split="test")
    return {**precompute(parts, data), "captions": list(data.captions)}


@dataclass
class MiniRun:
    rows: list[dict]  # one per checkpoint: "0 untrained", then each phase
    baseline: dict  # denoise_* scores of the noisy input alone (no U-Net): the bar to clear
    train_seconds: dict  # wall time of each phase's training alone: a measurement, not part of `rows`
    unet: object = field(repr=False)
    noise_scheduler: object = field(repr=False)
    validation: dict = field(repr=False)  # the held-out batch every checkpoint was scored on
    preset: str = "nano-deci"


def run_mini(recipe: Recipe, parts: FrozenParts, phases: list[Phase], preset: str = "nano-deci",
             prompts_per_kind: int = 0, seed: int = 0, validation_images: int = 64, timestep: int = 500,
             score_each_phase: bool = True) -> MiniRun:
    """Train a fresh `preset` U-Net through `phases` on the CPU; score it before the first and after
    each (`score_each_phase=False`: after the last only, for an ablation compared by where it ends).
    `prompts_per_kind` > 0 adds the generation scores (`evaluation.checkpoint_row`)."""
    unet, noise_scheduler = build_nano_unet(preset, recipe.seed)
    validation = validation_batch(recipe, parts, validation_images)
    scored = dict(preset=preset, parts=parts, validation=validation, prompts_per_kind=prompts_per_kind, seed=seed,
                  timestep=timestep)
    baseline = denoise_scores(None, noise_scheduler, parts, validation, timestep, seed)
    first = {"phase": "0 untrained", "steps": 0, "samples": 0, "loss_first": None, "loss_last": None,
             **checkpoint_row(unet, noise_scheduler, **scored)}
    finished = iter(range(1, len(phases) + 1))

    def score(trained):  # called by train_unet after each phase
        last = next(finished) == len(phases)
        return checkpoint_row(trained, noise_scheduler, **scored) if score_each_phase or last else {}

    rows = train_unet(unet, noise_scheduler, phases, recipe, preset, score=score, accelerator=Accelerator(cpu=True))
    train_seconds, seen, kept = {}, 0, [first | {"samples_seen": 0}]
    for phase, row in zip(phases, rows):
        train_seconds[phase.name] = row.pop("train_seconds")
        row.pop("losses"), row.pop("lrs")
        seen += row["samples"]
        if score_each_phase or phase is phases[-1]:
            kept.append({**row, "phase": phase.name, "samples_seen": seen})
    return MiniRun(kept, baseline, train_seconds, unet, noise_scheduler, validation, preset)


def training_step_seconds(cases: dict, batch: int = 64, rounds: int = 5, steps: int = 1, seed: int = 0) -> dict:
    """Seconds per training sample (forward and backward at `batch`) of each case, one per round.

    `cases` maps a name to `(unet, noise_scheduler, tensors)`. The cases take turns within every
    round (`bench.time_interleaved`), so a neighbour's load or the machine's drift lands on all of
    them alike and round k of one case pairs with round k of another (`step_cost_ratio`); a
    phase's wall time in `MiniRun.train_seconds` has no such protection. The U-Nets' weights are
    left as they were (no optimiser step; gradients cleared).
    """
    def one_call(unet, noisy, t, states, target, weight):
        def call():
            was_training = unet.training
            unet.train()
            for _ in range(steps):
                weighted_loss(unet(noisy, t, states).sample, target, weight).backward()
            unet.zero_grad(set_to_none=True)
            unet.train(was_training)
        return call

    calls = {}
    for name, (unet, noise_scheduler, tensors) in cases.items():
        gen = torch.Generator().manual_seed(seed)
        idx = torch.arange(batch) % len(tensors["latents"])
        x0 = tensors["latents"][idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=gen)
        calls[name] = one_call(unet, noise_scheduler.add_noise(x0, noise, t), t,
                               tensors["text_states"][tensors["caption_ids"][idx]], *objective(noise_scheduler, x0, noise, t))
    seconds = time_interleaved(calls, repeats=rounds, warmup=1)
    return {name: [s / (steps * batch) for s in samples] for name, samples in seconds.items()}


def step_cost_ratio(seconds: dict, dear: str, cheap: str) -> tuple[float, tuple[float, float]]:
    """How many times a `dear` training sample costs a `cheap` one (`training_step_seconds`): the
    ratio of their best rounds, and a bootstrap interval over the rounds' paired ratios, for
    `bench.read_ratio` to read."""
    paired = np.asarray(seconds[dear]) / np.asarray(seconds[cheap])
    return min(seconds[dear]) / min(seconds[cheap]), bootstrap_interval(paired)
