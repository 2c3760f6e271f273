"""Tiny random components shared by the tests: real classes, toy sizes."""

import os

import pytest
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from decidiff_lab.flexible_unet import FlexibleUNet2DConditionModel
from decidiff_lab.presets import data_dir
from tiny_parts import TEXT_DIM, tiny_flexible_config

# Under pytest-xdist two workers share the two cores: one torch thread each, or they oversubscribe
# the CPU and run several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "measurement: asserts a speed, so it needs a quiet machine: not in CI, run by "
                                       "`make bench-agreement`")


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


@pytest.fixture
def make_tiny_pipe(tiny_config, tiny_vae, tiny_text_encoder, clip_tokenizer):
    """Builds a real StableDiffusionPipeline of the tiny parts above. By default its U-Net is a FlexibleUNet
    of `tiny_config` (seeded 0, in eval mode) and its scheduler DPM-Solver++; pass `unet` or `scheduler` to
    replace either. The progress bar is off."""

    def make(unet=None, scheduler=None):
        if unet is None:
            torch.manual_seed(0)
            unet = FlexibleUNet2DConditionModel(tiny_config).eval()
        if scheduler is None:
            scheduler = DPMSolverMultistepScheduler()
        pipe = StableDiffusionPipeline(vae=tiny_vae, text_encoder=tiny_text_encoder, tokenizer=clip_tokenizer,
                                       unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


@pytest.fixture
def tiny_pipe(make_tiny_pipe):
    """The default tiny pipeline (see `make_tiny_pipe`)."""
    return make_tiny_pipe()


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
