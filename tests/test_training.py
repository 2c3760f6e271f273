"""The training package: one recipe, one loop, explicit seeds, resumable, and the same on 1 and 2 processes."""

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler
from pytorch_optimizer import Lamb
from safetensors.torch import load_file

from decidiff_lab import nano
from decidiff_lab.bench import cpu_threads
from decidiff_lab.errors import UserError
from decidiff_lab.training import PHASES, Recipe
from decidiff_lab.training.data import Phase
from decidiff_lab.training.evaluation import predicted_clean
from decidiff_lab.training.recipe import check_recipe, save_recipe
from decidiff_lab.training.unet import build_nano_unet, objective, train_unet

# Every phase two global batches of 8, no checker scoring: the loop, not the model, is under test.
TINY = dict(train_images=16, qualitative_images=8, curated_images=8, unet_samples=64, unet_batch=8,
            phase_fractions=[0.25] * 4, lr_warmup_steps=1, score_prompts=0, reuse_shipped_encoders=True)


def _forward_process(prediction_type):
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    gen = torch.Generator().manual_seed(0)
    return scheduler, torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_objective_is_min_snr_5_on_the_schedules_target(prediction_type):
    scheduler, x0, noise = _forward_process(prediction_type)
    t = torch.tensor([5, 500, 990])
    target, weight = objective(scheduler, x0, noise, t)
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac)  # written out by hand: diffusers' compute_snr must agree
    if prediction_type == "v_prediction":
        v = ac.sqrt().view(-1, 1, 1, 1) * noise - (1 - ac).sqrt().view(-1, 1, 1, 1) * x0
        assert torch.allclose(target, v, atol=1e-6)
        assert torch.allclose(weight, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    else:
        assert torch.equal(target, noise)
        assert torch.allclose(weight, torch.minimum(snr, torch.tensor(5.0)) / snr)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_predicted_clean_inverts_the_forward_process(prediction_type):
    scheduler, x0, noise = _forward_process(prediction_type)
    t = torch.tensor([10, 500, 900])
    noisy = scheduler.add_noise(x0, noise, t)
    truth = scheduler.get_velocity(x0, noise, t) if prediction_type == "v_prediction" else noise
    assert torch.allclose(predicted_clean(scheduler, noisy, truth, t), x0, atol=1e-4)
    ac = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(predicted_clean(scheduler, noisy, None, t), noisy / ac.sqrt())


def test_recipes_share_one_phase_table_and_whole_batches():
    assert [p.name for p in PHASES] == ["1 low-res from scratch", "2 full-res", "3 EMA + qualitative",
                                         "4 curated fine-tune"]
    assert [p.ema for p in PHASES] == [False, False, True, True]
    mini = Recipe.mini(unet_samples=1000)
    assert mini.unet_samples == 1000 and mini.phase_samples() == [672, 192, 64, 32]
    assert Recipe.quick().reuse_shipped_encoders and not Recipe().reuse_shipped_encoders
    assert Recipe(unet_samples=10, unet_batch=8).phase_samples() == [8] * 4  # at least one batch each


def test_building_a_unet_is_seeded_and_leaves_the_global_seed_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, _ = build_nano_unet("nano-deci", seed=1)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is where it was
    b, _ = build_nano_unet("nano-deci", seed=1)
    c, _ = build_nano_unet("nano-deci", seed=2)
    first = next(iter(a.state_dict()))
    assert torch.equal(a.state_dict()[first], b.state_dict()[first])
    assert not torch.equal(a.state_dict()[first], c.state_dict()[first])


def test_a_workdir_of_another_recipe_is_refused(tmp_path):
    save_recipe(Recipe(), tmp_path)
    check_recipe(Recipe(unet_minutes=5.0), tmp_path)  # a time cap stops a stage, it does not define it
    with pytest.raises(UserError, match=r"another recipe \(unet_lr differ\).*--workdir"):
        check_recipe(Recipe(unet_lr=1e-2), tmp_path)
    check_recipe(Recipe(unet_lr=1e-2), tmp_path / "fresh")  # nothing saved there: nothing to check


def _phases(n_latents=8):
    gen = torch.Generator().manual_seed(0)
    tensors = {"latents": torch.randn(n_latents, 4, 8, 8, generator=gen), "caption_ids": torch.arange(n_latents) % 2,
               "text_states": torch.randn(3, 77, nano.TEXT_DIM, generator=gen), "empty_id": 2}
    return [Phase(spec, n_latents, tensors) for spec in PHASES]


def test_the_loop_resumes_from_its_phase_checkpoints(tmp_path):
    recipe = Recipe(**{**TINY, "phase_fractions": (0.25,) * 4})
    scored = []

    def score(unet):
        scored.append(1)
        return {"scored": len(scored)}

    unet, noise_scheduler = build_nano_unet("nano-deci")
    rows = train_unet(unet, noise_scheduler, _phases(), recipe, "nano-deci", score=score,
                      accelerator=Accelerator(cpu=True), checkpoints=tmp_path)
    assert [r["steps"] for r in rows] == [2] * 4 and len(scored) == 4
    assert sorted(p.name for p in (tmp_path / "nano-deci").iterdir()) == [f"phase-{i}" for i in range(1, 5)]
    again, _ = build_nano_unet("nano-deci")
    resumed = train_unet(again, noise_scheduler, _phases(), recipe, "nano-deci", score=score,
                         accelerator=Accelerator(cpu=True), checkpoints=tmp_path)
    assert len(scored) == 4  # nothing trained or scored again
    assert [r["losses"] for r in resumed] == [r["losses"] for r in rows]
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), again.state_dict().values()))
    saved = load_file(tmp_path / "nano-deci" / "phase-4" / "unet.safetensors")  # the raw weights, not EMA's
    assert set(saved) == set(unet.state_dict())
    # Resumed after phase 3, phase 4 goes on with the saved weights, EMA and optimiser state: the same curve.
    shutil.rmtree(tmp_path / "nano-deci" / "phase-4")
    third, _ = build_nano_unet("nano-deci")
    again = train_unet(third, noise_scheduler, _phases(), recipe, "nano-deci", score=score,
                       accelerator=Accelerator(cpu=True), checkpoints=tmp_path)
    assert len(scored) == 5 and again[3]["losses"] == rows[3]["losses"]


