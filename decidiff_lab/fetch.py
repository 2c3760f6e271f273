"""`decidiff-lab fetch`: pre-download the pinned real weights once (an instructor, before a workshop).

Learners then read the shared cache (`HF_HOME`, with `HF_HUB_OFFLINE=1`) instead of forty people
hitting the hub's rate limit at once. Exactly the files `load_pipeline` reads are fetched
(`hub.needed_files`): fp16 variants where the repo has them, never Deci's unused `unet/`.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import hub
from .errors import UserError
from .presets import get_preset


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())  # follows the cache's links


def fetch(name: str, sleep=time.sleep) -> tuple[Path, int]:
    """Download one preset's pinned revision into the cache; return its snapshot folder and size."""
    preset = get_preset(name)
    if preset.is_nano:
        raise UserError(f"{name} ships with the course in data/: nothing to fetch")
    if hub.offline_by_env():
        raise UserError("HF_HUB_OFFLINE is set: run `decidiff-lab fetch` on a machine that can reach the hub "
                        "(unset HF_HUB_OFFLINE there), then share its HF_HOME")
    path = hub.ensure_snapshot(preset, sleep=sleep)
    return path, folder_bytes(path)
