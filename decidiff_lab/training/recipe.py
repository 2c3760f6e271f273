"""The recipe: every budget and hyper-parameter (`Recipe`), the four phases (`PHASES`), and the
recipe file written beside a run's outputs, so a resumed run notices a changed recipe."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

from .. import nano
from ..errors import UserError


@dataclass
class Recipe:
    """Budgets and hyper-parameters; the defaults are what shipped in data/."""

    seed: int = 0
    train_images: int = 20_000
    qualitative_images: int = 4_000
    curated_images: int = 240  # phase 4: the curated scenes (240 exist; more repeats them)
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
    unet_batch: int = 64  # the global batch: split evenly over the processes of a distributed run
    unet_lr: float = 3e-3  # LAMB's trust ratio scales it per layer
    # Each phase warms its LR up over this share of its steps, at most lr_warmup_steps (`warmup_steps`).
    lr_warmup_steps: int = 100
    lr_warmup_fraction: float = 0.1
    phase_fractions: tuple = (0.3, 0.5, 0.15, 0.05)
    late_lr_scale: float = 0.3  # phases 3-4: a low constant LR, a fraction of unet_lr
    caption_dropout: float = 0.1  # empty prompt, so classifier-free guidance has an unconditional
    # Option: fine-tune CLIP's text tower jointly with nano-sd's U-Net, then freeze it for nano-deci
    # (which keeps SD's text encoder, as DeciDiffusion does). The shipped models keep it frozen.
    joint_text_encoder: bool = False
    ema_decay: float = 0.999
    unet_minutes: float = 50.0  # a safety cap per U-Net, not its budget (that is unet_samples)
    score_prompts: int = 24  # checker prompts per caption kind after each phase (0: no scoring)
    # Take the shipped VAE and CLIP from data/ instead of training them: a few minutes of either
    # are too weak to learn from (measured: 19 dB, position-blind), so --quick trains U-Nets only.
    reuse_shipped_encoders: bool = False

    @classmethod
    def quick(cls, **overrides) -> "Recipe":
        """A few minutes end to end: both U-Nets on the shipped VAE and CLIP (`train-nano --quick`)."""
        return replace(cls(train_images=3_000, qualitative_images=600, vae_minutes=1.5, clip_minutes=0.5,
                           unet_samples=12_000, unet_minutes=3.0, reuse_shipped_encoders=True), **overrides)

    @classmethod
    def mini(cls, **overrides) -> "Recipe":
        """Notebook 07's run: one U-Net, well under a minute of training on one CPU thread.

        Sized by what a notebook test can afford (the whole notebook in about a minute on one
        thread), not by what the U-Net needs: 2,400 samples, 70% of them in the cheap 32x32 phase,
        where the validation loss falls fastest; batches of 32, so that is still ~75 LAMB steps; and
        a few hundred images, since encoding them is the run's second largest cost. The learning rate
        is 5x the shipped recipe's (measured at 2,400-4,000 samples: 1e-2 to 1.5e-2 lift the one-step
        denoising score of single objects clear of its no-U-Net bar; at 2e-2 the loss falls further,
        but that score stays at the bar).
        """
        return replace(cls(train_images=200, qualitative_images=100, curated_images=100, unet_samples=2_400,
                           unet_batch=32, unet_lr=1.5e-2, phase_fractions=(0.7, 0.2, 0.07, 0.03), ema_decay=0.99,
                           reuse_shipped_encoders=True), **overrides)

    def warmup_steps(self, steps: int) -> int:
        """Warm-up steps of a phase of `steps` steps: `lr_warmup_fraction` of it, capped at
        `lr_warmup_steps`, at least one. A share, not a count: a phase shorter than the count
        would otherwise end inside its warm-up, never at its peak LR nor decayed (issue #26)."""
        return max(1, min(self.lr_warmup_steps, round(self.lr_warmup_fraction * steps)))

    def phase_samples(self) -> list[int]:
        """Samples each phase trains on: its fraction of `unet_samples`, in whole global batches (at least one)."""
        return [max(1, int(self.unet_samples * f) // self.unet_batch) * self.unet_batch for f in self.phase_fractions]


class PhaseSpec(NamedTuple):
    name: str
    resolution: int  # image side; the latents are 8x smaller
    subset: str  # make_dataset's subset: "all", "qualitative" or "curated"
    lr_schedule: str  # "cosine" (with warm-up) or "constant" (late_lr_scale x unet_lr)
    ema: bool  # EMA from this phase on: DeciDiffusion keeps it for the last phases only


# DeciDiffusion's four phases, in miniature (FACTS.md): the one table train-nano and notebook 07 share.
PHASES = (
    PhaseSpec("1 low-res from scratch", nano.LOW_RES, "all", "cosine", False),
    PhaseSpec("2 full-res", nano.IMAGE_SIZE, "all", "cosine", False),
    PhaseSpec("3 EMA + qualitative", nano.IMAGE_SIZE, "qualitative", "constant", True),
    PhaseSpec("4 curated fine-tune", nano.IMAGE_SIZE, "curated", "constant", True),
)

RECIPE_FILE = "recipe.json"


def save_recipe(recipe: Recipe, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / (RECIPE_FILE + ".partial")  # then renamed: a reader never sees half a file
    partial.write_text(json.dumps(asdict(recipe), indent=1) + "\n")
    os.replace(partial, folder / RECIPE_FILE)


def check_recipe(recipe: Recipe, folder: Path) -> None:
    """Resume only what this recipe trained: a `recipe.json` in `folder` that differs is a one-line error.

    The time caps (`*_minutes`) may change between runs: they stop a stage, they do not define it.
    """
    path = Path(folder) / RECIPE_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    current = json.loads(json.dumps(asdict(recipe)))  # tuples -> lists, as the file holds them
    differ = [f.name for f in fields(Recipe) if not f.name.endswith("_minutes")
              and saved.get(f.name, current[f.name]) != current[f.name]]
    if differ:
        raise UserError(f"{folder} holds checkpoints of another recipe ({', '.join(differ)} differ): "
                        f"pass a new --workdir, or delete {folder} to start over")


# DeciDiffusion's own recipe, from the blog post and the 2.0 model card: quoted, not run here.
QUOTED_RECIPE = [
    {"phase": "1", "what": "from scratch at 256x256, a 320 M-sample LAION-v2 subset", "steps": 1_280_000, "batch": 18_432, "hardware": "6x8 H100"},
    {"phase": "2", "what": "at 512x512, same dataset", "steps": 870_000, "batch": 7_168, "hardware": "8x8 H100"},
    {"phase": "3", "what": "EMA, another LR schedule, more 'qualitative' data", "steps": 65_000, "batch": 7_168,
     "hardware": "8x8 H100"},
    {"phase": "4", "what": "fine-tune on a 2 M-sample subset (LAION-ART for v1)", "steps": None, "batch": 7_168,
     "hardware": "8x8 H100"},
]
for _row in QUOTED_RECIPE:
    _row.update(samples=_row["steps"] * _row["batch"] if _row["steps"] else None, quoted=True)
QUOTED_TRICKS = "precomputed VAE and CLIP latents; EMA only in the last phase of training; LAMB, lr 5e-3 in every phase"


def quoted_recipe_markdown() -> str:
    """The real recipe as a markdown table, labelled quoted; samples = steps x batch (derived)."""
    lines = ["**Quoted** (DeciDiffusion blog post and 2.0 model card; not run here). Samples = steps x batch, "
             "derived from the quoted figures.", "",
             "| phase | what | steps | batch | samples | hardware |", "|---|---|---|---|---|---|"]
    for r in QUOTED_RECIPE:
        steps = f"{r['steps']:,}" if r["steps"] else "not stated"
        samples = f"{r['samples'] / 1e9:.2f} B" if r["samples"] else "not stated"
        lines.append(f"| {r['phase']} | {r['what']} | {steps} | {r['batch']:,} | {samples} | {r['hardware']} |")
    lines += ["", f"Tricks (quoted): {QUOTED_TRICKS}."]
    return "\n".join(lines)
