"""`decidiff-lab doctor`: what this machine can run, answered in a few seconds."""

from __future__ import annotations

import platform
import time

import torch

from . import hub
from .loading import default_device
from .presets import HUB_PRESETS, Preset, all_presets


def preset_available_locally(preset: Preset) -> bool:
    """Every file the loader reads is on this machine (no request sent)."""
    if preset.is_nano:
        return (preset.local_dir / "model_index.json").is_file()
    return not hub.missing_files(preset)


def report() -> dict:
    import diffusers
    import transformers

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


def format_report(info: dict) -> str:
    lines = [f"{key:18s} {value}" for key, value in info.items() if key != "presets_local"]
    for name, ok in info["presets_local"].items():
        lines.append(f"{'preset ' + name:18s} {'available locally' if ok else 'not cached (decidiff-lab fetch ' + name + ')'}")
    return "\n".join(lines)
