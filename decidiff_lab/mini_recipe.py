"""DeciDiffusion's four-phase training recipe in miniature: a run that fits in a notebook.

Built from `decidiff_lab.training`'s own pieces (`Recipe`, `precompute`, `build_nano_unet`,
`train_unet_phase`, `evaluate_pipeline`) and diffusers' `EMAModel`, exactly as `train_nano`
strings them together, with three differences that make it a notebook exercise:

* the VAE and the text encoder are the shipped, frozen nano-sd ones (DeciDiffusion kept SD's
  too): only a fresh U-Net is trained;
* budgets are tiny (a few thousand samples), and no wall-clock deadline cuts a phase short, so
  the run is the same on every machine that computes the same floats;
* after every phase (and before the first) the U-Net is scored twice: a denoising loss on a
  fixed validation batch and the caption checker on generated images. One row per checkpoint,
  with the same column names as the shipped models' `*_phases.csv` logs, so one plot shows both.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import nano
from .checker import evaluate
from .shapes import make_dataset
from .training import Recipe, _target_and_weight, build_nano_unet, evaluate_pipeline, nano_scheduler, precompute
from .vae_tools import decode

# (name, image side, data subset, LR schedule, EMA on): the recipe's four phases, as in train_nano.
PHASES = (
    ("1 low-res from scratch", nano.LOW_RES, "all", "cosine", False),
    ("2 full-res", nano.IMAGE_SIZE, "all", "cosine", False),
    ("3 EMA + qualitative", nano.IMAGE_SIZE, "qualitative", "constant", True),
    ("4 curated fine-tune", nano.IMAGE_SIZE, "curated", "constant", True),
)

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


# The checker's scores per checkpoint: images generated from pure noise for held-out captions (the
# shipped logs' columns) and one-step reconstructions of held-out images noised half-way ("denoise").
GENERATION_KEYS = ("single_color", "single_shape", "single_position", "single_acc", "pair_relation", "pair_acc")
DENOISE_KEYS = ("denoise_single", "denoise_pair", "denoise_overall")
SCORE_KEYS = GENERATION_KEYS + DENOISE_KEYS


def mini_recipe(**overrides) -> Recipe:
    """A `Recipe` sized for a notebook: about a minute of U-Net training on one CPU thread.

    Half the samples go to the cheap 32x32 phase; the learning rate is higher than the shipped
    recipe's, because each short phase spends most of its steps in the 100-step warm-up. The size
    is set by the notebook tests: the run must also fit when a CPU without AVX2 runs it 2-3x slower.
    """
    settings = dict(train_images=1_000, qualitative_images=250, unet_samples=12_000, unet_batch=64, unet_lr=1e-2,
                    phase_fractions=(0.5, 0.35, 0.1, 0.05), ema_decay=0.99)
    settings.update(overrides)
    return Recipe(**settings)


@dataclass
class FrozenParts:
    """The parts the recipe does not train: VAE, text encoder and tokenizer (from a shipped pipeline)."""

    vae: object
    text_encoder: object
    tokenizer: object


def frozen_parts(preset: str = "nano-sd") -> FrozenParts:
    """The shipped VAE, text encoder and tokenizer of `preset`, frozen, on the CPU."""
    from .loading import load_pipeline

    pipe = load_pipeline(preset, device="cpu", dtype=torch.float32, verbose=False)
    for module in (pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    return FrozenParts(pipe.vae, pipe.text_encoder, pipe.tokenizer)


@dataclass
class Phase:
    name: str
    resolution: int
    subset: str
    lr_schedule: str
    ema: bool
    images: int
    tensors: dict = field(repr=False)


def phase_data(recipe: Recipe, parts: FrozenParts, curated_images: int = 240) -> list[Phase]:
    """Render each phase's images and precompute their latents and text states once (the seed's trick).

    Phase 4 takes the first `curated_images` of the 240 curated scenes (all of them, as train_nano does).
    """
    phases = []
    for name, side, subset, schedule, ema in PHASES:
        if subset == "all":
            data = make_dataset(recipe.train_images, recipe.seed, side)  # same scenes at 32 and 64 px
        elif subset == "qualitative":
            data = make_dataset(recipe.qualitative_images, recipe.seed + 1, side, subset="qualitative")
        else:
            data = make_dataset(curated_images, recipe.seed, side, subset="curated")
        tensors = precompute(parts.vae, parts.text_encoder, parts.tokenizer, data)
        phases.append(Phase(name, side, subset, schedule, ema, len(data), tensors))
    return phases


def describe_phases(phases: list[Phase], recipe: Recipe) -> list[dict]:
    """One row per phase: what it trains on, what was precomputed, and its sample budget."""
    return [{"phase": p.name, "resolution": f"{p.resolution}x{p.resolution}", "subset": p.subset, "images": p.images,
             "distinct_captions": len(p.tensors["text_states"]) - 1,  # minus the empty (dropped) caption
             "latents": "x".join(map(str, p.tensors["latents"].shape)),
             "text_states": "x".join(map(str, p.tensors["text_states"].shape)),
             "lr_schedule": p.lr_schedule, "ema": p.ema, "samples": int(recipe.unet_samples * fraction)}
            for p, fraction in zip(phases, recipe.phase_fractions)]


def validation_batch(recipe: Recipe, parts: FrozenParts, n: int = 96) -> dict:
    """Held-out scenes (the test split's combinations, another seed) precomputed like the training data,
    plus their captions, for the validation loss and the denoising score."""
    data = make_dataset(n, recipe.seed + 99, nano.IMAGE_SIZE, split="test")
    return {**precompute(parts.vae, parts.text_encoder, parts.tokenizer, data), "captions": list(data.captions)}


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
    target, weight = _target_and_weight(noise_scheduler, x0, noise, t)
    was_training = unet.training
    unet.eval()
    pred = unet(noise_scheduler.add_noise(x0, noise, t), t, tensors["text_states"][tensors["caption_ids"]]).sample
    unet.train(was_training)
    return float((weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean())


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


def pipeline_for(unet, kind: str, parts: FrozenParts):
    """A `StableDiffusionPipeline` around a U-Net in training, with the shipped frozen parts."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=unet, scheduler=nano_scheduler(kind), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def checkpoint_row(unet, noise_scheduler, kind: str, parts: FrozenParts, validation: dict,
                   prompts_per_kind: int, seed: int, timestep: int = 500) -> dict:
    """The U-Net as it is now, scored three ways on held-out data: validation loss; the checker on
    one-step denoising from `timestep` ("denoise_*"); the checker on images generated from pure noise
    for held-out captions (the shipped logs' columns: "single_*", "pair_*")."""
    scores = evaluate_pipeline(pipeline_for(unet, kind, parts), kind, prompts_per_kind, seed)
    return {"val_loss": round(denoising_loss(unet, noise_scheduler, validation, seed), 4),
            **denoise_scores(unet, noise_scheduler, parts, validation, timestep, seed),
            "single_acc": scores["single"]["accuracy"], "single_color": scores["single"]["color"],
            "single_shape": scores["single"]["shape"], "single_position": scores["single"]["position"],
            "pair_acc": scores["pair"]["accuracy"], "pair_relation": scores["pair"]["relation"]}


