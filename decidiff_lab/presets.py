"""The one registry of named model presets, and where pinned revisions live.

A preset says where a pipeline's weights are (hub repo + revision, or a folder in `data/`),
which U-Net class reads them, and which full-size architecture dicts describe it for the
accounting module. Nano presets are registered only when their folder exists in `data/`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import architectures as arch
from . import nano
from .errors import UserError

# Pinned revisions, in one place: the newest commits seen on the hub's public pages (FACTS.md). v2's is
# the commit that replaced its flexible_unet checkpoint or later: never pin v2 before it. SD 1.5's is the
# maintained mirror's main commit, pinned by many public projects.
REVISIONS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
    "Deci/DeciDiffusion-v1-0": "99d0c312e8e00e1bfb1aa89ad52b2a34f5829c2d",
    "Deci/DeciDiffusion-v2-0": "82c0da63edee713406247ce4dcdc847ac618fbd5",
}

# Samplers a preset can run (`Preset.sampler`):
#   "repo": the scheduler the weights folder ships (nano folders, deci-v1's trailing DDIM);
#   "dpm++": DPM-Solver++(2M) built from the repo's noise schedule;
#   "squeezed-dpm++": Deci 2.0's refined DPM++ from its class defaults ("10,6"), as Deci's own pipeline
#       samples v2. Not `from_config` of the repo's DDIM config: that carries "trailing" over.
PRESET_SAMPLERS = ("repo", "dpm++", "squeezed-dpm++")

# The comparison rule for SD 1.5, everywhere in the course: 16 DPM-Solver++ steps (the model card's
# 16-iteration row, and what nano-sd runs) against DeciDiffusion 2.0's 16 squeezed to 10.


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    repo_id: str | None = None  # hub presets
    local_dir: Path | None = None  # nano presets, shipped in data/
    unet_subfolder: str = "unet"
    flexible_unet: bool = False  # U-Net-NAS (FlexibleUNet2DConditionModel) vs UNet2DConditionModel
    # Sampling defaults, the one home that the CLI, generate, bench, quality and the notebooks read
    # (through `sampling`). default_steps are the U-Net calls run (deci-v2: Deci's 16 squeezed to 10).
    default_steps: int = 50
    default_guidance: float = 7.5
    guidance_rescale: float = 0.0  # Deci's pipelines: 0.7 (v1), 0.8 (v2); both are v-prediction models
    sampler: str = "repo"
    fp16_variant: bool = False  # the repo has *.fp16.safetensors files (SD 1.5 does, Deci's do not)
    unet_config: dict = field(default_factory=dict, repr=False)  # for meta-device accounting
    vae_config: dict = field(default_factory=lambda: arch.SD15_VAE, repr=False)
    text_encoder_config: dict = field(default_factory=lambda: arch.SD15_TEXT_ENCODER, repr=False)
    reconstruction: bool = False  # unet_config is our reconstruction, not the published one

    @property
    def revision(self) -> str | None:
        return REVISIONS.get(self.repo_id) if self.repo_id else None

    @property
    def is_nano(self) -> bool:
        return self.local_dir is not None

    @property
    def sampling(self) -> dict:
        """This preset's defaults as keyword arguments of `generate.generate`."""
        return {"steps": self.default_steps, "guidance_scale": self.default_guidance,
                "guidance_rescale": self.guidance_rescale}


HUB_PRESETS = {
    p.name: p
    for p in (
        Preset("sd15", "Stable Diffusion 1.5 (maintained mirror of runwayml's deleted repo)",
               repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5", default_steps=16, sampler="dpm++",
               fp16_variant=True, unet_config=arch.SD15_UNET),
        Preset("deci-v1", "DeciDiffusion 1.0: U-Net-NAS (published config), SD 1.5's VAE and CLIP, v-prediction",
               repo_id="Deci/DeciDiffusion-v1-0", unet_subfolder="flexible_unet", flexible_unet=True,
               default_steps=30, guidance_rescale=0.7, unet_config=arch.DECI_V1),
        Preset("deci-v2", "DeciDiffusion 2.0: smaller U-Net-NAS, squeezed DPM-Solver++ (16 -> 10 steps)",
               repo_id="Deci/DeciDiffusion-v2-0", unet_subfolder="flexible_unet", flexible_unet=True,
               default_steps=10, guidance_rescale=0.8, sampler="squeezed-dpm++",
               unet_config=arch.DECI_V2_RECONSTRUCTION, reconstruction=True),
    )
}

NANO_NAMES = ("nano-sd", "nano-deci")


def data_dir() -> Path:
    """The course's `data/` folder (override with DECIDIFF_LAB_DATA)."""
    env = os.environ.get("DECIDIFF_LAB_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


def nano_presets() -> dict[str, Preset]:
    """Nano presets whose pipeline folders exist in data/ (absent, never faked, otherwise)."""
    found = {}
    for name in NANO_NAMES:
        folder = data_dir() / name
        if (folder / "model_index.json").is_file():
            deci = name == "nano-deci"
            found[name] = Preset(name, f"nano model trained by this project ({folder})", local_dir=folder,
                                 flexible_unet=deci, default_steps=nano.DEFAULT_STEPS[name],
                                 default_guidance=nano.GUIDANCE)
    return found


def all_presets() -> dict[str, Preset]:
    return {**HUB_PRESETS, **nano_presets()}


def get_preset(name: str) -> Preset:
    presets = all_presets()
    if name not in presets:
        valid = ", ".join(presets)
        hint = "" if name not in NANO_NAMES else f" ({name} is not built yet: its folder is missing from {data_dir()})"
        raise UserError(f"unknown preset {name!r}{hint}; valid presets: {valid}")
    return presets[name]
