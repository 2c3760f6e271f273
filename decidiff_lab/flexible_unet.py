"""The U-Net-NAS of DeciDiffusion, native to diffusers.

Deci's architecture search keeps SD 1.5's U-shaped backbone (conv_in, time embedding,
conv_out) and lets every block choose its own number of ResNets and attentions. The
published model code builds three cells from one `configurations` dict:

* `FlexibleDownCell` (DownSC): ResNets and transformers interleaved, a skip state saved
  right after each ResNet, then an optional downsampler (whose output is a skip too,
  except in the last block).
* `FlexibleMidCell`: one ResNet, then the configured attentions and ResNets, optionally an
  upsampler. Quirk of the published forward pass: the first ResNet runs *twice*.
* `FlexibleUpCell` (UpSC): each ResNet pops one skip state and concatenates it; optional
  upsampler.

Module names follow the published code (`modules_list`, `downsamplers`, `upsamplers`), so
the real `flexible_unet` safetensors load by key. The whole model subclasses
`UNet2DConditionModel` and reuses its forward pass, so it drops into
`StableDiffusionPipeline` unchanged.
"""

from __future__ import annotations

import itertools

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
# diffusers loads a pipeline component named ["decidiff_lab.flexible_unet", cls] only if this
# module exposes the base class it checks against (see DiffusionPipeline's loader).
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from torch import nn

from .errors import UserError

REQUIRED_KEYS = (
    "sample_size", "cross_attention_dim", "add_upsample_mid_block", "mix_block_in_forward",
    "down_blocks_in_channels", "down_blocks_out_channels", "down_blocks_num_resnets",
    "down_blocks_num_attentions", "add_downsample", "prev_output_channels",
    "up_blocks_num_resnets", "up_blocks_num_attentions", "add_upsample", "temb_dim",
    "resnet_eps", "resnet_act_fn", "num_attention_heads", "mid_num_resnets", "mid_num_attentions",
)
PER_BLOCK_KEYS = (
    "down_blocks_in_channels", "down_blocks_out_channels", "down_blocks_num_resnets",
    "down_blocks_num_attentions", "add_downsample", "prev_output_channels",
    "up_blocks_num_resnets", "up_blocks_num_attentions", "add_upsample",
)
# Optional keys (absent from Deci's configs): their defaults are SD 1.5's, which is what the
# published model inherits from `UNet2DConditionModel`. The nano models set them.
OPTIONAL_KEYS = {"in_channels": 4, "out_channels": 4, "stem_channels": 320, "norm_num_groups": 32}


def validate_configurations(configurations: dict) -> dict:
    """Check a `configurations` dict; return it with the optional keys filled in."""
    if not isinstance(configurations, dict):
        raise UserError("configurations must be a dict (the 'configurations' entry of flexible_unet/config.json)")
    missing = [k for k in REQUIRED_KEYS if k not in configurations]
    if missing:
        raise UserError(f"flexible U-Net configurations is missing key {missing[0]!r} (missing: {', '.join(missing)})")
    n_blocks = len(configurations["down_blocks_in_channels"])
    for key in PER_BLOCK_KEYS:
        if len(configurations[key]) != n_blocks:
            raise UserError(
                f"flexible U-Net configurations key {key!r} has {len(configurations[key])} entries, "
                f"expected {n_blocks} (one per block, like down_blocks_in_channels)"
            )
    downsamplers = sum(map(bool, configurations["add_downsample"][:-1]))
    skips = 1 + sum(configurations["down_blocks_num_resnets"]) + downsamplers  # conv_in's output too
    if sum(configurations["up_blocks_num_resnets"]) != skips:
        raise UserError(
            f"flexible U-Net configurations key 'up_blocks_num_resnets' sums to "
            f"{sum(configurations['up_blocks_num_resnets'])} but the down path saves {skips} skip states "
            "(one per down ResNet, per downsampler and conv_in): each up ResNet pops one"
        )
    heads = configurations["num_attention_heads"]
    for channels in configurations["down_blocks_out_channels"]:
        if channels % heads:
            raise UserError(f"num_attention_heads={heads} must divide every block's channels (got {channels})")
    return {**OPTIONAL_KEYS, **configurations}


def _resnet(in_channels, out_channels, temb_channels, eps, act_fn, groups):
    return ResnetBlock2D(
        in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels,
        eps=eps, groups=groups, non_linearity=act_fn,
    )


def _transformer(channels, heads, cross_attention_dim, groups):
    # Fixed head count: the head size grows with the channels (SD 1.5 does the opposite).
    return Transformer2DModel(
        num_attention_heads=heads, attention_head_dim=channels // heads, in_channels=channels,
        num_layers=1, cross_attention_dim=cross_attention_dim, norm_num_groups=groups,
    )


