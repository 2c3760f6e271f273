"""Full-size architecture configs: SD 1.5's parts and the U-Net-NAS configurations.

Everything here is a plain dict, so the accounting module can build the models on the
`meta` device (no weights allocated) and notebooks can print and edit them.

The SD 1.5 dicts are the published `config.json` values (stable-diffusion-v1-5). Deci's exact
NAS configs are not public in text form; `DECI_V1_RECONSTRUCTION` and
`DECI_V2_RECONSTRUCTION` are *our reconstructions*: SD 1.5's channels with fewer ResNets
and attentions where they cost the most FLOPs, sized to match the published U-Net totals
(814,746,884 parameters for v1, ~525 M for v2). They are labelled as such wherever shown.
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

# Reconstruction (not Deci's config): SD's ResNets, but attention thinned where it costs most:
# one instead of two (down) or three (up) at 64x64, where self-attention is quadratic in
# 4,096 tokens, and one fewer in the 16x16 up block. 814,575,044 params (published: 814,746,884).
DECI_V1_RECONSTRUCTION = flexible_config(
    down_resnets=(2, 2, 2, 2), down_attentions=(1, 2, 2, 0), up_attentions=(0, 2, 3, 0),
)

# Reconstruction (not Deci's config): v2's smaller U-Net: one ResNet per down block (so two
# per up block), one attention each at 32x32 and 16x16 only. 527,796,804 params (published: ~525 M).
DECI_V2_RECONSTRUCTION = flexible_config(
    down_resnets=(1, 1, 1, 1), down_attentions=(0, 1, 1, 0), up_attentions=(0, 1, 1, 0),
)