def test_a_short_phase_reaches_its_peak_lr_and_later_phases_start_warmed(monkeypatch):
    """Issue #26: a 100-step warm-up left phases of fewer steps short of their peak LR, and phases 3
    and 4, each on a fresh LAMB, took its first-step jolt: the step divided by Adam's bias correction
    1 - 0.9^k, 10x the learning rate at k = 1."""
    recipe = Recipe(**{**TINY, "lr_warmup_steps": 100, "unet_samples": 8 * 30, "phase_fractions": (0.4, 0.4, 0.1, 0.1)})
    stepped = []  # (LAMB's own step count k, the lr it steps at), at every optimiser step
    lamb_step = Lamb.step

    def recording(self, closure=None):
        group = self.param_groups[0]
        stepped.append((group.get("step", 0) + 1, group["lr"]))
        return lamb_step(self, closure)

    monkeypatch.setattr(Lamb, "step", recording)
    unet, noise_scheduler = build_nano_unet("nano-deci")
    rows = train_unet(unet, noise_scheduler, _phases(), recipe, "nano-deci", accelerator=Accelerator(cpu=True))
    assert [r["steps"] for r in rows] == [12, 12, 3, 3]
    ends = [sum(r["steps"] for r in rows[:i + 1]) for i in range(4)]
    lrs = [[lr for _, lr in stepped[end - row["steps"]:end]] for row, end in zip(rows, ends)]
    peaks = [recipe.unet_lr] * 2 + [recipe.late_lr_scale * recipe.unet_lr] * 2
    for phase_lrs, peak in zip(lrs, peaks):
        assert max(phase_lrs) == pytest.approx(peak)  # a short phase reaches its peak too
    assert all(phase_lrs[-1] < 0.1 * recipe.unet_lr for phase_lrs in lrs[:2])  # the cosine phases decay
    jolt = [lr / (1 - 0.9**k) for k, lr in stepped]  # the relative step LAMB takes
    assert max(jolt[ends[1]:]) < 1.2 * peaks[2]  # phases 3 and 4 start warmed, not at 10x
    assert [k for k, _ in stepped] == list(range(1, 31))  # because one LAMB runs through all phases
    assert [r["lrs"] for r in rows] == lrs  # and each row logs the learning rates its steps took


def test_the_warm_up_is_a_share_of_the_phase_capped_by_the_recipe():
    recipe = Recipe()
    assert [recipe.warmup_steps(n) for n in (1, 5, 65, 937, 1562)] == [1, 1, 6, 94, 100]


def test_a_batch_that_does_not_split_over_the_processes_is_a_clear_error():
    class TwoProcesses(Accelerator):
        num_processes = 2  # only the check before the first step reads it

    recipe = Recipe(**{**TINY, "unet_batch": 7})
    unet, noise_scheduler = build_nano_unet("nano-deci")
    with pytest.raises(UserError, match="unet_batch 7 does not split over 2 processes"):
        train_unet(unet, noise_scheduler, _phases(), recipe, "nano-deci", accelerator=TwoProcesses(cpu=True))


def test_the_joint_text_encoder_on_more_than_one_process_is_a_one_line_error():
    class TwoProcesses(Accelerator):
        num_processes = 2

    unet, noise_scheduler = build_nano_unet("nano-deci")
    with pytest.raises(UserError, match="joint_text_encoder trains on one process: launch without --num_processes"):
        train_unet(unet, noise_scheduler, _phases(), Recipe(**TINY), "nano-deci", accelerator=TwoProcesses(cpu=True),
                   text_encoder=torch.nn.Linear(1, 1))


def _train_nano(tmp_path, name, recipe_file) -> int:
    """`decidiff-lab train-nano` in this process: the CLI's own argument parsing and error handling."""
    from decidiff_lab import cli

    return cli.main(["train-nano", "--recipe", str(recipe_file), "--only", "nano-deci",
                     "--out", str(tmp_path / f"out-{name}"), "--workdir", str(tmp_path / f"work-{name}")])


