"""The shipped nano models: they load offline with stock classes, generate, and train."""

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from PIL import Image

from decidiff_lab import cli, nano
from decidiff_lab.flexible_unet import FlexibleUNet2DConditionModel
from decidiff_lab.generate import generate
from decidiff_lab.loading import load_nano_clip, load_pipeline, resolve_preset
from decidiff_lab.presets import data_dir
from decidiff_lab.schedulers import SqueezedDPMSolverMultistepScheduler
from decidiff_lab.shapes import make_dataset, to_tensor
from decidiff_lab.training.recipe import Recipe
from decidiff_lab.training.unet import build_nano_unet, train_unet_phase

DATA = data_dir()


@pytest.fixture(scope="module")
def nano_deci():
    return load_pipeline("nano-deci", device="cpu", verbose=False)


def test_data_folder_fits_the_budget():
    total = sum(f.stat().st_size for f in DATA.rglob("*") if f.is_file() and not f.is_symlink())
    assert total <= 60 * 2**20, f"data/ holds {total / 2**20:.1f} MB"


def test_stock_diffusers_classes_open_the_folders_offline():
    sd = StableDiffusionPipeline.from_pretrained(DATA / "nano-sd", use_safetensors=True)
    deci = DiffusionPipeline.from_pretrained(DATA / "nano-deci", use_safetensors=True)  # decidiff_lab imported
    assert isinstance(deci.unet, FlexibleUNet2DConditionModel)
    assert isinstance(deci.scheduler, SqueezedDPMSolverMultistepScheduler)
    # DeciDiffusion keeps SD's VAE and text encoder: the very same weights.
    for name in ("vae", "text_encoder"):
        a, b = getattr(sd, name).state_dict(), getattr(deci, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_import_decidiff_lab_is_all_diffusion_pipeline_needs():
    # The model card's promise, in a fresh interpreter: no other decidiff_lab import beforehand.
    code = ("import decidiff_lab; from diffusers import DiffusionPipeline; "
            f"p = DiffusionPipeline.from_pretrained({str(DATA / 'nano-deci')!r}); "
            "print(type(p.unet).__name__, type(p.scheduler).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["FlexibleUNet2DConditionModel", "SqueezedDPMSolverMultistepScheduler"]


def test_nano_models_produce_the_right_shapes(nano_deci):
    images = to_tensor(make_dataset(2, seed=5).images)
    with torch.no_grad():
        latents = nano_deci.vae.encode(images).latent_dist.mean
        assert latents.shape == (2, 4, 8, 8)  # SD's factor 8
        assert nano_deci.vae.decode(latents).sample.shape == (2, 3, 64, 64)
        tokens = nano_deci.tokenizer(["a red circle on the left"], padding="max_length", max_length=77,
                                     return_tensors="pt").input_ids
        text = nano_deci.text_encoder(tokens)[0]
        assert text.shape == (1, 77, nano.TEXT_DIM)
        out = nano_deci.unet(latents[:1], torch.tensor([500]), text).sample
    assert out.shape == (1, 4, 8, 8)


def test_auto_falls_back_to_nano_deci_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preset, why = resolve_preset("auto", device="cpu")
    assert preset.name == "nano-deci" and "no GPU" in why


def test_generation_is_seeded_and_runs_the_squeezed_steps(nano_deci):
    calls = []
    hook = nano_deci.unet.register_forward_hook(lambda *a: calls.append(1))
    first = generate(nano_deci, "a red circle on the left", steps=10, guidance_scale=5.0, seed=3)
    hook.remove()
    assert len(calls) == 10 and first.shape == (1, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, generate(nano_deci, "a red circle on the left", steps=10, guidance_scale=5.0, seed=3))


def test_nano_clip_matches_images_to_their_captions():
    clip = load_nano_clip()
    data = make_dataset(16, seed=11, pair_fraction=0.0)
    tokens = load_pipeline("nano-sd", device="cpu", verbose=False).tokenizer(
        data.captions, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        logits = clip(input_ids=tokens.input_ids, pixel_values=to_tensor(data.images)).logits_per_image
    assert (logits.argmax(1) == torch.arange(16)).float().mean() > 0.3  # chance: 1/16


@pytest.mark.parametrize("preset", ["nano-sd", "nano-deci"])
def test_cli_generate_writes_a_png(tmp_path, preset, capsys, monkeypatch):
    # In-process: the command's own process adds nothing here (test_cli.py runs one for its exit status).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / f"{preset}.png"
    assert cli.main(["generate", "a blue square at the top", "--preset", preset, "--num-images", "2",
                     "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"preset {preset}" in stdout and "wrote" in stdout
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (128, 64)  # a 2-image grid
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.slow
def test_a_short_training_run_lowers_the_loss():
    unet, noise_scheduler = build_nano_unet("nano-deci")
    torch.manual_seed(0)
    latents = torch.randn(8, 4, 8, 8)  # a tiny fixed set: memorising it must lower the loss
    tensors = {"latents": latents, "caption_ids": torch.arange(8) % 2,
               "text_states": torch.randn(3, 77, nano.TEXT_DIM), "empty_id": 2}
    recipe = Recipe(unet_batch=8, unet_lr=3e-3)
    row = train_unet_phase(unet, noise_scheduler, tensors, samples=8 * 40, recipe=recipe, lr_schedule="cosine",
                           seed=0, accelerator=Accelerator(cpu=True), desc="smoke")
    assert row["steps"] == 40 and row["loss_last"] < row["loss_first"]


@pytest.mark.slow
def test_auto_on_a_gpu_with_a_hanging_hub_falls_back_at_its_timeout(monkeypatch, tmp_path):
    from huggingface_hub import HfApi

    from decidiff_lab import loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(loading, "_AUTO", {})
    monkeypatch.setattr(HfApi, "model_info", lambda *a, **k: time.sleep(30))
    start = time.perf_counter()
    preset, why = resolve_preset("auto", device="cuda")  # a GPU, but the hub never answers
    elapsed = time.perf_counter() - start
    assert preset.name == "nano-deci" and "did not answer in time" in why and "offline nano model" in why
    assert elapsed <= 10  # the probe's 3 s timeout, with room for a busy machine; the hang would take 30 s


def test_training_log_keeps_every_stage_column(tmp_path):
    from decidiff_lab.training.logs import log_row

    log = tmp_path / "log.csv"
    log_row(log, {"stage": "vae", "steps": 3, "psnr_db": 30.1})
    log_row(log, {"stage": "clip", "steps": 5, "placement_accuracy": 0.9})
    lines = log.read_text().splitlines()
    assert lines == ["stage,steps,psnr_db,placement_accuracy", "vae,3,30.1,", "clip,5,,0.9"]


@pytest.mark.slow
def test_clip_stage_logs_whether_it_tells_positions_apart(tmp_path, clip_tokenizer):
    from decidiff_lab.training.encoders import train_clip

    recipe = Recipe(clip_minutes=0.005, clip_batch=4)
    train_clip(make_dataset(8, seed=0), clip_tokenizer, recipe, tmp_path / "log.csv")
    header, row = (tmp_path / "log.csv").read_text().splitlines()
    assert header == ("stage,steps,minutes,top1_vs_batch_and_hard_negatives,single_position_accuracy,"
                      "pair_relation_accuracy")
    assert row.startswith("clip,") and all(0.0 <= float(v) <= 1.0 for v in row.split(",")[-2:])


def test_quick_recipe_trains_unets_on_the_shipped_encoders(monkeypatch, tmp_path):
    from decidiff_lab import presets
    from decidiff_lab.errors import UserError
    from decidiff_lab.training.encoders import shipped_encoders

    assert Recipe.quick().reuse_shipped_encoders and not Recipe().reuse_shipped_encoders
    vae, clip = shipped_encoders()
    assert vae.dtype == clip.dtype == torch.float32 and vae.config.latent_channels == 4
    monkeypatch.setattr(presets, "data_dir", lambda: tmp_path)
    with pytest.raises(UserError, match="no shipped VAE"):
        shipped_encoders()


def test_vae_learning_rate_decays_with_the_time_budget_not_a_step_guess():
    from decidiff_lab.training.encoders import cosine_in_time

    assert cosine_in_time(0, 0.0) == pytest.approx(0.01)  # warm-up
    assert cosine_in_time(500, 0.5) == pytest.approx(0.5)
    assert cosine_in_time(500, 1.0) == pytest.approx(0.0, abs=1e-12)  # at the deadline, whatever the step


def test_multi_positive_loss_is_cross_entropy_over_every_right_answer():
    from decidiff_lab.training.encoders import _multi_positive_loss

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 1.0]])
    one = torch.tensor([[True, False, False], [False, True, False]])
    assert _multi_positive_loss(logits, one) == pytest.approx(F.cross_entropy(logits, torch.tensor([0, 1])).item())
    both = torch.tensor([[True, False, False], [False, True, True]])  # two wordings of one meaning
    expected = (F.cross_entropy(logits[:1], torch.tensor([0])) + torch.log(torch.tensor(1 + 2 * math.e))
                - torch.log(torch.tensor(2 * math.e))) / 2
    assert _multi_positive_loss(logits, both) == pytest.approx(expected.item(), rel=1e-5)


def test_swap_roles():
    from decidiff_lab.shapes import swap_roles

    assert swap_roles("a red circle above an orange square") == "an orange square above a red circle"
    assert swap_roles("a red circle on the left") == "a red circle on the left"


@pytest.mark.slow
def test_relations_stage_trains_from_twins_and_logs_pair_placement(tmp_path, clip_tokenizer):
    from transformers import CLIPConfig, CLIPModel

    from decidiff_lab.training.encoders import train_clip_relations

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=nano.CLIP_TEXT, vision_config=nano.CLIP_VISION,
                                projection_dim=nano.CLIP_PROJECTION_DIM))
    before = clip.vision_model.embeddings.patch_embedding.weight.clone()
    recipe = Recipe(clip_relation_minutes=0.005, clip_relation_batch=4)
    train_clip_relations(clip, make_dataset(16, seed=0), clip_tokenizer, recipe, tmp_path / "log.csv")
    assert not torch.equal(before, clip.vision_model.embeddings.patch_embedding.weight)
    header, row = (tmp_path / "log.csv").read_text().splitlines()
    assert header == "stage,steps,minutes,single_position_accuracy,pair_relation_accuracy"
    values = row.split(",")
    assert values[0] == "clip-relations" and int(values[1]) >= 1
    assert all(0.0 <= float(v) <= 1.0 for v in values[3:])


def test_a_finished_stage_is_loaded_not_trained_again(tmp_path):
    # What makes train_nano resumable: the first call trains and saves, the second only loads.
    from diffusers import AutoencoderKL

    from decidiff_lab.training.encoders import resumed_stage

    calls = []

    def train():
        calls.append(1)
        return AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)

    first = resumed_stage(tmp_path / "vae", AutoencoderKL, train)
    again = resumed_stage(tmp_path / "vae", AutoencoderKL, train)
    assert len(calls) == 1 and not again.training
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