def _order(modules: list[nn.Module], mix_block_in_forward: bool) -> list[nn.Module]:
    """Interleaved (resnet, attention, resnet, ...) or, unmixed, all ResNets first."""
    if mix_block_in_forward:
        return modules
    return sorted(modules, key=lambda m: 0 if isinstance(m, ResnetBlock2D) else 1)  # stable sort


def _run(module: nn.Module, hidden_states, temb, encoder_hidden_states, attention_mask,
         cross_attention_kwargs, encoder_attention_mask):
    if isinstance(module, ResnetBlock2D):
        return module(hidden_states, temb)
    return module(
        hidden_states, encoder_hidden_states=encoder_hidden_states,
        cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
        encoder_attention_mask=encoder_attention_mask, return_dict=False,
    )[0]


class FlexibleDownCell(nn.Module):
    """DownSC: `num_resnets` ResNets and `num_attentions` transformers, then a downsampler."""

    has_cross_attention = True  # tells UNet2DConditionModel.forward to pass the text states

    def __init__(self, in_channels, out_channels, temb_channels, num_resnets, num_attentions,
                 num_attention_heads, cross_attention_dim, add_downsample, last_block,
                 resnet_eps=1e-5, resnet_act_fn="silu", groups=32, mix_block_in_forward=True):
        super().__init__()
        self.last_block = last_block
        modules = []
        for i, (res, att) in enumerate(itertools.zip_longest([1] * num_resnets, [1] * num_attentions)):
            if res:
                cin = in_channels if i == 0 else out_channels
                modules.append(_resnet(cin, out_channels, temb_channels, resnet_eps, resnet_act_fn, groups))
            if att:
                modules.append(_transformer(out_channels, num_attention_heads, cross_attention_dim, groups))
        self.modules_list = nn.ModuleList(_order(modules, mix_block_in_forward))
        self.downsamplers = None
        if add_downsample:
            self.downsamplers = nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=1, name="op")]
            )

    def forward(self, hidden_states, temb=None, encoder_hidden_states=None, attention_mask=None,
                cross_attention_kwargs=None, encoder_attention_mask=None, **_):
        skips = ()
        for module in self.modules_list:
            hidden_states = _run(module, hidden_states, temb, encoder_hidden_states, attention_mask,
                                 cross_attention_kwargs, encoder_attention_mask)
            if isinstance(module, ResnetBlock2D):  # skip saved before the attention that follows
                skips += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            if not self.last_block:
                skips += (hidden_states,)
        return hidden_states, skips


class FlexibleMidCell(nn.Module):
    """Mid block: one ResNet, then (attention, ResNet) pairs, then an optional upsampler."""

    has_cross_attention = True

    def __init__(self, channels, temb_channels, num_resnets, num_attentions, num_attention_heads,
                 cross_attention_dim, add_upsample, resnet_eps=1e-5, resnet_act_fn="silu", groups=32,
                 mix_block_in_forward=True):
        super().__init__()
        modules = [_resnet(channels, channels, temb_channels, resnet_eps, resnet_act_fn, groups)]
        for res, att in itertools.zip_longest([1] * num_resnets, [1] * num_attentions):
            if att:
                modules.append(_transformer(channels, num_attention_heads, cross_attention_dim, groups))
            if res:
                modules.append(_resnet(channels, channels, temb_channels, resnet_eps, resnet_act_fn, groups))
        self.modules_list = nn.ModuleList(_order(modules, mix_block_in_forward))
        self.upsamplers = None
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(channels, use_conv=True, out_channels=channels)])

    def forward(self, hidden_states, temb=None, encoder_hidden_states=None, attention_mask=None,
                cross_attention_kwargs=None, encoder_attention_mask=None):
        # Faithful to the published forward: modules_list[0] runs here AND again as the loop's
        # first item, so the first ResNet is applied twice (its weights are shared).
        hidden_states = self.modules_list[0](hidden_states, temb)
        for module in self.modules_list:
            hidden_states = _run(module, hidden_states, temb, encoder_hidden_states, attention_mask,
                                 cross_attention_kwargs, encoder_attention_mask)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states)
        return hidden_states


