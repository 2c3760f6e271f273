"""`decidiff-lab fetch`: pre-download the pinned real weights once (an instructor, before a workshop).

Learners then read the shared cache (`HF_HOME`) instead of forty people hitting the hub's rate
limit at once. Only what the pipelines load is fetched: safetensors and configs of each component.
"""

from __future__ import annotations

import time
from pathlib import Path

from .errors import UserError
from .loading import hub_offline_by_env, hub_reachable
from .presets import Preset, get_preset

COMPONENT_FILES = ("*.json", "*.txt", "diffusion_pytorch_model.safetensors", "model.safetensors")


def allow_patterns(preset: Preset) -> list[str]:
    folders = ("scheduler", "tokenizer", "text_encoder", "vae", preset.unet_subfolder)
    return ["model_index.json"] + [f"{folder}/{pattern}" for folder in folders for pattern in COMPONENT_FILES]


def _status(err) -> int | None:
    return getattr(getattr(err, "response", None), "status_code", None)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())  # follows the cache's links


def fetch(name: str, cache_dir: str | None = None, retries: int = 5, backoff: float = 2.0, sleep=time.sleep,
          download=None) -> tuple[Path, int]:
    """Download one preset's pinned revision; retry with exponential backoff on HTTP 429."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    preset = get_preset(name)
    if preset.is_nano:
        raise UserError(f"{name} ships with the course in data/: nothing to fetch")
    if hub_offline_by_env() or not hub_reachable():
        raise UserError("the Hugging Face hub is unreachable (no network, or HF_HUB_OFFLINE is set): "
                        "run `decidiff-lab fetch` on a machine that can reach it, then share its HF_HOME")
    download = download or snapshot_download
    for attempt in range(1, retries + 1):
        try:
            path = download(preset.repo_id, revision=preset.revision, cache_dir=cache_dir,
                            allow_patterns=allow_patterns(preset))
            return Path(path), folder_bytes(Path(path))
        except HfHubHTTPError as err:
            if _status(err) != 429 or attempt == retries:
                raise UserError(f"fetching {preset.repo_id} failed: {str(err).splitlines()[0]}") from None
            wait = backoff * 2 ** (attempt - 1)
            print(f"hub rate limit (HTTP 429) on {preset.repo_id}: retrying in {wait:.0f} s "
                  f"(attempt {attempt + 1}/{retries})", flush=True)
            sleep(wait)
    raise AssertionError("unreachable")
