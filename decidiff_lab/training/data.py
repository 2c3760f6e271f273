"""The recipe's data: rendered scenes, encoded once into VAE latents and CLIP text states (the
trick Deci's blog post names: precomputed latents), one set per phase."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..shapes import make_dataset
from ..vae_tools import encode
from .recipe import PHASES, PhaseSpec, Recipe


@dataclass
class FrozenParts:
    """The parts the U-Net phases do not train: VAE, text encoder and tokenizer."""

    vae: object
    text_encoder: object
    tokenizer: object


@torch.no_grad()
def encode_captions(text_encoder, tokenizer, captions: list[str]) -> torch.Tensor:
    """Per-token text states (N x 77 x D) of `captions`, padded to CLIP's 77-token window."""
    tokens = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


@torch.no_grad()
def precompute(parts: FrozenParts, data) -> dict:
    """Encode every image and every distinct caption once; the U-Net then trains on tensors."""
    latents = encode(parts.vae, data.images).cpu()  # scaled; in small batches: 2x faster on a CPU than 256 at once
    vocab = sorted(set(data.captions)) + [""]  # "" is the unconditional (dropped) caption
    index = {c: i for i, c in enumerate(vocab)}
    return {
        "latents": latents,
        "caption_ids": torch.tensor([index[c] for c in data.captions]),
        "vocab": vocab,
        "tokens": parts.tokenizer(vocab, padding="max_length", max_length=77, truncation=True,
                                  return_tensors="pt").input_ids,
        "text_states": encode_captions(parts.text_encoder, parts.tokenizer, vocab).cpu(),
        "empty_id": index[""],
    }


@dataclass
class Phase:
    spec: PhaseSpec
    images: int
    tensors: dict = field(repr=False)

    @property
    def name(self) -> str:
        return self.spec.name


def phase_dataset(recipe: Recipe, spec: PhaseSpec):
    """The scenes of one phase. Phases 1 and 2 show the same scenes, at 32 and 64 px."""
    if spec.subset == "all":
        return make_dataset(recipe.train_images, recipe.seed, spec.resolution, pair_fraction=recipe.pair_fraction)
    if spec.subset == "qualitative":
        return make_dataset(recipe.qualitative_images, recipe.seed + 1, spec.resolution, subset="qualitative",
                            pair_fraction=recipe.pair_fraction)
    return make_dataset(recipe.curated_images, recipe.seed, spec.resolution, subset="curated")


def phase_data(recipe: Recipe, parts: FrozenParts) -> list[Phase]:
    """Every phase's scenes, rendered and precomputed."""
    phases = []
    for spec in PHASES:
        data = phase_dataset(recipe, spec)
        phases.append(Phase(spec, len(data), precompute(parts, data)))
    return phases