@dataclass
class MiniRun:
    rows: list[dict]  # one per checkpoint: "0 untrained", then each phase
    baseline: dict  # denoise_* scores of the noisy input alone (no U-Net): the bar to clear
    seconds: dict  # wall time per checkpoint (training + scoring): a measurement, not part of `rows`
    train_seconds: dict  # wall time of each phase's training alone: a measurement
    unet: object = field(repr=False)
    noise_scheduler: object = field(repr=False)
    validation: dict = field(repr=False)  # the held-out batch every checkpoint was scored on
    kind: str = "nano-deci"


def run_mini_recipe(recipe: Recipe, parts: FrozenParts, phases: list[Phase], kind: str = "nano-deci",
                    prompts_per_kind: int = 12, seed: int = 0, validation_images: int = 96,
                    timestep: int = 500, score_each_phase: bool = True) -> MiniRun:
    """Train a fresh `kind` U-Net through `phases`; score it before the first and after each
    (`score_each_phase=False`: after the last only, for an ablation compared by where it ends).

    EMA (diffusers' `EMAModel`, decay `recipe.ema_decay`) starts with the first phase that asks
    for it; a checkpoint with EMA is scored on the EMA weights, and training then continues on
    the raw ones, except after the last phase, where the EMA weights are kept (what ships).
    """
    from diffusers.training_utils import EMAModel

    from .training import train_unet_phase

    unet, noise_scheduler = build_nano_unet(kind)
    validation = validation_batch(recipe, parts, validation_images)
    score = dict(kind=kind, parts=parts, validation=validation, prompts_per_kind=prompts_per_kind, seed=seed,
                 timestep=timestep)
    baseline = denoise_scores(None, noise_scheduler, parts, validation, timestep, seed)
    start = time.perf_counter()
    rows = [{"phase": "0 untrained", "steps": 0, "samples": 0, "samples_seen": 0, "loss_first": None,
             "loss_last": None, **checkpoint_row(unet, noise_scheduler, **score)}]
    seconds = {"0 untrained": time.perf_counter() - start}
    ema, seen, train_seconds = None, 0, {}
    for i, (phase, fraction) in enumerate(zip(phases, recipe.phase_fractions)):
        start = time.perf_counter()
        if phase.ema and ema is None:
            ema = EMAModel(unet.parameters(), decay=recipe.ema_decay)
        row = train_unet_phase(unet, noise_scheduler, phase.tensors, int(recipe.unet_samples * fraction), recipe,
                               phase.lr_schedule, f"{kind} phase {phase.name}", ema=ema)
        train_seconds[phase.name] = time.perf_counter() - start
        if ema is not None:
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
        seen += row["samples"]
        if score_each_phase or i == len(phases) - 1:
            rows.append({**row, "phase": phase.name, "samples_seen": seen,
                         **checkpoint_row(unet, noise_scheduler, **score)})
        if ema is not None and i < len(phases) - 1:
            ema.restore(unet.parameters())
        seconds[phase.name] = time.perf_counter() - start
    return MiniRun(rows, baseline, seconds, train_seconds, unet, noise_scheduler, validation, kind)


