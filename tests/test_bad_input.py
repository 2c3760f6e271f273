"""Bad input everywhere a user can reach it: one clear line that names the fix, never a deep traceback."""

import math
import os
import shutil
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from decidiff_lab.architectures import flexible_config
from decidiff_lab.cli import main
from decidiff_lab.errors import UserError
from decidiff_lab.flexible_unet import FlexibleUNet2DConditionModel
from decidiff_lab.generate import check_prompt, generate
from decidiff_lab.loading import load_pipeline
from decidiff_lab.presets import Preset, data_dir
from decidiff_lab.schedulers import SqueezedDPMSolverMultistepScheduler, check_guidance, make_scheduler

GEN = ["generate", "a red circle on the left", "--preset", "nano-deci"]

# (argv, expected exit status, text the one stderr line must contain)
CLI_CASES = [
    (GEN + ["--steps", "0"], "steps must be a positive integer (got 0)"),
    (GEN + ["--steps", "-3"], "steps must be a positive integer (got -3)"),
    (GEN + ["--steps", "1.5"], "invalid int value: '1.5'"),
    (GEN + ["--height", "63"], "height must be a positive multiple of 8 (got 63)"),
    (GEN + ["--height", "0"], "height must be a positive multiple of 8 (got 0)"),
    (GEN + ["--width", "100"], "width must be a positive multiple of 8 (got 100)"),
    (GEN + ["--guidance", "-1"], "guidance_scale must be a finite number >= 0"),
    (GEN + ["--guidance", "nan"], "guidance_scale must be a finite number >= 0"),
    (GEN + ["--num-images", "0"], "num_images must be a positive integer (got 0)"),
    (GEN + ["--num-images", "100000"], "use at most 64 per call"),
    (["generate", "x", "--preset", "sd16"], "unknown preset 'sd16'; valid presets: sd15"),
    (GEN + ["--out", "/no/such/dir/out.png"], "--out directory /no/such/dir does not exist"),
    (GEN + ["--out", "picture.jpg"], "--out must end in .png"),
    (["generate"], "the following arguments are required: prompt"),
    (["bench", "--steps", "ten"], "--steps takes comma-separated integers"),
    (["bench", "--steps", "16,0"], "--steps must be positive"),
    (["bench", "--repeats", "0"], "--repeats must be at least 1"),
    (["bench", "--presets", "nano-xl"], "unknown preset 'nano-xl'"),
    (["bench", "--runtimes", "eager,tensorrt"], "unknown runtime 'tensorrt': pick one of eager, torch.compile"),
    (["evaluate", "--prompts", "0"], "--prompts must be at least 1 (got 0)"),
    (["evaluate", "--steps", "0"], "--steps must be a positive integer (got 0)"),
    (["evaluate", "--presets", "nano-xl"], "unknown preset 'nano-xl'"),
    (["evaluate", "--guidance", "high"], "--guidance takes comma-separated numbers like 2.5,5"),
    (["evaluate", "--guidance", "2,-1"], "guidance_scale must be a finite number >= 0"),
    (["arch", "sd15", "--resolution", "500"], "--resolution must be a positive multiple of 8 (got 500)"),
    (["arch", "turbo"], "unknown preset 'turbo'"),
    (["fetch", "deci-v2"], "HF_HUB_OFFLINE is set: run `decidiff-lab fetch` on a machine that can reach the hub"),
    (["fetch", "nano-sd"], "ships with the course in data/: nothing to fetch"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: command"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(c[0][-2:]) or "empty" for c in CLI_CASES])
def test_cli_bad_input(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("decidiff-lab: error: ") and message in err, err


def test_cli_out_directory_not_writable(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root ignores chmod: mock the OS's answer
    assert main(GEN + ["--out", str(tmp_path / "x.png")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_bench_skips_an_unavailable_preset_with_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-cache")
    assert main(["bench", "--presets", "deci-v2", "--steps", "10", "--repeats", "1"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("skip deci-v2: ") and "decidiff-lab fetch deci-v2" in err


@pytest.fixture(scope="module")
def nano():
    return load_pipeline("nano-deci", device="cpu", verbose=False)


API_CASES = [
    (lambda p: generate(p, "x", steps=0), "steps must be a positive integer"),
    (lambda p: generate(p, "x", steps=True), "steps must be a positive integer"),
    (lambda p: generate(p, "x", height=12), "height must be a positive multiple of 8"),
    (lambda p: generate(p, "x", guidance_scale=math.nan), "guidance_scale must be a finite number"),
    (lambda p: generate(p, "x", guidance_rescale=-0.5), "guidance_rescale must be a finite number"),
    (lambda p: generate(p, None), "a prompt must be text or a list of texts"),
    (lambda p: SqueezedDPMSolverMultistepScheduler(squeeze_mode="6,10"), "I must be smaller than N"),
    (lambda p: SqueezedDPMSolverMultistepScheduler(squeeze_mode="fast"), 'squeeze_mode must be "N,I"'),
    (lambda p: SqueezedDPMSolverMultistepScheduler(use_karras_sigmas=True), "does not support use_karras_sigmas=True"),
    (lambda p: make_scheduler("plms"), "unknown scheduler 'plms'"),
    (lambda p: check_guidance(7.5, math.inf), "guidance_rescale must be a finite number"),
    (lambda p: FlexibleUNet2DConditionModel({k: v for k, v in flexible_config().items() if k != "temb_dim"}),
     "missing key 'temb_dim'"),
    (lambda p: FlexibleUNet2DConditionModel({**flexible_config(), "add_downsample": [True]}),
     "'add_downsample' has 1 entries, expected 4"),
]


@pytest.mark.parametrize("call, message", API_CASES)
def test_api_bad_input(nano, call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        call(nano)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("prompt, warning", [
    ("", "empty prompt: generating unconditionally"),
    ("a red circle " * 30, "prompt is 92 tokens; CLIP reads 77, so the last 15 are dropped"),
    ("a red\x00 circle\x07 on the left", "control characters"),
    ("a red circle \udcff on the left", "undecodable bytes"),
    ("x" * 10_000, "CLIP reads 77"),
])
def test_prompt_warnings(nano, prompt, warning):
    with pytest.warns(UserWarning, match=warning):
        images = generate(nano, prompt, steps=2, seed=0)
    assert images.shape == (1, 64, 64, 3)


@pytest.fixture
def nano_copy(tmp_path):
    folder = tmp_path / "nano-sd"
    shutil.copytree(data_dir() / "nano-sd", folder)  # follows links: a standalone copy
    return folder, Preset("copy", "test", local_dir=folder)


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.unlink(), "missing weights: no .safetensors file in"),
    (lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), "truncated weights file"),
    (lambda f: f.write_bytes(b"\x00garbage" * 100), "corrupt weights file"),
])
def test_damaged_weights_name_the_file(nano_copy, damage, message):
    folder, preset = nano_copy
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    damage(weights)
    with pytest.raises(UserError, match=message) as info:
        load_pipeline(preset, device="cpu", verbose=False)
    assert "unet" in str(info.value)


def test_a_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(UserError, match="is not a diffusers pipeline folder"):
        load_pipeline(Preset("x", "test", local_dir=tmp_path), device="cpu", verbose=False)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=400))
def test_any_text_survives_the_prompt_path(nano, text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cleaned = check_prompt(text, nano.tokenizer)
        ids = nano.tokenizer(cleaned, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
    assert isinstance(cleaned, str) and ids.shape == (1, 77)
    with torch.no_grad():
        assert torch.isfinite(nano.text_encoder(ids)[0]).all()


def test_karras_sigmas_on_a_cosine_schedule_are_refused_before_the_pipeline(make_tiny_pipe):
    karras = make_scheduler("dpm++", noise_schedule="deci2", use_karras_sigmas=True)
    pipe = make_tiny_pipe(scheduler=karras)
    with pytest.raises(UserError, match="visits some timesteps twice at 10 steps.*use the preset's own sampler"):
        generate(pipe, "a red circle", steps=10)
    plain = make_tiny_pipe(scheduler=make_scheduler("dpm++", noise_schedule="deci2"))
    assert generate(plain, "a red circle", steps=10).shape[0] == 1  # the same schedule without Karras runs
    sd_karras = make_tiny_pipe(scheduler=make_scheduler("dpm++", noise_schedule="sd15", use_karras_sigmas=True))
    assert generate(sd_karras, "a red circle", steps=10).shape[0] == 1  # and Karras on an SD-like one does
