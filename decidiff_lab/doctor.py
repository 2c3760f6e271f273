"""`decidiff-lab doctor`: what this machine can run, answered in a couple of seconds."""

from __future__ import annotations

import platform
import time

import torch

from .loading import hub_offline_by_env, hub_reachable
from .presets import Preset, all_presets


def preset_available_locally(preset: Preset) -> bool:
    if preset.is_nano:
        return (preset.local_dir / "model_index.json").is_file()
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(preset.repo_id, "model_index.json", revision=preset.revision)
    return isinstance(hit, str)


def report() -> dict:
    import diffusers
    import transformers

    start = time.perf_counter()
    reachable = hub_reachable()
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "hub": "offline (HF_HUB_OFFLINE)" if hub_offline_by_env() else ("reachable" if reachable else "unreachable"),
        "hub_check_seconds": round(time.perf_counter() - start, 2),
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
