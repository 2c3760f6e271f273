"""Text helpers: token tables, embeddings, captured warnings, similarity, the cross-attention recorder."""

import logging

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from decidiff_lab import text_tools
from decidiff_lab.flexible_unet import FlexibleUNet2DConditionModel
from decidiff_lab.shapes import make_dataset
from tiny_parts import TEXT_DIM

PROMPT = "a photo of an astronaut riding a horse on Mars"
IDS = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]


def test_token_table(clip_tokenizer):
    table = text_tools.token_table(clip_tokenizer, PROMPT)
    assert [row[1] for row in table] == IDS
    assert [row[0] for row in table] == list(range(len(IDS)))
    assert table[0][2] == "<|startoftext|>" and table[-1][2] == "<|endoftext|>"
    assert table[1][2] == "a</w>"
    long = text_tools.token_table(clip_tokenizer, "a red circle " * 40, truncation=True)
    assert len(long) == 77 and long[-1][1] == 49407


def test_word_pieces(clip_tokenizer):
    assert text_tools.word_pieces(clip_tokenizer, "a red circle on the left") == ["a", "red", "circle", "on",
                                                                                 "the", "left"]


def test_encode_text_shapes_and_causal_prefix(clip_tokenizer, tiny_text_encoder):
    states, pooled = text_tools.encode_text(clip_tokenizer, tiny_text_encoder, ["a red circle", "a red square"])
    assert states.shape == (2, 77, TEXT_DIM) and pooled.shape == (2, TEXT_DIM)
    # causal mask: the shared prefix (start, "a", "red") has identical states
    assert torch.allclose(states[0, :3], states[1, :3], atol=1e-6)
    assert not torch.allclose(states[0, 3], states[1, 3])
    # pooled = the state at the end token (position 4 here)
    assert torch.allclose(pooled, states[:, 4], atol=1e-6)
    single, _ = text_tools.encode_text(clip_tokenizer, tiny_text_encoder, "a red circle")
    assert single.shape == (1, 77, TEXT_DIM)


def test_captured_warnings_catch_the_pipeline_truncation(tiny_pipe):
    before = list(logging.getLogger("diffusers").handlers)
    with text_tools.captured_warnings() as messages:
        tiny_pipe.encode_prompt("a red circle on the left " * 20, "cpu", 1, False)
    assert len(messages) == 1 and "truncated" in messages[0] and "77 tokens" in messages[0]
    assert logging.getLogger("diffusers").handlers == before
    with text_tools.captured_warnings() as messages:
        tiny_pipe.encode_prompt("a red circle on the left", "cpu", 1, False)
    assert messages == []


def test_similarity_matrix(clip_tokenizer):
    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=77),
                        vision_config=dict(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2),
                        projection_dim=8)
    clip = CLIPModel(config).eval()
    data = make_dataset(3, seed=0, size=16)
    sim = text_tools.similarity_matrix(clip, clip_tokenizer, data.images, data.captions + ["a red circle on the left"])
    assert sim.shape == (3, 4) and np.all(np.abs(sim) <= 1 + 1e-5)
    resized = text_tools.similarity_matrix(clip, clip_tokenizer, make_dataset(3, seed=0, size=32).images, data.captions)
    assert resized.shape == (3, 3)  # larger images are resized to the CLIP's input size


def test_placement_variants_change_only_the_place():
    single = text_tools.placement_variants("a red circle on the left")
    assert single[0] == "a red circle on the left" and len(set(single)) == 5
    assert all(v.startswith("a red circle ") for v in single)
    pair = text_tools.placement_variants("a blue square above an orange triangle")
    assert pair == ["a blue square above an orange triangle", "a blue square to the left of an orange triangle",
                    "a blue square to the right of an orange triangle", "a blue square below an orange triangle"]
    with pytest.raises(ValueError):
        text_tools.placement_variants("a cat")


def test_shipped_nano_clip_tells_positions_apart(clip_tokenizer):
    """The frozen text encoder must encode placement, or no U-Net trained on it can learn it."""
    from decidiff_lab.loading import load_nano_clip

    data = make_dataset(60, seed=7, split="test", pair_fraction=0.0)  # single objects: five positions, chance 20%
    accuracy = text_tools.placement_accuracy(load_nano_clip(), clip_tokenizer, data.images, data.captions)
    assert accuracy >= 0.75, f"nano CLIP single-object placement accuracy {accuracy:.2f} (chance 0.20)"


def _unet_inputs(tiny_config, batch):
    torch.manual_seed(0)
    unet = FlexibleUNet2DConditionModel(tiny_config).eval()
    return unet, torch.randn(batch, 4, 8, 8), torch.tensor(10), torch.randn(batch, 77, TEXT_DIM)


