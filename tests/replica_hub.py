"""A replica of the real hub repos the course loads, for testing the real-model path with no hub and no GPU.

`Deci/DeciDiffusion-v1-0`, `Deci/DeciDiffusion-v2-0` and `stable-diffusion-v1-5/stable-diffusion-v1-5` at
their pinned commits: the real file layout, the real JSON files where FACTS.md gives them (model_index.json,
the scheduler configs, v1's `configurations`), and tiny seeded random weights at the real 512 px sizes
(channels shrunk; every class name, config key and block pattern kept). `write_cache` lays them out as
huggingface_hub does (blobs named by their hash, snapshot files linked to them), so the loader cannot
tell the replica from a cache that `decidiff-lab fetch` filled.

Deviations, each forced by the shrinking: one attention head instead of 8 (CPU time), the flexible
U-Net's `configurations` gains `stem_channels` (Deci's class always has SD's 320-channel stem), and the
safety checker ships its config only (the course never loads it).

    python tests/replica_hub.py build/replica-hf-home     # then HF_HOME=build/replica-hf-home
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decidiff_lab import architectures as arch  # noqa: E402
from decidiff_lab.presets import HUB_PRESETS, Preset  # noqa: E402

TEXT_DIM = 32
SHRINK = 10  # 320 -> 32 channels
HEADS = 1  # 8 -> 1 attention head: on a CPU, attention over 4,096 latent cells costs heads x cells^2

DECI_MODEL_INDEX = {
    "_class_name": "DeciDiffusionPipeline", "_diffusers_version": "0.21.4",
    "feature_extractor": ["transformers", "CLIPImageProcessor"], "requires_safety_checker": True,
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"], "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}
SD_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"], "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}
_DDIM = dict(_class_name="DDIMScheduler", beta_schedule="squaredcos_cap_v2", clip_sample=False, num_train_timesteps=1000,
             prediction_type="v_prediction", rescale_betas_zero_snr=True, steps_offset=1, thresholding=False,
             timestep_spacing="trailing", trained_betas=None)
SCHEDULERS = {
    "deci-v1": {**_DDIM, "_diffusers_version": "0.20.2", "beta_start": 0.0001, "beta_end": 0.02, "set_alpha_to_one": False},
    "deci-v2": {**_DDIM, "_diffusers_version": "0.21.4", "beta_start": 0.00085, "beta_end": 0.012, "set_alpha_to_one": True},
    "sd15": {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
             "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
             "clip_sample": False},
}
FEATURE_EXTRACTOR = {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                     "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
                     "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}


def shrink_configurations(configurations: dict, sample_size: int = 64) -> dict:
    """A real `configurations` dict with every channel count divided by SHRINK (block pattern kept)."""
    c = json.loads(json.dumps(configurations))
    c["sample_size"] = sample_size
    for key in ("down_blocks_in_channels", "down_blocks_out_channels", "prev_output_channels"):
        c[key] = [ch // SHRINK for ch in c[key]]
    c.update(temb_dim=c["temb_dim"] // SHRINK, cross_attention_dim=TEXT_DIM, stem_channels=320 // SHRINK,
             num_attention_heads=HEADS)
    return c


def flexible_unet_config(configurations: dict, diffusers_version: str) -> dict:
    """flexible_unet/config.json as Deci's class writes it: `configurations` plus the stock
    UNet2DConditionModel keys it registers (SD's defaults, with sample_size and cross_attention_dim)."""
    from diffusers import UNet2DConditionModel

    stock = {k: p.default for k, p in inspect.signature(UNet2DConditionModel.__init__).parameters.items()
             if k != "self" and p.default is not inspect.Parameter.empty}
    stock.update(sample_size=configurations["sample_size"], cross_attention_dim=768,
                 block_out_channels=[320, 640, 1280, 1280],
                 down_block_types=list(stock["down_block_types"]), up_block_types=list(stock["up_block_types"]))
    stock = json.loads(json.dumps(stock, default=list))
    return {"_class_name": "FlexibleUNet2DConditionModel", "_diffusers_version": diffusers_version,
            **stock, "configurations": configurations}


def _tiny_parts(seed: int, sample_size: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**{**arch.SD15_VAE, "block_out_channels": [8, 16, 16, 16], "norm_num_groups": 4,
                           "sample_size": 8 * sample_size})
    text = CLIPTextModel(CLIPTextConfig(**{**arch.SD15_TEXT_ENCODER, "hidden_size": TEXT_DIM, "intermediate_size": 64,
                                           "num_hidden_layers": 2, "num_attention_heads": 4}))
    unet = UNet2DConditionModel(**{**arch.SD15_UNET, "sample_size": sample_size, "block_out_channels": [32, 64, 64, 64],
                                   "attention_head_dim": HEADS, "cross_attention_dim": TEXT_DIM})
    return vae.eval(), text.eval(), unet.eval()


def _saved(model, variant: str | None = None, dtype=torch.float32) -> dict[str, bytes]:
    """The files `save_pretrained` writes for `model`, by name."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "modules to keep in float32": none in these models
        model.to(dtype).save_pretrained(tmp, safe_serialization=True, **({"variant": variant} if variant else {}))
        model.to(torch.float32)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def repo_files(preset: Preset, seed: int = 0, sample_size: int = 64) -> dict[str, bytes]:
    """Every file of `preset`'s repo at its pinned commit (the replica), by path in the repo.

    `sample_size`: latent cells per side, 64 as in the real repos (512 px images)."""
    from decidiff_lab.flexible_unet import FlexibleUNet2DConditionModel

    vae, text, unet = _tiny_parts(seed, sample_size)
    files: dict[str, bytes] = {}

    def put(folder, saved):
        files.update({f"{folder}/{name}": data for name, data in saved.items()})

    put("vae", _saved(vae))
    put("text_encoder", _saved(text))
    put("unet", _saved(unet))  # Deci's repos carry a stock `unet/` too, that their pipeline throws away
    tokenizer = ROOT / "data" / "clip-tokenizer"
    put("tokenizer", {name: (tokenizer / name).read_bytes() for name in
                      ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")})
    files["scheduler/scheduler_config.json"] = json.dumps(SCHEDULERS[preset.name], indent=2).encode()
    files["feature_extractor/preprocessor_config.json"] = json.dumps(FEATURE_EXTRACTOR, indent=2).encode()
    files["safety_checker/config.json"] = json.dumps({"_name_or_path": "CompVis/stable-diffusion-safety-checker",
                                                      "architectures": ["StableDiffusionSafetyChecker"]}).encode()
    if preset.fp16_variant:
        for folder, model in (("vae", vae), ("text_encoder", text), ("unet", unet)):
            saved = _saved(model, variant="fp16", dtype=torch.float16)
            put(folder, {n: d for n, d in saved.items() if "fp16" in n})
    if preset.flexible_unet:
        real = arch.DECI_V1 if preset.name == "deci-v1" else arch.DECI_V2_RECONSTRUCTION
        configurations = shrink_configurations(real, sample_size)
        torch.manual_seed(seed + 1)
        flexible = FlexibleUNet2DConditionModel(configurations).eval()
        version = "0.20.2" if preset.name == "deci-v1" else "0.21.4"
        saved = _saved(flexible, dtype=torch.float16)  # Deci ships the U-Net-NAS in fp16
        saved["config.json"] = json.dumps(flexible_unet_config(configurations, version), indent=2).encode()
        put("flexible_unet", saved)
        files["model_index.json"] = json.dumps(DECI_MODEL_INDEX, indent=2).encode()
    else:
        files["model_index.json"] = json.dumps(SD_MODEL_INDEX, indent=2).encode()
    return files


def blob_name(path: str, data: bytes) -> str:
    """The hub's etag: sha256 for LFS files (weights), the git blob sha1 for the rest."""
    if path.endswith((".safetensors", ".bin", ".ckpt")):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_cache(hub_cache: Path, preset: Preset, files: dict[str, bytes]) -> Path:
    """Lay `files` out as huggingface_hub's cache does; returns the snapshot folder."""
    repo = Path(hub_cache) / f"models--{preset.repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / preset.revision
    for path, data in files.items():
        blob = repo / "blobs" / blob_name(path, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def build(hf_home: Path, names=tuple(HUB_PRESETS), only_needed: bool = True, sample_size: int = 64) -> Path:
    """An HF_HOME holding the replica of each preset: only what `decidiff-lab fetch` would download
    (`only_needed`), or every file of the repo."""
    from decidiff_lab.hub import needed_files

    for name in names:
        preset = HUB_PRESETS[name]
        files = repo_files(preset, sample_size=sample_size)
        if only_needed:
            files = {path: files[path] for path in needed_files(preset)}
        write_cache(Path(hf_home) / "hub", preset, files)
    return Path(hf_home)


if __name__ == "__main__":
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "modules to keep in float32: []" and shard bars, per model
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_home", nargs="?", default="build/replica-hf-home")
    parser.add_argument("--sample-size", type=int, default=64, help="latent cells per side (64: the real 512 px)")
    args = parser.parse_args()
    out = build(Path(args.hf_home), sample_size=args.sample_size)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"replica of {', '.join(HUB_PRESETS)} in {out}: {size / 2**20:.1f} MiB")
