"""The Hugging Face hub, for the real presets: the exact files a load needs, a cache check that sends
no request, downloads that retry a rate limit, and every failure named in one line.

Workshop rules: forty learners on one shared cache must not send forty x dozens of requests. So a
snapshot that already holds every file a preset needs is used as it is (`local_files_only`, zero
requests); only a missing file is fetched, and only the folders the loader reads (never Deci's unused
3.4 GB `unet/`). Everything reads the environment at call time (`HF_HOME`, `HF_HUB_CACHE`,
`HF_ENDPOINT`, `HF_HUB_OFFLINE`), so a shared cache or a mirror set in a notebook cell is honoured.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from .errors import UserError
from .presets import Preset

_logger = logging.getLogger(__name__)
TOKENIZER_FILES = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")
RETRIES, BACKOFF_S = 5, 2.0  # 429: waits of 2, 4, 8, 16 s (30 s in all) before giving up


class HubError(UserError):
    """The hub could not give a preset's files; the message names the cause and the fix."""


def offline_by_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home) / "hub"


def endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def needed_files(preset: Preset) -> list[str]:
    """Every file `loading.load_pipeline` reads from a real preset's repo, by its path in the repo."""
    variant = ".fp16" if preset.fp16_variant else ""
    weights = {"text_encoder": f"model{variant}.safetensors", "vae": f"diffusion_pytorch_model{variant}.safetensors",
               preset.unet_subfolder: f"diffusion_pytorch_model{variant}.safetensors"}
    files = ["model_index.json", "scheduler/scheduler_config.json"]
    files += [f"tokenizer/{name}" for name in TOKENIZER_FILES]
    for folder, name in weights.items():
        files += [f"{folder}/config.json", f"{folder}/{name}"]
    return files


def snapshot_dir(preset: Preset) -> Path:
    return cache_dir() / f"models--{preset.repo_id.replace('/', '--')}" / "snapshots" / preset.revision


def missing_files(preset: Preset) -> list[str]:
    """The needed files absent from the pinned snapshot in the local cache (no request sent)."""
    folder = snapshot_dir(preset)
    return [name for name in needed_files(preset) if not (folder / name).is_file()]


def _http_status(err: BaseException) -> tuple[int | None, BaseException]:
    """The HTTP status behind `err` and the error carrying it: huggingface_hub often re-raises an HTTP
    failure as a cache miss (`LocalEntryNotFoundError`) with the response only on its cause."""
    seen = err
    while seen is not None:
        status = getattr(getattr(seen, "response", None), "status_code", None)
        if status is not None:
            return status, seen
        seen = seen.__cause__ or seen.__context__
    return None, err


def describe(err: BaseException) -> str:
    """One line for a hub failure: what happened, in words a learner can act on."""
    status, carrier = _http_status(err)
    if status in (401, 403):
        return (f"the hub refused access (HTTP {status}: a gated or private repo, or a bad token; "
                "log in with `hf auth login` or accept the model's licence on its page)")
    if status == 404:
        code = (getattr(getattr(carrier, "response", None), "headers", None) or {}).get("X-Error-Code")
        names = {"RepoNotFound": "repo", "RevisionNotFound": "revision", "EntryNotFound": "file"}
        what = names.get(code, "repo, revision or file")
        return f"the hub has no such {what} (HTTP 404; the pinned revisions are in decidiff_lab/presets.py)"
    if status == 429:
        return "the hub is rate-limiting this network (HTTP 429)"
    if status is not None:
        return f"the hub answered HTTP {status}"
    name = type(err).__name__
    if "Timeout" in name or isinstance(err, TimeoutError):
        return "the hub did not answer in time (timeout)"
    if any(word in name for word in ("Connect", "Protocol", "Network")) or isinstance(err, OSError):
        return f"the hub is unreachable ({name}: no network, a proxy, or a dropped connection)"
    return f"the download failed ({name}: {str(err).splitlines()[0][:120] if str(err) else 'no message'})"


def _with_retries(call, what: str, sleep=time.sleep):
    """`call()`, retried with exponential backoff on HTTP 429 (and a 503), each wait announced."""
    for attempt in range(1, RETRIES + 1):
        try:
            return call()
        except Exception as err:  # huggingface_hub raises httpx/requests errors of its own versions
            status, _ = _http_status(err)
            if status not in (429, 503):
                raise HubError(f"{what}: {describe(err)}") from None
            if attempt == RETRIES:
                raise HubError(f"{what}: {describe(err)} after {RETRIES} tries with backoff") from None
            wait = BACKOFF_S * 2 ** (attempt - 1)
            _logger.info(f"hub busy (HTTP {status}) on {what}: retrying in {wait:.0f} s "
                        f"(attempt {attempt + 1}/{RETRIES})")
            sleep(wait)
    raise AssertionError("unreachable")


def _sync_offline_flag() -> None:
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: follow the environment as it is now."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = offline_by_env()


def ensure_snapshot(preset: Preset, sleep=time.sleep) -> Path:
    """The pinned snapshot folder holding every file `preset` needs, downloading only what is missing."""
    missing = missing_files(preset)
    if not missing:
        return snapshot_dir(preset)
    if offline_by_env():
        raise HubError(f"{preset.name} is not in the local cache ({cache_dir()}; first missing: {missing[0]}) and "
                       f"HF_HUB_OFFLINE is set: run `decidiff-lab fetch {preset.name}` where the hub is reachable, "
                       "then share its HF_HOME")
    from huggingface_hub import snapshot_download

    _sync_offline_flag()
    what = f"downloading {preset.repo_id}@{preset.revision[:10]}"
    path = _with_retries(lambda: snapshot_download(
        preset.repo_id, revision=preset.revision, cache_dir=cache_dir(), allow_patterns=missing,
        endpoint=endpoint()), what, sleep)
    still = missing_files(preset)
    if still:
        raise HubError(f"{what}: the repo at that revision has no {still[0]} (the pinned layout changed?)")
    return Path(path)


def probe(preset: Preset, timeout: float = 3.0) -> str | None:
    """None when the hub answers for `preset`'s pinned revision, else the cause in one line.

    One request (the revision's info), through huggingface_hub, so `HF_ENDPOINT` mirrors and proxies
    work; run in a daemon thread so that a hanging resolver cannot stall the caller past `timeout`.
    """
    if offline_by_env():
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import HfApi

    _sync_offline_flag()
    result: list = []

    def ask():
        try:
            HfApi(endpoint=endpoint()).model_info(preset.repo_id, revision=preset.revision, timeout=timeout)
            result.append(None)
        except Exception as err:
            result.append(describe(err))

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else "the hub did not answer in time (timeout)"