def test_recorder_maps_are_distributions_and_outputs_unchanged(tiny_config):
    unet, x, t, text = _unet_inputs(tiny_config, batch=4)
    with torch.no_grad():
        reference = unet(x, t, text).sample
        with text_tools.CrossAttentionRecorder(unet, cfg=True) as recorder:
            recorded = unet(x, t, text).sample
    assert torch.allclose(reference, recorded, atol=1e-5)
    assert recorder.calls == 3 and recorder.sides == [4, 8]  # down 8x8, mid 4x4, up 8x8
    maps = recorder.maps(16)
    assert maps.shape == (2, 77, 16, 16)  # the conditional half of the CFG batch
    assert torch.allclose(maps.sum(1), torch.ones(2, 16, 16), atol=1e-4)  # over tokens: probabilities


def test_recorder_restores_processors_even_after_an_error(tiny_config):
    unet, x, t, text = _unet_inputs(tiny_config, batch=1)
    original = unet.attn_processors
    with pytest.raises(RuntimeError, match="boom"):
        with text_tools.CrossAttentionRecorder(unet, cfg=False) as recorder:
            assert sum(type(p).__name__ == "_RecordingProcessor" for p in unet.attn_processors.values()) == 3
            with torch.no_grad():
                unet(x, t, text)
            raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is v for k, v in original.items())
    assert recorder.maps(8).shape == (1, 77, 8, 8)
    with pytest.raises(RuntimeError, match="nothing recorded"):
        text_tools.CrossAttentionRecorder(unet).maps(8)


def test_figures():
    import matplotlib.pyplot as plt

    fig = text_tools.matrix_figure(np.eye(2), ["a", "b"], ["x", "y"], title="t")
    assert len(fig.axes) == 1
    image = np.zeros((16, 16, 3), np.uint8)
    fig2 = text_tools.attention_figure(image, np.random.default_rng(0).random((3, 16, 16)), ["a", "red", "circle"])
    assert len(fig2.axes) == 4
    plt.close(fig)
    plt.close(fig2)


def test_shipped_nano_clip_tells_relations_apart(clip_tokenizer):
    """Its relations stage must teach the text encoder *which* object is where, or pairs come out in random order."""
    from decidiff_lab.loading import load_nano_clip

    data = make_dataset(60, seed=8, split="test", pair_fraction=1.0)  # two objects: four arrangements, chance 25%
    accuracy = text_tools.placement_accuracy(load_nano_clip(), clip_tokenizer, data.images, data.captions)
    assert accuracy >= 0.5, f"nano CLIP two-object relation accuracy {accuracy:.2f} (chance 0.25)"


def test_recorder_layer_maps_per_layer(tiny_config):
    unet, x, t, text = _unet_inputs(tiny_config, batch=2)
    with torch.no_grad(), text_tools.CrossAttentionRecorder(unet, cfg=True) as recorder:
        unet(x, t, text)
        unet(x, t, text)  # two "steps": layer maps are the mean over both, not the sum
    layers = recorder.layer_maps()
    assert len(layers) == 3 and all(name.endswith(".attn2") for name in layers)
    assert [m.shape[-1] for m in layers.values()] == [8, 4, 8]  # call order: down, mid, up
    assert all(torch.allclose(m.sum(1), torch.ones(1, *m.shape[-2:]), atol=1e-4) for m in layers.values())
    assert list(recorder.layer_maps(4)) == [n for n in layers if n.startswith("mid_block")]
    # the mean over layers of the same resolution equals maps() restricted to it
    eight = torch.stack(list(recorder.layer_maps(8).values())).mean(0)
    assert torch.allclose(eight, recorder.sums[8] / 4, atol=1e-6)
    with pytest.raises(text_tools.UserError, match="no cross-attention at 2x2"):
        recorder.layer_maps(2)
    import matplotlib.pyplot as plt

    fig = text_tools.layer_attention_figure(np.zeros((16, 16, 3), np.uint8), {n: m[0, 1:3] for n, m in layers.items()},
                                            ["a", "red"])
    assert len(fig.axes) == 3 * 3
    plt.close(fig)
    with pytest.raises(text_tools.UserError):
        text_tools.layer_attention_figure(np.zeros((16, 16, 3), np.uint8), {}, ["a"])


def test_circular_padding_removes_the_only_positional_signal(tiny_config):
    unet, _, t, text = _unet_inputs(tiny_config, batch=1)
    flat = torch.full((1, 4, 8, 8), 0.5)
    spread = lambda out: (out - out.mean((2, 3), keepdim=True)).abs().max().item()
    with torch.no_grad():
        zero = unet(flat, t, text).sample
        with text_tools.circular_padding(unet) as switched:
            wrapped = unet(flat, t, text).sample
        restored = unet(flat, t, text).sample
    assert switched > 0 and spread(zero) > 1e-3 and spread(wrapped) < 1e-5  # no padding, no "where"
    assert torch.equal(restored, zero)
    assert all(m.padding_mode == "zeros" for m in unet.modules() if isinstance(m, torch.nn.Conv2d))
    with pytest.raises(text_tools.UserError, match="no zero-padded Conv2d"):
        with text_tools.circular_padding(torch.nn.Linear(2, 2)):
            pass
