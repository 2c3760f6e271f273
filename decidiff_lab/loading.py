"""Load any preset as a standard diffusers `StableDiffusionPipeline`.

Safetensors only, never `custom_pipeline`, never remote code: DeciDiffusion's U-Net-NAS is
read by our native `FlexibleUNet2DConditionModel`. `auto` picks the real DeciDiffusion on a
GPU with the hub, the nano model otherwise, and says why in one line.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from pathlib import Path

import torch

from .errors import UserError
from .flexible_unet import FlexibleUNet2DConditionModel
from .memory import default_dtype, place
from .schedulers import SqueezedDPMSolverMultistepScheduler  # noqa: F401  (lets diffusers load nano-deci's scheduler)
from .presets import Preset, all_presets, get_preset

HUB_HOST = "huggingface.co"
# diffusers >= 0.40 renamed from_pretrained's `torch_dtype` to `dtype`; older releases (Colab's)
# know only `torch_dtype`, so we keep it and silence the rename notice.
warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)


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
        except Exception:  # any failure to connect means "not reachable"
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
    if name in (None, "", "auto"):
        name = os.environ.get("DECIDIFF_LAB_PRESET", "auto")
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


# The seed's own demo prompts (real models), and their nano counterparts: one shape, a place,
# a two-object composition (the seed's stated weak spot).
SEED_PROMPTS = ["A photo of an astronaut riding a horse on Mars", "A big owl with bright shinning eyes"]
NANO_PROMPTS = ["a red circle in the center", "a blue square on the left", "a yellow triangle above a purple circle"]


def comparison_pair(preset: str = "auto", device: str | None = None) -> tuple[Preset, Preset, str]:
    """DeciDiffusion and its SD 1.5 reference, both real or both nano: (deci, sd, why)."""
    deci, why = resolve_preset(preset, device)
    reference = get_preset("nano-sd" if deci.is_nano else "sd15")
    return deci, reference, why


def demo_prompts(preset: Preset) -> list[str]:
    return NANO_PROMPTS if preset.is_nano else SEED_PROMPTS


def _hub_kwargs(preset: Preset, revision: str | None) -> dict:
    if preset.is_nano:
        return {}
    return {"revision": revision or preset.revision, "local_files_only": hub_offline_by_env()}


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


def _safetensors_size(file: Path) -> int:
    """Header length + header + the largest tensor end offset: what a complete file holds."""
    import json
    import struct

    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + length + max(ends, default=0)


def load_pipeline(preset: str | Preset = "auto", device: str | None = None, dtype: torch.dtype | None = None,
                  revision: str | None = None, verbose: bool = True, why: str | None = None):
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
    source = str(preset.local_dir) if preset.is_nano else preset.repo_id
    kwargs = dict(use_safetensors=True, torch_dtype=dtype, **_hub_kwargs(preset, revision))
    unet_cls = FlexibleUNet2DConditionModel if preset.flexible_unet else UNet2DConditionModel
    if preset.is_nano or Path(source).is_dir():
        if not (Path(source) / "model_index.json").is_file():
            raise UserError(f"{source} is not a diffusers pipeline folder (no model_index.json)")
        verify_weights(Path(source), ("vae", "text_encoder", preset.unet_subfolder))
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
    place(pipe, device, verbose)
    pipe.set_progress_bar_config(leave=False)
    if verbose:
        commit = resolved_commit(unet)
        where = f"{source}@{commit[:10]}" if commit else source
        if preset.is_nano:  # relative, so printed output is the same on every machine
            where = f"data/{preset.local_dir.name}"
        print(f"Using {preset.name} ({where}) on {device}, {str(dtype).replace('torch.', '')}: {why}")
    return pipe


def load_nano_clip(device: str = "cpu"):
    """The nano CLIP (image-text similarity, a CLIP-score for the notebooks) from data/.

    Its 49,408-row token table is nano-sd's text encoder's; data/nano-clip holds the rest.
    """
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel, CLIPTextModel

    from .presets import data_dir

    folder = data_dir() / "nano-clip"
    weights = folder / "model_without_token_embedding.safetensors"
    if not weights.is_file():
        raise UserError(f"missing {weights}: rebuild the nano models with `decidiff-lab train-nano`")
    clip = CLIPModel(CLIPConfig.from_pretrained(folder))
    missing, unexpected = clip.load_state_dict(load_file(weights), strict=False)
    if unexpected or [k for k in missing if "token_embedding" not in k]:
        raise UserError(f"{weights} does not match its config.json: rebuild with `decidiff-lab train-nano`")
    text = CLIPTextModel.from_pretrained(data_dir() / "nano-sd" / "text_encoder", use_safetensors=True)
    clip.text_model.embeddings.token_embedding.load_state_dict(text.embeddings.token_embedding.state_dict())
    return clip.float().eval().to(device)
