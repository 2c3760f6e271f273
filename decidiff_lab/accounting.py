"""Architecture accounting on the `meta` device: parameters and FLOPs, no weights allocated.

A full-size SD 1.5 U-Net built on `meta` costs no memory and a fraction of a second, and
`torch.utils.flop_counter` counts its FLOPs from shapes alone, so a laptop can audit
DeciDiffusion and SD 1.5 exactly.
"""

from __future__ import annotations

import json

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel

from .flexible_unet import FlexibleUNet2DConditionModel
from .presets import Preset, get_preset


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# safetensors' names for the dtypes a checkpoint is saved in.
_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def safetensors_nbytes(module: torch.nn.Module, dtype=torch.float16) -> int:
    """The exact size of the file diffusers' `save_pretrained` writes for `module` in `dtype`.

    That is `safetensors.torch.save_file(state_dict, path, metadata={"format": "pt"})`, computed
    from names and shapes only, so it works on `meta`: 8 bytes (the header's length), a compact
    JSON header (`__metadata__` first, then the tensors sorted by name, all of one dtype here)
    padded with spaces to a multiple of 8, then the raw data.
    """
    itemsize = torch.empty(0, dtype=dtype).element_size()
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tensor in sorted(module.state_dict().items()):
        size = tensor.numel() * itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    length = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode())
    return 8 + -(-length // 8) * 8 + offset


def build_unet(config: dict, device="meta") -> UNet2DConditionModel:
    """A U-Net from a config: a flexible `configurations` dict or `UNet2DConditionModel` kwargs."""
    with torch.device(device):
        if "configurations" in config or "down_blocks_num_resnets" in config:
            return FlexibleUNet2DConditionModel(config.get("configurations", config))
        return UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})


def _configs(preset: Preset) -> tuple[dict, dict, dict]:
    if preset.is_nano:  # read the shipped config.json files, never the weights
        folder = preset.local_dir
        unet = FlexibleUNet2DConditionModel if preset.flexible_unet else UNet2DConditionModel
        text = CLIPTextConfig.from_pretrained(folder / "text_encoder").to_dict()
        return (dict(unet.load_config(folder / preset.unet_subfolder)),
                dict(AutoencoderKL.load_config(folder / "vae")), text)
    return preset.unet_config, preset.vae_config, preset.text_encoder_config


def build_components(preset: str | Preset, device="meta") -> dict[str, torch.nn.Module]:
    """The preset's U-Net, VAE and CLIP text encoder, built empty on `device`."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    unet_cfg, vae_cfg, text_cfg = _configs(preset)
    with torch.device(device):
        vae = AutoencoderKL(**{k: v for k, v in vae_cfg.items() if not k.startswith("_")})
        text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    return {"unet": build_unet(unet_cfg, device), "vae": vae, "text_encoder": text}


def unet_flops(unet: torch.nn.Module, resolution: int = 512, batch: int = 1, vae_factor: int = 8,
               per_block: bool = False):
    """FLOPs of one U-Net forward (one denoising step) for `batch` images of `resolution` pixels.

    Counted on a `meta` copy built from `unet.config`: no memory, and attention is counted
    (on CPU, real tensors take a fused SDPA kernel that the FLOP counter has no formula for).
    Classifier-free guidance runs the U-Net on batch 2 per image: pass `batch=2` for that.
    With `per_block`, also return {"down_blocks.0": FLOPs, ..., "mid_block": ..., ...}.
    """
    meta = unet if next(unet.parameters()).is_meta else build_unet(dict(unet.config))
    side = resolution // vae_factor
    cfg = meta.config
    with torch.device("meta"):
        sample = torch.zeros(batch, cfg.in_channels, side, side)
        text = torch.zeros(batch, 77, cfg.cross_attention_dim)
        timestep = torch.full((batch,), 999)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(sample, timestep, text)
    if not per_block:
        return counter.get_total_flops()
    counts = counter.get_flop_counts()
    prefix = type(meta).__name__ + "."
    return counter.get_total_flops(), {name: sum(counts.get(prefix + name, {}).values()) for name in block_names(meta)}


def block_names(unet) -> list[str]:
    """"down_blocks.0", ..., "mid_block", "up_blocks.0", ...: the U-Net's blocks in run order."""
    return ([f"down_blocks.{i}" for i in range(len(unet.down_blocks))] + ["mid_block"]
            + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))])


def _block_row(name: str, block: torch.nn.Module) -> dict:
    resnets = [m for m in block.modules() if isinstance(m, ResnetBlock2D)]
    attentions = [m for m in block.modules() if isinstance(m, Transformer2DModel)]
    return {
        "block": name,
        "in_channels": resnets[0].in_channels if resnets else None,
        "out_channels": resnets[-1].out_channels if resnets else None,
        "resnets": len(resnets),
        "attentions": len(attentions),
        "params": count_parameters(block),
    }


def unet_block_table(unet: torch.nn.Module, resolution: int = 512) -> list[dict]:
    """One row per down/mid/up block: channels, ResNets, attentions, params, GFLOPs (batch 1)."""
    _, flops = unet_flops(unet, resolution, per_block=True)
    return [{**_block_row(name, unet.get_submodule(name)), "gflops": flops[name] / 1e9}
            for name in block_names(unet)]


def architecture_summary(preset: str | Preset, resolution: int = 512) -> dict:
    """Parameters per component and U-Net GFLOPs per step (batch 1) for one preset."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    components = build_components(preset)
    summary = {name: count_parameters(m) for name, m in components.items()}
    summary["total"] = sum(summary.values())
    summary["unet_gflops_per_step"] = unet_flops(components["unet"], resolution) / 1e9
    summary["unet_fp16_safetensors_bytes"] = safetensors_nbytes(components["unet"])
    summary["resolution"] = resolution
    summary["unet_is_reconstruction"] = preset.reconstruction
    return summary
