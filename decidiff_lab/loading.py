"""Load any preset as a standard diffusers `StableDiffusionPipeline`.

Safetensors only, never `custom_pipeline`, never remote code: DeciDiffusion's U-Net-NAS is
read by our native `FlexibleUNet2DConditionModel`. `auto` picks the real DeciDiffusion on a
GPU with the hub, the nano model otherwise, and says why in one line.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import torch

from .errors import UserError
from .flexible_unet import FlexibleUNet2DConditionModel
from .schedulers import SqueezedDPMSolverMultistepScheduler  # noqa: F401  (lets diffusers load nano-deci's scheduler)
from .presets import Preset, all_presets, get_preset

HUB_HOST = "huggingface.co"


def hub_offline_by_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_reachable(timeout: float = 1.5) -> bool:
    """True when huggingface.co answers a TCP connect within `timeout` seconds.

    The connect (DNS included) runs in a daemon thread, so a hanging resolver cannot stall
    the caller past the timeout.
    """
    if hub_offline_by_env():
        return False
    result = []

    def probe():
        try:
            socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_preset(name: str = "auto", device: str | None = None) -> tuple[Preset, str]:
    """Turn a preset name (or `auto`, or $DECIDIFF_LAB_PRESET) into a preset and the reason."""
    name = name or os.environ.get("DECIDIFF_LAB_PRESET", "auto")
    if name != "auto":
        return get_preset(name), f"asked for {name!r}"
    device = device or default_device()
    if device == "cuda" and hub_reachable():
        return get_preset("deci-v2"), "auto: a GPU and the Hugging Face hub are available"
    why = "no GPU" if device != "cuda" else "the hub is unreachable or HF_HUB_OFFLINE is set"
    presets = all_presets()
    if "nano-deci" not in presets:
        raise UserError(f"auto: {why}, and the offline nano-deci model is not built yet (no data/nano-deci)")
    return presets["nano-deci"], f"auto: {why}, so the offline nano model"


def _hub_kwargs(preset: Preset, revision: str | None) -> dict:
    if preset.is_nano:
        return {}
    return {"revision": revision or preset.revision, "local_files_only": hub_offline_by_env()}


def resolved_commit(model) -> str | None:
    """The hub commit a loaded model came from (its snapshot folder's name), if any."""
    path = Path(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", ""))
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def load_pipeline(preset: str | Preset = "auto", device: str | None = None, dtype: torch.dtype | None = None,
                  revision: str | None = None, verbose: bool = True):
    """Load a preset into a `StableDiffusionPipeline` on `device` (default: the best available)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    device = device or default_device()
    if isinstance(preset, Preset):
        why = "given"
    else:
        preset, why = resolve_preset(preset, device)
    dtype = dtype or (torch.float16 if device == "cuda" else torch.float32)
    source = str(preset.local_dir) if preset.is_nano else preset.repo_id
    kwargs = dict(use_safetensors=True, torch_dtype=dtype, **_hub_kwargs(preset, revision))
    unet_cls = FlexibleUNet2DConditionModel if preset.flexible_unet else UNet2DConditionModel
    try:
        unet = unet_cls.from_pretrained(source, subfolder=preset.unet_subfolder, **kwargs)
        # unet=None, then register: diffusers' type check on passed components cannot handle
        # a class from outside its known libraries (ours), even a UNet2DConditionModel subclass.
        pipe = StableDiffusionPipeline.from_pretrained(
            source, unet=None, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, **kwargs,
        )
        pipe.register_modules(unet=unet)
    except OSError as err:
        hint = (f"run `decidiff-lab fetch {preset.name}` where the hub is reachable"
                if not preset.is_nano else "rebuild it with `decidiff-lab train-nano`")
        raise UserError(f"cannot load preset {preset.name!r} from {source}: {str(err).splitlines()[0]} ({hint})") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(leave=False)
    if verbose:
        commit = resolved_commit(unet)
        where = f"{source}@{commit[:10]}" if commit else source
        print(f"Using {preset.name} ({where}) on {device}, {str(dtype).replace('torch.', '')}: {why}")
    return pipe


def load_nano_clip(device: str = "cpu"):
    """The nano CLIP (image-text similarity, a CLIP-score for the notebooks) from data/.

    Its text tower is nano-sd's `text_encoder`; data/nano-clip holds the rest.
    """
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel, CLIPTextModel

    from .presets import data_dir

    folder = data_dir() / "nano-clip"
    weights = folder / "vision_and_projections.safetensors"
    if not weights.is_file():
        raise UserError(f"missing {weights}: rebuild the nano models with `decidiff-lab train-nano`")
    clip = CLIPModel(CLIPConfig.from_pretrained(folder))
    text = CLIPTextModel.from_pretrained(data_dir() / "nano-sd" / "text_encoder", use_safetensors=True)
    missing, unexpected = clip.load_state_dict(load_file(weights), strict=False)
    clip.text_model.load_state_dict(text.state_dict())
    if unexpected or any(not k.startswith("text_model.") for k in missing):
        raise UserError(f"{weights} does not match its config.json: rebuild with `decidiff-lab train-nano`")
    return clip.float().eval().to(device)