def _train_nano_checked(tmp_path, name, recipe_file):
    assert _train_nano(tmp_path, name, recipe_file) == 0


def _train_nano_as_one_of_two(tmp_path, name, recipe_file):
    from accelerate import PartialState

    _train_nano_checked(tmp_path, name, recipe_file)
    assert PartialState().num_processes == 2  # a real gloo group, not two copies of a one-process run


def _train_nano_on_two_processes(tmp_path, name, recipe_file):
    # accelerate's CPU launcher forks this process twice (gloo, a file rendezvous): the same training code that
    # `torchrun --nproc_per_node 2 -m decidiff_lab train-nano` runs, without importing torch again per process.
    # A child's exception is raised here with its traceback.
    from accelerate import debug_launcher

    debug_launcher(partial(_train_nano_as_one_of_two, tmp_path, name, recipe_file), num_processes=2)


def _twice_on_two_processes(tmp_path, recipe_file):
    """Trains into work-two twice on two processes, keeping the first run's losses as losses-first.csv."""
    _train_nano_on_two_processes(tmp_path, "two", recipe_file)
    shutil.copy(tmp_path / "work-two" / "nano-deci_losses.csv", tmp_path / "losses-first.csv")
    _train_nano_on_two_processes(tmp_path, "two", recipe_file)


def _losses(file):
    with file.open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve_and_resume(tmp_path, capsys):
    recipe_file = tmp_path / "tiny.json"
    recipe_file.write_text(json.dumps(TINY))
    with cpu_threads(1):  # as each of the two processes: the same order of float sums within a process
        _train_nano_checked(tmp_path, "one", recipe_file)
    # The forks run in a fresh interpreter on one OpenMP thread: a child forked after a multi-threaded OpenMP
    # region (this pytest process may have run one) waits forever on its parent's thread pool.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    code = f"import test_training as t, pathlib; t._twice_on_two_processes(pathlib.Path({str(tmp_path)!r}), " \
           f"pathlib.Path({str(recipe_file)!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    one, two = _losses(tmp_path / "work-one" / "nano-deci_losses.csv"), _losses(tmp_path / "losses-first.csv")
    assert len(one) == len(two) == 8
    # The same global batch, sliced over gloo processes: only the order of float sums differs.
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5
    weights = [load_file(tmp_path / f"out-{n}" / "nano-deci" / "unet" / "diffusion_pytorch_model.safetensors")
               for n in ("one", "two")]
    assert max((weights[0][k].float() - weights[1][k].float()).abs().max().item() for k in weights[0]) < 1e-2
    assert json.loads((tmp_path / "out-two" / "recipe.json").read_text())["unet_batch"] == 8
    # The rerun on two processes loaded every phase from its checkpoint: the curve is the same.
    assert _losses(tmp_path / "work-two" / "nano-deci_losses.csv") == two
    # Another recipe in the same workdir: a one-line error that names the fix, exit 2.
    recipe_file.write_text(json.dumps({**TINY, "unet_lr": 1e-2}))
    capsys.readouterr()
    assert _train_nano(tmp_path, "two", recipe_file) == 2
    err = capsys.readouterr().err
    assert "another recipe (unet_lr differ)" in err and "Traceback" not in err


def test_the_quoted_recipes_gpu_hours_follow_from_its_steps_and_batches():
    from decidiff_lab.accounting import build_components, unet_flops
    from decidiff_lab.training.cost import H100_BF16_TFLOPS, quoted_recipe_gpu_hours

    floor = quoted_recipe_gpu_hours()
    assert [r["phase"] for r in floor] == ["1", "2", "3"]  # phase 4's steps are not stated
    unet = build_components("deci-v2")["unet"]
    expected = 3 * unet_flops(unet, 256) * 1_280_000 * 18_432 / (H100_BF16_TFLOPS * 1e12) / 3600
    assert floor[0]["gpu_hours"] == pytest.approx(expected)
    at_40 = quoted_recipe_gpu_hours(utilization=0.4)
    assert all(b["gpu_hours"] == pytest.approx(a["gpu_hours"] / 0.4) for a, b in zip(floor, at_40))
    with pytest.raises(UserError, match="share of peak"):
        quoted_recipe_gpu_hours(utilization=40)


def test_the_optimizer_checkpoint_round_trips_through_safetensors(tmp_path):
    from decidiff_lab.training.unet import _load_optimizer, _save_optimizer

    def model_and_lamb():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        return model, Lamb(model.parameters(), lr=1e-2, weight_decay=0.01)

    def step(model, opt):
        opt.zero_grad()
        model(torch.ones(2, 4)).square().sum().backward()
        opt.step()

    a, opt_a = model_and_lamb()
    step(a, opt_a)
    _save_optimizer(opt_a, tmp_path)
    assert not list(tmp_path.glob("*.pt")) and (tmp_path / "optimizer.safetensors").is_file()
    b, opt_b = model_and_lamb()
    b.load_state_dict(a.state_dict())
    _load_optimizer(opt_b, tmp_path)
    step(a, opt_a), step(b, opt_b)  # the same moments: the same next step
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
