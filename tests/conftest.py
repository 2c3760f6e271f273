"""Tiny random components shared by the tests: real classes, toy sizes."""

import os

import pytest
import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from decidiff_lab.presets import data_dir

from decidiff_lab.architectures import flexible_config

TEXT_DIM = 16

# Under pytest-xdist two workers share the two cores: one torch thread each, or they oversubscribe
# the CPU and run several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")


def tiny_flexible_config(**overrides):
    kwargs = dict(
        channels=(32, 64), down_resnets=(1, 1), down_attentions=(1, 0), up_attentions=(0, 1),
        num_attention_heads=2, cross_attention_dim=TEXT_DIM, sample_size=8,
        stem_channels=32, norm_num_groups=8,
    )
    kwargs.update(overrides)
    return flexible_config(**kwargs)


@pytest.fixture
def tiny_config():
    return tiny_flexible_config()


@pytest.fixture
def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8,), latent_channels=4, norm_num_groups=4, sample_size=8,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))


@pytest.fixture
def tiny_text_encoder():
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=TEXT_DIM, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77)
    return CLIPTextModel(config)


@pytest.fixture(scope="session")
def clip_tokenizer():
    return CLIPTokenizer.from_pretrained(data_dir() / "clip-tokenizer")


@pytest.fixture(scope="session")
def replica_cache(tmp_path_factory):
    """An HF_HOME holding the replica of the real hub repos (tests/replica_hub.py), built once."""
    import replica_hub

    return replica_hub.build(tmp_path_factory.mktemp("replica-hf-home"))


@pytest.fixture
def replica_home(replica_cache, monkeypatch):
    """The replica as this test's Hugging Face cache, offline, with `auto` undecided."""
    from decidiff_lab import loading

    monkeypatch.setenv("HF_HOME", str(replica_cache))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "_AUTO", {})
    return replica_cache
