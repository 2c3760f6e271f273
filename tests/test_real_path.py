"""The real-model path, run against the replica of the real hub repos (tests/replica_hub.py): what a learner
on a GPU gets, minus the weights' numerics."""

import json

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

from decidiff_lab import hub, loading
from decidiff_lab.errors import UserError
from decidiff_lab.flexible_unet import FlexibleUNet2DConditionModel
from decidiff_lab.generate import generate
from decidiff_lab.presets import HUB_PRESETS, get_preset
from decidiff_lab.schedulers import SqueezedDPMSolverMultistepScheduler

DECI_V2_TIMESTEPS = [998, 936, 873, 811, 748, 686, 548, 411, 274, 137]  # FACTS.md: "10,6" on the class defaults


@pytest.fixture(scope="module")
def replica_pipes(replica_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(replica_cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield {name: loading.load_pipeline(name, device="cpu", verbose=False) for name in HUB_PRESETS}


def test_replica_snapshots_hold_exactly_what_the_loader_reads(replica_home):
    for preset in HUB_PRESETS.values():
        folder = hub.snapshot_dir(preset)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        assert files == sorted(hub.needed_files(preset))
        assert not (folder / "unet").exists() or preset.name == "sd15"  # Deci's unused 3.4 GB unet/: never
        assert all(p.is_symlink() for p in folder.rglob("*") if p.is_file())  # as huggingface_hub lays it out


def test_deci_repos_declare_ddim_but_deci_v2_samples_with_its_squeezed_dpm(replica_home, replica_pipes):
    index = json.loads((hub.snapshot_dir(get_preset("deci-v2")) / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    scheduler = replica_pipes["deci-v2"].scheduler
    assert type(scheduler) is SqueezedDPMSolverMultistepScheduler and scheduler.config.squeeze_mode == "10,6"
    assert scheduler.config.timestep_spacing == "linspace"  # class default, not the DDIM's "trailing"
    scheduler.set_timesteps(16)
    assert scheduler.timesteps.tolist() == DECI_V2_TIMESTEPS


def test_deci_v1_keeps_its_trailing_ddim_with_zero_terminal_snr(replica_pipes):
    scheduler = replica_pipes["deci-v1"].scheduler
    assert type(scheduler) is DDIMScheduler
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr
    assert scheduler.config.timestep_spacing == "trailing"
    assert get_preset("deci-v1").sampling == {"steps": 30, "guidance_scale": 7.5, "guidance_rescale": 0.7}


def test_sd15_runs_dpm_solver_on_its_own_noise_schedule(replica_pipes):
    scheduler = replica_pipes["sd15"].scheduler
    assert type(scheduler) is DPMSolverMultistepScheduler
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.prediction_type == "epsilon"
    assert get_preset("sd15").sampling["steps"] == 16


def test_pipelines_are_built_with_their_unet(replica_pipes):
    for name, pipe in replica_pipes.items():
        assert isinstance(pipe, StableDiffusionPipeline)
        assert isinstance(pipe.unet, FlexibleUNet2DConditionModel) == name.startswith("deci")
        assert pipe._is_unet_config_sample_size_int  # what `pipe(prompt)` without height/width relies on
        assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 512


@pytest.mark.slow
def test_the_blog_posts_plain_call_runs_ten_unet_steps_on_deci_v2(replica_pipes):
    pipe = replica_pipes["deci-v2"]
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        image = pipe("A photo of an astronaut riding a horse on Mars", num_inference_steps=16).images[0]
    finally:
        hook.remove()
    assert image.size == (512, 512) and len(calls) == 10


@pytest.mark.parametrize("name", ["deci-v1", "sd15"])
def test_generate_with_each_presets_sampling_defaults(replica_pipes, name):
    preset = get_preset(name)
    sampling = {**preset.sampling, "steps": 2}  # the defaults but the step count: CPU time
    images = generate(replica_pipes[name], "A big owl with bright shinning eyes", **sampling, seed=0)
    assert images.shape == (1, 512, 512, 3)


def test_load_prints_the_pinned_commit_and_the_sampler(replica_home, capsys):
    loading.load_pipeline("deci-v2", device="cpu")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("Using deci-v2 (Deci/DeciDiffusion-v2-0@82c0da63ed) on cpu, float32")
    assert "sampler SqueezedDPMSolverMultistepScheduler '10,6', 10 steps" in line


def test_auto_on_a_gpu_with_the_replica_cache_picks_the_real_pair_without_a_request(replica_home, monkeypatch):
    monkeypatch.setattr(hub, "probe", lambda *a, **k: pytest.fail("a complete cache needs no hub request"))
    deci, sd, why = loading.comparison_pair("auto", device="cuda")
    assert (deci.name, sd.name) == ("deci-v2", "sd15")
    assert "every file of deci-v2 and sd15 is in the local cache" in why


def test_a_corrupt_file_in_the_cache_is_a_one_line_error(replica_cache, tmp_path, monkeypatch):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(replica_cache, home, symlinks=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = hub.snapshot_dir(get_preset("deci-v2")) / "flexible_unet" / "diffusion_pytorch_model.safetensors"
    data = target.read_bytes()
    target.unlink()
    target.write_bytes(data[: len(data) // 2])  # a download cut in half
    with pytest.raises(UserError, match="truncated weights file .*flexible_unet"):
        loading.load_pipeline("deci-v2", device="cpu", verbose=False)


def test_offline_without_a_cache_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"not in the local cache .*decidiff-lab fetch sd15"):
        loading.load_pipeline("sd15", device="cpu", verbose=False)


def test_fp16_on_the_replica_keeps_every_component_in_one_dtype(replica_home):
    pipe = loading.load_pipeline("sd15", device="cpu", dtype=torch.bfloat16, verbose=False)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}


@pytest.mark.slow
def test_doctor_smoke_checks_keys_params_bytes_and_the_image(replica_home, monkeypatch, capsys):
    from decidiff_lab import doctor
    from decidiff_lab.cli import main

    ok, line = doctor.smoke_preset("deci-v2", device="cpu")
    assert not ok and line.endswith("FAILED bytes")  # the replica is not the published 1,050,614,888-byte file
    assert "U-Net keys 0 missing / 0 unexpected" in line and "512x512 image" in line
    size = (hub.snapshot_dir(get_preset("deci-v2")) / "flexible_unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    monkeypatch.setitem(doctor.PUBLISHED_UNET_BYTES, "deci-v2", size)
    assert main(["doctor", "--smoke", "deci-v2"]) == 0
    assert capsys.readouterr().out.strip().endswith(": OK")
