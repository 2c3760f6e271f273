import time

import pytest
import torch
from diffusers import StableDiffusionPipeline

from decidiff_lab import hub, loading
from decidiff_lab.errors import UserError
from decidiff_lab.flexible_unet import FlexibleUNet2DConditionModel
from decidiff_lab.presets import HUB_PRESETS, REVISIONS, Preset, get_preset


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown preset 'deci-v3'; valid presets: sd15, deci-v1, deci-v2"):
        get_preset("deci-v3")


def test_every_hub_preset_has_a_pinned_revision_recorded_in_one_place():
    for preset in HUB_PRESETS.values():
        assert preset.revision == REVISIONS[preset.repo_id]
    assert get_preset("sd15").repo_id == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_hub_check_is_instant_when_offline_by_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert hub.probe(get_preset("deci-v2")) == "HF_HUB_OFFLINE is set"
    assert time.perf_counter() - start < 1  # no request: a network call would wait out its 3 s timeout


def test_hub_check_never_outlasts_its_timeout(monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "model_info", lambda *a, **k: time.sleep(30))
    start = time.perf_counter()
    assert hub.probe(get_preset("deci-v2"), timeout=0.3) == "the hub did not answer in time (timeout)"
    assert time.perf_counter() - start < 5  # far below the hang's 30 s, with room for a busy machine


def test_uncached_hub_preset_offline_says_how_to_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(UserError, match="decidiff-lab fetch deci-v2"):
        loading.load_pipeline("deci-v2", device="cpu", verbose=False)
    assert time.perf_counter() - start < 10


def test_loads_a_local_flexible_pipeline_folder(tmp_path, tiny_pipe, capsys):
    original = tiny_pipe
    original.save_pretrained(tmp_path)
    preset = Preset("tiny", "test", local_dir=tmp_path, flexible_unet=True)
    pipe = loading.load_pipeline(preset, device="cpu")
    assert "Using tiny" in capsys.readouterr().out
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.unet, FlexibleUNet2DConditionModel)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(original, name).state_dict(), getattr(pipe, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    image = pipe("a red circle on the left", height=8, width=8, num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 8, 8, 3)


def test_a_folder_that_is_not_a_pipeline_is_a_clear_error(tmp_path):
    preset = Preset("empty", "test", local_dir=tmp_path, flexible_unet=True)
    with pytest.raises(UserError, match="is not a diffusers pipeline folder"):
        loading.load_pipeline(preset, device="cpu", verbose=False)


def test_resolved_commit_reads_the_snapshot_folder():
    class Fake:
        name_or_path = "/cache/models--Deci--DeciDiffusion-v2-0/snapshots/0123456789abcdef/flexible_unet"
        config = {}
    assert loading.resolved_commit(Fake()) == "0123456789abcdef"