def training_step_seconds(cases: dict, batch: int = 64, rounds: int = 5, steps: int = 2, seed: int = 0) -> dict:
    """Seconds per training sample (forward and backward at `batch`) for each case, best of `rounds`.

    `cases` maps a name to `(unet, noise_scheduler, tensors)`. The cases take turns within every
    round, so a neighbour's load or the machine's drift lands on all of them alike, and the minimum
    keeps the round each ran undisturbed: a phase's wall time in `MiniRun.train_seconds` has no such
    protection. The U-Nets' weights are left as they were (no optimiser step; gradients cleared).
    """
    batches = {}
    for name, (unet, noise_scheduler, tensors) in cases.items():
        gen = torch.Generator().manual_seed(seed)
        idx = torch.arange(batch) % len(tensors["latents"])
        x0 = tensors["latents"][idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=gen)
        batches[name] = (noise_scheduler.add_noise(x0, noise, t), t, tensors["text_states"][tensors["caption_ids"][idx]],
                         *_target_and_weight(noise_scheduler, x0, noise, t))
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, (unet, _, _) in cases.items():
            noisy, t, states, target, weight = batches[name]
            was_training = unet.training
            unet.train()
            start = time.perf_counter()
            for _ in range(steps):
                pred = unet(noisy, t, states).sample
                (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean().backward()
            best[name] = min(best[name], (time.perf_counter() - start) / (steps * batch))
            unet.zero_grad(set_to_none=True)
            unet.train(was_training)
    return best


# ------------------------------------------------------------------ shipped logs


def read_log(path: str | Path) -> list[dict]:
    """A training CSV as rows, numbers parsed (int, else float, else the text; empty -> None)."""
    def parse(value):
        if value in ("", None):
            return None
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
        return value

    with Path(path).open(newline="") as f:
        rows = [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]
    seen = 0
    for row in rows:  # cumulative samples, the x axis the plots share with run_mini_recipe's rows
        if isinstance(row.get("samples"), int):
            seen += row["samples"]
            row.setdefault("samples_seen", seen)
    return rows


def shipped_phase_logs(folder: str | Path | None = None) -> dict[str, list[dict]]:
    """{"nano-deci": rows, "nano-sd": rows} from the `*_phases.csv` logs of the shipped models."""
    from .presets import data_dir

    folder = Path(folder) if folder else data_dir() / "nano-logs"
    logs = {p.name.removesuffix("_phases.csv"): read_log(p) for p in sorted(folder.glob("*_phases.csv"))}
    if not logs:
        raise FileNotFoundError(f"no *_phases.csv in {folder.name}/: build the nano models with `decidiff-lab train-nano`")
    return logs


# ------------------------------------------------------------------ plots

SCORE_LABELS = {"single_color": "single: colour", "single_shape": "single: shape",
                "single_position": "single: position", "single_acc": "single: all correct",
                "pair_relation": "pair: relation", "pair_acc": "pair: all correct",
                "denoise_single": "single: all correct", "denoise_pair": "pair: all correct",
                "denoise_overall": "all captions"}


def _phase_marks(ax, rows: list[dict]) -> None:
    for row in rows[1:] if rows and rows[0]["samples_seen"] == 0 else rows:
        ax.axvline(row["samples_seen"], color="grey", lw=0.6, ls=":")


def plot_scores(rows: list[dict], ax=None, keys=GENERATION_KEYS, baseline: dict | None = None,
                title: str = "Checker accuracy, generated images"):
    """Checker accuracies against samples seen; dotted lines end each phase. `baseline` (e.g.
    `MiniRun.baseline`) adds a dashed line per key: the score of the noisy input alone."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6.5, 3.5))[1]
    x = [r["samples_seen"] for r in rows]
    for key in keys:
        (line,) = ax.plot(x, [r[key] for r in rows], marker="o", label=SCORE_LABELS.get(key, key))
        if baseline and key in baseline:
            ax.axhline(baseline[key], color=line.get_color(), ls="--", lw=0.8)
    _phase_marks(ax, rows)
    ax.set(xlabel="training samples seen", ylabel="accuracy", ylim=(-0.02, 1.02), title=title)
    ax.legend(fontsize=7, ncol=2)
    return ax


def plot_losses(rows: list[dict], ax=None, title: str = "Loss per phase"):
    """Training loss at each phase's start and end (mean of its first 20 / last 50 steps) and,
    where present, the validation loss at every checkpoint."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6.5, 3.5))[1]
    trained = [r for r in rows if r.get("loss_first") is not None]
    for n, r in enumerate(trained):
        start = r["samples_seen"] - r["samples"]
        ax.plot([start, r["samples_seen"]], [r["loss_first"], r["loss_last"]], color="tab:blue", marker="o",
                label="training loss (phase start, end)" if n == 0 else None)
    if any(r.get("val_loss") is not None for r in rows):
        ax.plot([r["samples_seen"] for r in rows], [r["val_loss"] for r in rows], color="tab:orange", marker="s",
                label="validation loss (fixed batch)")
    _phase_marks(ax, rows)
    ax.set(xlabel="training samples seen", ylabel="weighted MSE", title=title, yscale="log")
    ax.legend(fontsize=7)
    return ax


def plot_curves(rows: list[dict], title: str = "", baseline: dict | None = None):
    """Loss and checker accuracy against samples seen: the figure notebook 06 shows for a run
    (three panels: loss, denoising score, generation score) or for a shipped log (two)."""
    import matplotlib.pyplot as plt

    denoise = DENOISE_KEYS[0] in rows[0]
    fig, axes = plt.subplots(1, 3 if denoise else 2, figsize=(15 if denoise else 12, 3.8))
    plot_losses(rows, axes[0])
    if denoise:
        plot_scores(rows, axes[1], DENOISE_KEYS, baseline, title="Checker accuracy, one-step denoising")
    plot_scores(rows, axes[-1])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
