"""GPU memory modes, tested on CPU: only the device query is mocked, the models are real."""

import warnings
from types import SimpleNamespace

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from decidiff_lab import memory
from decidiff_lab.flexible_unet import FlexibleUNet2DConditionModel
from decidiff_lab.generate import generate


@pytest.fixture
def tiny_pipe(tiny_config, tiny_vae, tiny_text_encoder, clip_tokenizer):
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(vae=tiny_vae, text_encoder=tiny_text_encoder, tokenizer=clip_tokenizer,
                                   unet=FlexibleUNet2DConditionModel(tiny_config),
                                   scheduler=DPMSolverMultistepScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gpu(monkeypatch, gib):
    monkeypatch.setattr(memory.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(memory.torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(total_memory=gib * 2**30))


def test_cpu_needs_no_plan_and_uses_fp32():
    assert memory.memory_plan("cpu") == [] and memory.default_dtype("cpu") == torch.float32
    assert memory.default_dtype("cuda") == torch.float16


def test_small_gpus_get_every_saver_and_a_16gb_t4_none(monkeypatch):
    _gpu(monkeypatch, 8)
    assert memory.memory_plan("cuda") == ["enable_attention_slicing", "enable_vae_tiling", "enable_model_cpu_offload"]
    _gpu(monkeypatch, 15.8)  # SD 1.5 in fp16 fits a T4 at batch 1
    assert memory.memory_plan("cuda") == []


def test_place_applies_diffusers_savers_on_a_real_pipeline(monkeypatch, tiny_pipe, capsys):
    _gpu(monkeypatch, 8)
    calls = []
    monkeypatch.setattr(type(tiny_pipe), "enable_model_cpu_offload", lambda self, device=None: calls.append(device))
    memory.place(tiny_pipe, "cuda")
    assert calls == ["cuda"]  # offload replaces .to("cuda"): the pipeline stays on the CPU here
    assert tiny_pipe.vae.use_tiling
    assert "8 GB of GPU memory (< 12): enable_attention_slicing, enable_vae_tiling" in capsys.readouterr().out


def test_bad_images_are_detected():
    assert memory.is_bad_image(torch.full((1, 3, 4, 4), float("nan")))
    assert memory.is_bad_image(-torch.ones(1, 3, 4, 4))
    assert not memory.is_bad_image(torch.rand(1, 3, 4, 4))


def test_an_overflowing_fp16_vae_is_decoded_again_in_fp32(tiny_pipe):
    vae = tiny_pipe.vae
    with torch.no_grad():
        vae.post_quant_conv.weight.mul_(1e5)  # fine in fp32, inf in fp16 (max 65,504)
    vae.to(torch.float16)
    latents = torch.randn(1, 4, 4, 4, dtype=torch.float16)
    with pytest.warns(UserWarning, match="decoding again in float32"):
        images = memory.decode(vae, latents)
    assert torch.isfinite(images).all() and vae.dtype == torch.float32 and vae.config.force_upcast


def test_generate_with_a_half_precision_vae_still_gives_finite_images(tiny_pipe):
    tiny_pipe.vae.to(torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = generate(tiny_pipe, "a red circle on the left", steps=2, seed=0)
    assert images.shape == (1, 8, 8, 3)
