"""`decidiff-lab doctor`: what this machine can run, answered in a few seconds."""

from __future__ import annotations

import math
import platform
import time

import diffusers
import numpy as np
import torch
import transformers

from . import hub
from .generate import generate
from .loading import default_device, load_pipeline, safetensors_header, weights_folder
from .presets import HUB_PRESETS, Preset, all_presets, get_preset


def preset_available_locally(preset: Preset) -> bool:
    """Every file the loader reads is on this machine (no request sent)."""
    if preset.is_nano:
        return (preset.local_dir / "model_index.json").is_file()
    return not hub.missing_files(preset)


def machine_report() -> dict:
    """Versions, device, hub reachability and which presets are on this machine (a few seconds)."""
    start = time.perf_counter()
    cause = hub.probe(HUB_PRESETS["deci-v2"])
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": default_device(),
        "cpu_threads": torch.get_num_threads(),
        "hub": "answers" if cause is None else cause,
        "hub_check_seconds": round(time.perf_counter() - start, 2),
        "hf_cache": str(hub.cache_dir()),
        "presets_local": {name: preset_available_locally(p) for name, p in all_presets().items()},
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    return info


def format_machine_report(info: dict) -> str:
    """`machine_report` as aligned "key value" lines (`decidiff-lab doctor`)."""
    lines = [f"{key:18s} {value}" for key, value in info.items() if key != "presets_local"]
    for name, ok in info["presets_local"].items():
        lines.append(f"{'preset ' + name:18s} {'available locally' if ok else 'not cached (decidiff-lab fetch ' + name + ')'}")
    return "\n".join(lines)


# --- `decidiff-lab doctor --smoke`: an instructor's check of the real weights on a GPU -------------------

PUBLISHED_UNET_BYTES = {"deci-v2": 1_050_614_888}  # FACTS.md: v2's flexible_unet safetensors, exactly


def checkpoint_tensors(file) -> dict[str, int]:
    """Tensor name -> element count, read from a safetensors header (no weights loaded)."""
    return {k: math.prod(v["shape"]) for k, v in safetensors_header(file)[1].items() if k != "__metadata__"}


def smoke_preset(name: str, device: str | None = None, prompt: str = "A photo of an astronaut riding a horse on Mars"):
    """Load `name`, check its U-Net against its checkpoint, generate one image: (ok, one-line report)."""
    preset = get_preset(name)
    start = time.perf_counter()
    pipe = load_pipeline(preset, device=device, verbose=False)
    loaded = time.perf_counter() - start
    file = next((weights_folder(preset) / preset.unet_subfolder).glob("*.safetensors"))
    stored = checkpoint_tensors(file)
    model = {k: v.numel() for k, v in pipe.unet.state_dict().items()}
    missing, unexpected = sorted(set(model) - set(stored)), sorted(set(stored) - set(model))
    params = sum(p.numel() for p in pipe.unet.parameters())
    checks = {"keys": not missing and not unexpected, "params": params == sum(stored.values())}
    size = file.stat().st_size
    published = PUBLISHED_UNET_BYTES.get(name)
    if published:
        checks["bytes"] = size == published
    start = time.perf_counter()
    image = generate(pipe, prompt, **preset.sampling, seed=0)[0]
    seconds = time.perf_counter() - start
    checks["image"] = bool(np.isfinite(image).all() and image.std() > 2 and image.max() > 16)
    side = image.shape[0]
    line = (f"{name}: loaded in {loaded:.1f} s; U-Net keys {len(missing)} missing / {len(unexpected)} unexpected; "
            f"{params:,} params vs the checkpoint's {sum(stored.values()):,}; {file.name} {size:,} bytes"
            + (f" (published: {published:,})" if published else "")
            + f"; {side}x{side} image in {seconds:.1f} s ({preset.default_steps} steps), pixel std {image.std():.1f}"
            + f": {'OK' if all(checks.values()) else 'FAILED ' + ', '.join(k for k, ok in checks.items() if not ok)}")
    del pipe
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return all(checks.values()), line