class FlexibleUpCell(nn.Module):
    """UpSC: each ResNet concatenates one popped skip state; then an optional upsampler."""

    has_cross_attention = True

    def __init__(self, in_channels, out_channels, prev_output_channel, temb_channels, num_resnets,
                 num_attentions, num_attention_heads, cross_attention_dim, add_upsample,
                 resnet_eps=1e-5, resnet_act_fn="silu", groups=32, mix_block_in_forward=True):
        super().__init__()
        modules = []
        for i, (res, att) in enumerate(itertools.zip_longest([1] * num_resnets, [1] * num_attentions)):
            if res:
                # The last ResNet's skip comes from the level above: it has the block's input width.
                skip_channels = in_channels if i == num_resnets - 1 else out_channels
                cin = prev_output_channel if i == 0 else out_channels
                modules.append(_resnet(cin + skip_channels, out_channels, temb_channels, resnet_eps,
                                       resnet_act_fn, groups))
            if att:
                modules.append(_transformer(out_channels, num_attention_heads, cross_attention_dim, groups))
        self.modules_list = nn.ModuleList(_order(modules, mix_block_in_forward))
        self.upsamplers = None
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])

    @property
    def resnets(self) -> list[nn.Module]:
        # UNet2DConditionModel.forward hands each up block len(resnets) skip states.
        return [m for m in self.modules_list if isinstance(m, ResnetBlock2D)]

    def forward(self, hidden_states, res_hidden_states_tuple, temb=None, encoder_hidden_states=None,
                cross_attention_kwargs=None, upsample_size=None, attention_mask=None,
                encoder_attention_mask=None):
        for module in self.modules_list:
            if isinstance(module, ResnetBlock2D):
                skip, res_hidden_states_tuple = res_hidden_states_tuple[-1], res_hidden_states_tuple[:-1]
                hidden_states = torch.cat([hidden_states, skip], dim=1)
            hidden_states = _run(module, hidden_states, temb, encoder_hidden_states, attention_mask,
                                 cross_attention_kwargs, encoder_attention_mask)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states


class FlexibleUNet2DConditionModel(UNet2DConditionModel):
    """DeciDiffusion's U-Net-NAS: `UNet2DConditionModel` with flexible down/mid/up cells.

    Built from one `configurations` dict, exactly the entry of Deci's `flexible_unet/config.json`;
    the optional keys `in_channels`, `out_channels`, `stem_channels` and `norm_num_groups`
    default to SD 1.5's values.
    """

    @register_to_config
    def __init__(self, configurations: dict):
        c = validate_configurations(configurations)
        groups = c["norm_num_groups"]
        # The parent supplies conv_in, the time embedding and conv_out; a one-level skeleton
        # keeps its throw-away blocks tiny (Deci's code builds SD's full default and discards it).
        super().__init__(
            sample_size=c["sample_size"], in_channels=c["in_channels"], out_channels=c["out_channels"],
            down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), mid_block_type=None,
            block_out_channels=(c["stem_channels"],), layers_per_block=1, norm_num_groups=groups,
            cross_attention_dim=c["cross_attention_dim"], time_embedding_dim=c["temb_dim"],
        )
        common = dict(
            temb_channels=c["temb_dim"], num_attention_heads=c["num_attention_heads"],
            cross_attention_dim=c["cross_attention_dim"], resnet_eps=c["resnet_eps"],
            resnet_act_fn=c["resnet_act_fn"], groups=groups, mix_block_in_forward=c["mix_block_in_forward"],
        )
        n = len(c["down_blocks_in_channels"])
        self.down_blocks = nn.ModuleList(
            FlexibleDownCell(
                c["down_blocks_in_channels"][i], c["down_blocks_out_channels"][i],
                num_resnets=c["down_blocks_num_resnets"][i], num_attentions=c["down_blocks_num_attentions"][i],
                add_downsample=c["add_downsample"][i], last_block=i == n - 1, **common,
            )
            for i in range(n)
        )
        self.mid_block = FlexibleMidCell(
            c["down_blocks_out_channels"][-1], num_resnets=c["mid_num_resnets"],
            num_attentions=c["mid_num_attentions"], add_upsample=c["add_upsample_mid_block"], **common,
        )
        ins, outs = c["down_blocks_in_channels"][::-1], c["down_blocks_out_channels"][::-1]
        self.up_blocks = nn.ModuleList(
            FlexibleUpCell(
                ins[i], outs[i], c["prev_output_channels"][i], num_resnets=c["up_blocks_num_resnets"][i],
                num_attentions=c["up_blocks_num_attentions"][i], add_upsample=c["add_upsample"][i], **common,
            )
            for i in range(n)
        )
        self.num_upsamplers = sum(map(bool, c["add_upsample"])) + bool(c["add_upsample_mid_block"])

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # `configurations` is the single source of truth; the keys the parent class registers
        # (and that Deci's own config.json carries) are derived from it, so drop them quietly.
        config_dict = {k: v for k, v in config_dict.items() if k == "configurations" or k.startswith("_")}
        return super().extract_init_dict(config_dict, **kwargs)
