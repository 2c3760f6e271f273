"""Full-size architecture configs: SD 1.5's parts and the U-Net-NAS configurations.

Everything here is a plain dict, so the accounting module can build the models on the
`meta` device (no weights allocated) and notebooks can print and edit them.

The SD 1.5 dicts are the published `config.json` values (stable-diffusion-v1-5). `DECI_V1` is
DeciDiffusion 1.0's *published* U-Net-NAS, the `configurations` of its `flexible_unet/config.json`
(814,746,884 parameters). DeciDiffusion 2.0's config is not public: `DECI_V2_RECONSTRUCTION` is
*our labelled reconstruction*, on v1's shape, sized to the byte count of v2's checkpoint.
"""

from __future__ import annotations

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": 8, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu",
}

SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "sample_size": 512,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "act_fn": "silu", "scaling_factor": 0.18215,
}

# CLIP ViT-L/14's text tower, as SD 1.5 ships it.
SD15_TEXT_ENCODER = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "projection_dim": 768, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
}


def flexible_config(
    channels=(320, 640, 1280, 1280),
    down_resnets=(2, 2, 2, 2),
    down_attentions=(2, 2, 2, 0),
    up_resnets=None,
    up_attentions=(0, 3, 3, 3),
    mid_resnets=1,
    mid_attentions=1,
    num_attention_heads=8,
    cross_attention_dim=768,
    sample_size=64,
    mix_block_in_forward=True,
    **optional,
) -> dict:
    """A U-Net-NAS `configurations` dict on SD's U-shaped backbone. Defaults: SD 1.5's pattern.

    `optional` takes the keys Deci's configs leave at SD 1.5's values (`stem_channels`,
    `in_channels`, `out_channels`, `norm_num_groups`); `temb_dim` follows the stem (x4).
    """
    channels = list(channels)
    if up_resnets is None:
        # Each up block pops one skip per ResNet: its level's down ResNets + one more
        # (the downsampler output below it, or conv_in's output at the top).
        up_resnets = [r + 1 for r in down_resnets][::-1]
    n = len(channels)
    stem = optional.get("stem_channels", 320)
    ins = [stem] + channels[:-1]
    rev = channels[::-1]
    return {
        "sample_size": sample_size,
        "cross_attention_dim": cross_attention_dim,
        "add_upsample_mid_block": False,
        "mix_block_in_forward": mix_block_in_forward,
        "down_blocks_in_channels": ins,
        "down_blocks_out_channels": channels,
        "down_blocks_num_resnets": list(down_resnets),
        "down_blocks_num_attentions": list(down_attentions),
        "add_downsample": [True] * (n - 1) + [False],
        # Up block i receives the previous up block's output (the mid block's, for the first).
        "prev_output_channels": [rev[0]] + rev[:-1],
        "up_blocks_num_resnets": list(up_resnets),
        "up_blocks_num_attentions": list(up_attentions),
        "add_upsample": [True] * (n - 1) + [False],
        "temb_dim": 4 * stem,
        "resnet_eps": 1e-5,
        "resnet_act_fn": "silu",
        "num_attention_heads": num_attention_heads,
        "mid_num_resnets": mid_resnets,
        "mid_num_attentions": mid_attentions,
        **optional,
    }


# SD 1.5 is one point of the search space: same parameter count (859,520,964) as its U-Net.
SD15_AS_FLEXIBLE = flexible_config()

# DeciDiffusion 1.0's published U-Net-NAS: the `configurations` entry of Deci/DeciDiffusion-v1-0's
# flexible_unet/config.json, as it is. Three levels (64 -> 32 -> 16 -> 8 latent cells), no attention at
# 64x64, the mid block at 8x8 with an upsampler: 814,746,884 parameters.
DECI_V1 = {
    "sample_size": 64, "cross_attention_dim": 768, "num_attention_heads": 8, "temb_dim": 1280,
    "resnet_eps": 1e-05, "resnet_act_fn": "silu", "mix_block_in_forward": True,
    "down_blocks_in_channels": [320, 320, 640], "down_blocks_out_channels": [320, 640, 1280],
    "down_blocks_num_resnets": [2, 2, 1], "down_blocks_num_attentions": [0, 1, 3],
    "add_downsample": [True, True, True],
    "mid_num_resnets": 4, "mid_num_attentions": 2, "add_upsample_mid_block": True,
    "prev_output_channels": [1280, 1280, 640], "up_blocks_num_resnets": [2, 3, 3],
    "up_blocks_num_attentions": [6, 3, 0], "add_upsample": [True, True, False],
}

# Reconstruction (not Deci's config): v2's is not public, but its fp16 checkpoint
# (flexible_unet/diffusion_pytorch_model.safetensors) is exactly 1,050,614,888 bytes, which pins the
# parameter count to 525.27-525.29 M. Held to v1: the three levels, channels, every down block
# downsampling, the mid block at 8x8 with its upsampler, prev_output_channels. Searched: down ResNets
# 1-4, mid ResNets 0-7 (up ResNets follow: one per skip), 0-8 attentions per block, either
# mix_block_in_forward. No config of that space hits the size exactly; this is the closest in the
# parameter bound: 525,279,044 params, 1,050,613,160 bytes (1,728 short), 669.8 GFLOPs/step at 512 px;
# with SD's VAE and CLIP, 731,993,387 in all (the card: 732 M). A byte count fixes the size, not the
# layout: it says nothing about where modules sit or what a step costs.
DECI_V2_RECONSTRUCTION = {
    **DECI_V1,
    "down_blocks_num_resnets": [4, 3, 1], "down_blocks_num_attentions": [0, 3, 0],
    "mid_num_resnets": 6, "mid_num_attentions": 0,
    "up_blocks_num_resnets": [2, 4, 5], "up_blocks_num_attentions": [0, 0, 3],
}
