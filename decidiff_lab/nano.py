"""The nano models' architectures: one plain config each, small enough for a 2-core CPU.

Same classes as the real pipelines (diffusers `AutoencoderKL`, `UNet2DConditionModel`, our
`FlexibleUNet2DConditionModel`, transformers' `CLIPModel`), scaled to 64x64 images:

* VAE: SD's factor 8 (64x64x3 -> 8x8x4). Probes here: U-Nets on 8x8 latents learn object
  placement in minutes, on 16x16 (factor 4) they stayed at chance for 43 minutes.
* CLIP: text + vision towers, 77 positions and the real 49,408-token BPE vocabulary.
* nano-sd: SD 1.5's block pattern (cross-attention at 8x8 and 4x4 and in the 2x2 mid block,
  none in the deepest down and up blocks; 2 ResNets per down block, 3 per up block) on three
  levels, so the 32x32 phase (4x4 latents) still fits.
* nano-deci: a U-Net-NAS point with fewer ResNets and attentions, chosen by the
  latency-budgeted search in `decidiff_lab.search` (see data/README.md for the numbers).
"""

from __future__ import annotations

from .architectures import flexible_config

IMAGE_SIZE = 64
LOW_RES = 32  # phase 1 of the recipe

VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
    block_out_channels=(32, 64, 96, 96), sample_size=IMAGE_SIZE,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)

TEXT_DIM = 128
CLIP_TEXT = dict(vocab_size=49408, hidden_size=TEXT_DIM, intermediate_size=256, num_hidden_layers=3,
                 num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                 pad_token_id=49407)
CLIP_VISION = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=128, intermediate_size=256,
                   num_hidden_layers=3, num_attention_heads=4)
CLIP_PROJECTION_DIM = 128

UNET_SD = dict(
    sample_size=IMAGE_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(64, 128, 128), attention_head_dim=4, cross_attention_dim=TEXT_DIM,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=16,
)


def deci_config(down_resnets=(1, 1, 1), down_attentions=(1, 1, 0), up_attentions=(0, 1, 1),
                channels=(64, 128, 128), mid_attentions=1) -> dict:
    """A nano U-Net-NAS configuration on nano-sd's channels (one point of the search)."""
    return flexible_config(
        channels=channels, down_resnets=down_resnets, down_attentions=down_attentions,
        up_attentions=up_attentions, mid_attentions=mid_attentions, num_attention_heads=4,
        cross_attention_dim=TEXT_DIM, sample_size=IMAGE_SIZE // 8, stem_channels=channels[0],
        norm_num_groups=16,
    )


# The search's pick on the 2-core CPU (CFG batch 2, 8x8 latents): one ResNet per down block and
# attention only at the 4x4 level and in the mid block: ~12 ms per step vs nano-sd's ~27 ms.
UNET_DECI = deci_config(down_attentions=(0, 1, 0), up_attentions=(0, 1, 0))

# Noise schedules and objectives: SD 1.5's for nano-sd, DeciDiffusion 2.0's for nano-deci.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                   prediction_type="epsilon")
DECI_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")

# Denoising steps each nano pipeline runs by default: nano-deci Deci 2.0's 16 squeezed to 10, nano-sd 16.
DEFAULT_STEPS = {"nano-sd": 16, "nano-deci": 10}

# Classifier-free guidance for the nano pipelines, far below SD's 7.5: swept with
# `decidiff-lab evaluate --guidance` (data/README.md), their accuracy falls above ~4 (over-saturated,
# misshapen objects) and at 1 (no guidance).
GUIDANCE = 2.5
