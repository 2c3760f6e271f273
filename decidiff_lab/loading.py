"""Load any preset as a standard diffusers `StableDiffusionPipeline`, built with its own U-Net and sampler.

Safetensors only, never `custom_pipeline`, never remote code: DeciDiffusion's U-Net-NAS is read by our
native `FlexibleUNet2DConditionModel`, and Deci 2.0's refined DPM++ is installed as Deci's own pipeline
samples it (the repos' `model_index.json` declare a DDIM). `auto` is decided once per process: the real
DeciDiffusion 2.0 and SD 1.5 on a GPU when every file both need is in the local cache or the hub gives
them, the nano pair otherwise, with the reason in one line.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import warnings
from pathlib import Path

import torch

from . import hub, presets
from .errors import UserError
from .flexible_unet import FlexibleUNet2DConditionModel
from .memory import default_dtype, place
from .presets import Preset, all_presets, get_preset
from .schedulers import SqueezedDPMSolverMultistepScheduler

_logger = logging.getLogger(__name__)

# diffusers >= 0.40 renamed from_pretrained's `torch_dtype` to `dtype`; older releases (Colab's)
# know only `torch_dtype`, so we keep it and silence the rename notice.
warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)

REAL_PAIR = ("deci-v2", "sd15")  # what `auto` loads on a GPU: DeciDiffusion 2.0 and its SD 1.5 reference
_AUTO: dict[str, tuple[Preset, str]] = {}  # device type -> (preset, reason): decided once per process


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _gpu_name(device: str) -> str | None:
    kind = torch.device(device).type
    return {"cuda": f"a CUDA GPU ({device})", "mps": "an Apple GPU (MPS)"}.get(kind)


def _nano(why: str) -> tuple[Preset, str]:
    available = all_presets()
    if "nano-deci" not in available:
        raise UserError(f"auto: {why}, and the offline nano-deci model is not built yet (no data/nano-deci)")
    return available["nano-deci"], f"auto: {why}, so the offline nano model"


def _decide_auto(device: str) -> tuple[Preset, str]:
    gpu = _gpu_name(device)
    if gpu is None:
        return _nano(f"no GPU ({device})")
    pair = [get_preset(name) for name in REAL_PAIR]
    if not any(hub.missing_files(p) for p in pair):
        return pair[0], f"auto: {gpu}, and every file of {' and '.join(REAL_PAIR)} is in the local cache"
    if hub.offline_by_env():
        return _nano(f"{gpu}, but HF_HUB_OFFLINE is set and the local cache lacks {' or '.join(REAL_PAIR)}")
    cause = hub.probe(pair[0])
    if cause:
        return _nano(f"{gpu}, but {cause}")
    try:
        for preset in pair:
            hub.ensure_snapshot(preset)
    except hub.HubError as err:
        return _nano(f"{gpu}, but {err}")
    return pair[0], f"auto: {gpu} and the Hugging Face hub (pinned revisions downloaded)"


def resolve_preset(name: str = "auto", device: str | None = None) -> tuple[Preset, str]:
    """Turn a preset name (or `auto`, or $DECIDIFF_LAB_PRESET) into a preset and the reason."""
    if name in (None, "", "auto"):
        name = os.environ.get("DECIDIFF_LAB_PRESET", "auto")
    if name != "auto":
        return get_preset(name), f"asked for {name!r}"
    kind = torch.device(device or default_device()).type
    if kind not in _AUTO:
        _AUTO[kind] = _decide_auto(device or default_device())
    return _AUTO[kind]


# The blog post's own demo prompts (real models), and their nano counterparts: one shape, a place,
# a two-object composition (the model card's stated weak spot).
DEMO_PROMPTS = ["A photo of an astronaut riding a horse on Mars", "A big owl with bright shinning eyes"]
NANO_PROMPTS = ["a red circle in the center", "a blue square on the left", "a yellow triangle above a purple circle"]


def comparison_pair(preset: str = "auto", device: str | None = None) -> tuple[Preset, Preset, str]:
    """DeciDiffusion and its SD 1.5 reference, both real or both nano: (deci, sd, why)."""
    deci, why = resolve_preset(preset, device)
    reference = get_preset("nano-sd" if deci.is_nano else "sd15")
    return deci, reference, why


def demo_prompts(preset: Preset) -> list[str]:
    return NANO_PROMPTS if preset.is_nano else DEMO_PROMPTS


def resolved_commit(model) -> str | None:
    """The hub commit a loaded model came from (its snapshot folder's name), if any."""
    path = Path(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", ""))
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def verify_weights(folder: Path, subfolders=("unet", "vae", "text_encoder")) -> None:
    """Check each component's safetensors before loading anything (nothing half-loaded)."""
    from safetensors import safe_open

    for name in subfolders:
        files = sorted((folder / name).glob("*.safetensors"))
        if not files:
            raise UserError(f"missing weights: no .safetensors file in {folder / name} "
                            "(rebuild with `decidiff-lab train-nano`, or fetch the preset again)")
        for file in files:
            try:
                expected = _safetensors_size(file)
            except Exception as err:
                raise UserError(f"corrupt weights file {file}: unreadable header ({type(err).__name__}) "
                                "(rebuild or re-fetch it)") from None
            if file.stat().st_size < expected:
                raise UserError(f"truncated weights file {file}: {file.stat().st_size:,} of {expected:,} bytes "
                                "(rebuild or re-fetch it)")
            try:
                with safe_open(file, framework="pt") as f:
                    f.keys()
            except Exception as err:  # the Rust reader raises its own error types
                raise UserError(f"corrupt weights file {file}: {str(err).splitlines()[0]} "
                                "(rebuild or re-fetch it)") from None


def safetensors_header(file: Path) -> tuple[int, dict]:
    """(header length, header) of a safetensors file: tensor names, dtypes, shapes and byte offsets."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return length, json.loads(f.read(length))


def _safetensors_size(file: Path) -> int:
    """Header length + header + the largest tensor end offset: what a complete file holds."""
    length, header = safetensors_header(file)
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + length + max(ends, default=0)


def make_sampler(preset: Preset, repo_scheduler):
    """The sampler `preset` runs, built from the scheduler its folder ships."""
    from diffusers import DPMSolverMultistepScheduler

    if preset.sampler == "squeezed-dpm++":
        return SqueezedDPMSolverMultistepScheduler(squeeze_mode="10,6")  # Deci's class defaults
    if preset.sampler == "dpm++":
        return DPMSolverMultistepScheduler.from_config(repo_scheduler.config)
    return repo_scheduler


def sampler_line(pipe, preset: Preset) -> str:
    name = type(pipe.scheduler).__name__
    if isinstance(pipe.scheduler, SqueezedDPMSolverMultistepScheduler) and pipe.scheduler.config.squeeze_mode:
        return f"{name} {pipe.scheduler.config.squeeze_mode!r}, {preset.default_steps} steps"
    return f"{name}, {preset.default_steps} steps"


def weights_folder(preset: Preset) -> Path:
    """Where `preset`'s files are on this machine: its data/ folder, or the pinned hub snapshot."""
    if not preset.is_nano:
        return hub.ensure_snapshot(preset)
    folder = Path(preset.local_dir)
    if not (folder / "model_index.json").is_file():
        raise UserError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    return folder


def load_pipeline(preset: str | Preset = "auto", device: str | None = None, dtype: torch.dtype | None = None,
                  verbose: bool = True, why: str | None = None):
    """Load a preset into a `StableDiffusionPipeline` on `device` (default: the best available).

    `why` is the reason printed for a preset chosen elsewhere (e.g. by `comparison_pair`).
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    device = device or default_device()
    if isinstance(preset, Preset):
        why = why or "chosen by the caller"
    else:
        preset, why = resolve_preset(preset, device)
    dtype = dtype or default_dtype(device)
    folder = weights_folder(preset)
    verify_weights(folder, ("vae", "text_encoder", preset.unet_subfolder))
    kwargs = dict(use_safetensors=True, torch_dtype=dtype, variant="fp16" if preset.fp16_variant else None)
    unet_cls = FlexibleUNet2DConditionModel if preset.flexible_unet else UNet2DConditionModel
    try:
        unet = unet_cls.from_pretrained(folder, subfolder=preset.unet_subfolder, **kwargs)
        # The other components through the pipeline's own loader (unet=None skips the repo's `unet/`,
        # Deci's unused 3.4 GB one), then a pipeline *constructed* with its U-Net: registering one
        # afterwards leaves diffusers' cached sample-size check wrong, and `pipe(prompt)` crashes.
        parts = StableDiffusionPipeline.from_pretrained(
            folder, unet=None, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            **kwargs).components
    except (OSError, ValueError) as err:
        hint = ("rebuild it with `decidiff-lab train-nano`" if preset.is_nano
                else f"delete {folder} and run `decidiff-lab fetch {preset.name}` again")
        raise UserError(f"cannot load preset {preset.name!r} from {folder}: {str(err).splitlines()[0]} ({hint})") from None
    parts.update(unet=unet, scheduler=make_sampler(preset, parts["scheduler"]))
    pipe = StableDiffusionPipeline(**{k: parts.get(k) for k in (
        "vae", "text_encoder", "tokenizer", "unet", "scheduler", "safety_checker", "feature_extractor")},
        requires_safety_checker=False)
    place(pipe, device, verbose)
    pipe.set_progress_bar_config(leave=False)
    if verbose:
        commit = resolved_commit(unet)
        where = f"{preset.repo_id}@{commit[:10]}" if commit else str(folder)
        if preset.is_nano:  # relative, so printed output is the same on every machine
            where = f"data/{preset.local_dir.name}"
        _logger.info(f"Using {preset.name} ({where}) on {device}, {str(dtype).replace('torch.', '')}, "
                    f"sampler {sampler_line(pipe, preset)}: {why}")
    return pipe


def load_nano_clip(device: str = "cpu"):
    """The nano CLIP (image-text similarity, a CLIP-score for the notebooks) from data/.

    Its 49,408-row token table is nano-sd's text encoder's; data/nano-clip holds the rest.
    """
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel, CLIPTextModel

    folder = presets.data_dir() / "nano-clip"  # looked up at call time: tests point it elsewhere
    weights = folder / "model_without_token_embedding.safetensors"
    if not weights.is_file():
        raise UserError(f"missing {weights}: rebuild the nano models with `decidiff-lab train-nano`")
    clip = CLIPModel(CLIPConfig.from_pretrained(folder))
    missing, unexpected = clip.load_state_dict(load_file(weights), strict=False)
    if unexpected or [k for k in missing if "token_embedding" not in k]:
        raise UserError(f"{weights} does not match its config.json: rebuild with `decidiff-lab train-nano`")
    text = CLIPTextModel.from_pretrained(presets.data_dir() / "nano-sd" / "text_encoder", use_safetensors=True)
    clip.text_model.embeddings.token_embedding.load_state_dict(text.embeddings.token_embedding.state_dict())
    return clip.float().eval().to(device)
