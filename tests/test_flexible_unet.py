import json

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from decidiff_lab.flexible_unet import (FlexibleDownCell, FlexibleMidCell, FlexibleUNet2DConditionModel,
                                        validate_configurations)
from tiny_parts import TEXT_DIM


def _inputs(batch=2, side=8):
    torch.manual_seed(1)
    return torch.randn(batch, 4, side, side), torch.tensor([10, 500][:batch]), torch.randn(batch, 77, TEXT_DIM)


def _kinds(modules):
    return ["R" if isinstance(m, ResnetBlock2D) else "A" for m in modules]


def test_forward_shape_and_output_type(tiny_config):
    unet = FlexibleUNet2DConditionModel(tiny_config).eval()
    out = unet(*_inputs())
    assert out.sample.shape == (2, 4, 8, 8)
    assert torch.isfinite(out.sample).all()
    assert unet(*_inputs(), return_dict=False)[0].shape == (2, 4, 8, 8)


def test_save_load_round_trip_gives_identical_outputs(tiny_config, tmp_path):
    torch.manual_seed(0)
    unet = FlexibleUNet2DConditionModel(tiny_config).eval()
    unet.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["configurations"]["num_attention_heads"] == 2
    loaded = FlexibleUNet2DConditionModel.from_pretrained(tmp_path, use_safetensors=True).eval()
    with torch.no_grad():
        assert torch.equal(unet(*_inputs()).sample, loaded(*_inputs()).sample)


def test_loads_a_deci_style_config_with_parent_keys(tiny_config):
    # Deci's config.json also carries the parent class's keys; `configurations` wins, quietly.
    config = {"_class_name": "FlexibleUNet2DConditionModel", "configurations": tiny_config,
              "sample_size": 999, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1280}
    unet = FlexibleUNet2DConditionModel.from_config(config)
    assert unet.config.sample_size == 8 and unet.config.cross_attention_dim == TEXT_DIM


def test_state_dict_keys_follow_the_published_structure(tiny_config):
    keys = set(FlexibleUNet2DConditionModel(tiny_config).state_dict())
    for key in ("conv_in.weight", "time_embedding.linear_1.weight", "conv_out.weight",
                "down_blocks.0.modules_list.0.conv1.weight",
                "down_blocks.0.modules_list.1.transformer_blocks.0.attn2.to_k.weight",
                "down_blocks.0.modules_list.1.proj_in.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
                "mid_block.modules_list.1.norm.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
                "up_blocks.1.modules_list.0.conv_shortcut.weight"):
        assert key in keys, key
    assert not any(k.startswith("down_blocks.1.downsamplers") for k in keys)  # last block: none


@pytest.mark.parametrize("mix, expected", [(True, list("RARARR")), (False, list("RRRRAA"))])
def test_interleaving_order(mix, expected):
    cell = FlexibleDownCell(8, 8, 32, num_resnets=4, num_attentions=2, num_attention_heads=2,
                            cross_attention_dim=TEXT_DIM, add_downsample=False, last_block=True,
                            groups=4, mix_block_in_forward=mix)
    assert _kinds(cell.modules_list) == expected


def test_mid_cell_starts_with_a_resnet_then_attention_resnet_pairs():
    cell = FlexibleMidCell(8, 32, num_resnets=2, num_attentions=1, num_attention_heads=2,
                           cross_attention_dim=TEXT_DIM, add_upsample=False, groups=4)
    assert _kinds(cell.modules_list) == list("RARR")


def test_down_cell_saves_a_skip_after_each_resnet_and_after_the_downsampler():
    cell = FlexibleDownCell(8, 16, 32, num_resnets=2, num_attentions=2, num_attention_heads=2,
                            cross_attention_dim=TEXT_DIM, add_downsample=True, last_block=False, groups=4)
    seen = []
    for module in cell.modules_list:
        module.register_forward_hook(lambda m, i, o, kind=_kinds([module])[0]: seen.append((kind, o)))
    x = torch.randn(1, 8, 8, 8)
    out, skips = cell(x, torch.randn(1, 32), torch.randn(1, 77, TEXT_DIM))
    resnet_outputs = [o for kind, o in seen if kind == "R"]
    assert len(skips) == 3 and out.shape == (1, 16, 4, 4)
    assert torch.equal(skips[0], resnet_outputs[0])  # taken before the attention that follows
    assert torch.equal(skips[1], resnet_outputs[1]) and torch.equal(skips[2], out)
    last = FlexibleDownCell(8, 16, 32, num_resnets=2, num_attentions=0, num_attention_heads=2,
                            cross_attention_dim=TEXT_DIM, add_downsample=True, last_block=True, groups=4)
    assert len(last(x, torch.randn(1, 32))[1]) == 2  # last block: no skip after its downsampler


def test_up_cells_consume_exactly_the_skips_the_down_path_saved(tiny_config):
    unet = FlexibleUNet2DConditionModel(tiny_config)
    saved = 1  # conv_in's output
    for block in unet.down_blocks:
        saved += _kinds(block.modules_list).count("R") + (block.downsamplers is not None and not block.last_block)
    assert sum(len(b.resnets) for b in unet.up_blocks) == saved
    # The last ResNet of an up cell concatenates a skip with the block's *input* width.
    first_up = unet.up_blocks[1]
    assert first_up.resnets[-1].in_channels == 32 + tiny_config["down_blocks_in_channels"][0]


def test_mid_block_quirk_first_resnet_runs_twice(tiny_config):
    unet = FlexibleUNet2DConditionModel(tiny_config).eval()
    calls = []
    unet.mid_block.modules_list[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        unet(*_inputs(batch=1))
    assert len(calls) == 2


def test_runs_inside_stable_diffusion_pipeline(tiny_pipe):
    assert isinstance(tiny_pipe.unet, FlexibleUNet2DConditionModel)
    embeds = torch.randn(1, 77, TEXT_DIM)
    image = tiny_pipe(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), height=8, width=8,
                      num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 8, 8, 3)
    assert (image >= 0).all() and (image <= 1).all()


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("mid_num_resnets"), "missing key 'mid_num_resnets'"),
    (lambda c: c.update(add_upsample=[True]), "'add_upsample' has 1 entries, expected 2"),
    (lambda c: c.update(up_blocks_num_resnets=[1, 1]), "'up_blocks_num_resnets' sums to 2"),
    (lambda c: c.update(num_attention_heads=3), "num_attention_heads=3 must divide"),
])
def test_bad_configurations_name_the_key(tiny_config, edit, message):
    edit(tiny_config)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        FlexibleUNet2DConditionModel(tiny_config)


def test_configurations_must_be_a_dict():
    with pytest.raises(ValueError, match="must be a dict"):
        validate_configurations([1, 2])
