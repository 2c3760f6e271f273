"""The in-notebook training run, on toy-sized frozen parts: rows, EMA, determinism, logs, plots."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from decidiff_lab import nano  # noqa: E402
from decidiff_lab.errors import UserError  # noqa: E402
from decidiff_lab.training import evaluation, logs, mini, plots  # noqa: E402
from decidiff_lab.training.data import FrozenParts, phase_data  # noqa: E402
from decidiff_lab.training.recipe import PHASES, QUOTED_RECIPE, Recipe, quoted_recipe_markdown  # noqa: E402
from decidiff_lab.training.unet import build_nano_unet  # noqa: E402


@pytest.fixture(scope="module")
def parts():
    from transformers import CLIPTokenizer

    from decidiff_lab.presets import data_dir

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), latent_channels=4, norm_num_groups=4, sample_size=64,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=nano.TEXT_DIM, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77))
    for module in (vae, text):
        module.eval().requires_grad_(False)
    return FrozenParts(vae, text, CLIPTokenizer.from_pretrained(data_dir() / "clip-tokenizer"))


@pytest.fixture(scope="module")
def recipe():
    return Recipe.mini(train_images=16, qualitative_images=8, curated_images=8, unet_samples=4 * 8, unet_batch=4,
                       phase_fractions=(0.25, 0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def phases(recipe, parts):
    return phase_data(recipe, parts)


@pytest.fixture(scope="module")
def run(recipe, parts, phases):
    return mini.run_mini(recipe, parts, phases, prompts_per_kind=1, validation_images=4)


def test_the_mini_recipe_overrides_and_keeps_four_phases():
    recipe = Recipe.mini(unet_samples=1000)
    assert recipe.unet_samples == 1000 and len(recipe.phase_fractions) == len(PHASES) == 4
    assert sum(recipe.phase_fractions) == pytest.approx(1.0)


def test_phase_data_follows_the_recipe(phases):
    assert [p.name for p in phases] == [p.name for p in PHASES]
    assert [p.spec.ema for p in phases] == [False, False, True, True]
    assert phases[0].tensors["latents"].shape[-1] == nano.LOW_RES // 8  # 32 px -> 4x4 latents
    assert phases[1].tensors["latents"].shape[-1] == nano.IMAGE_SIZE // 8
    assert [p.images for p in phases] == [16, 16, 8, 8]


def test_run_gives_one_row_per_checkpoint(run):
    assert [r["phase"] for r in run.rows] == ["0 untrained"] + [p.name for p in PHASES]
    seen = [r["samples_seen"] for r in run.rows]
    assert seen == [0, 8, 16, 24, 32]
    for row in run.rows:
        assert all(0.0 <= row[k] <= 1.0 for k in evaluation.SCORE_KEYS)
        assert math.isfinite(row["val_loss"])
    assert set(run.baseline) == set(evaluation.DENOISE_KEYS) and all(0 <= v <= 1 for v in run.baseline.values())
    assert set(run.train_seconds) == {p.name for p in PHASES}


def test_training_lowers_the_validation_loss(run):
    assert run.rows[-1]["val_loss"] < run.rows[0]["val_loss"]


def test_denoising_loss_is_deterministic(recipe, parts):
    unet, scheduler = build_nano_unet("nano-deci")
    batch = mini.validation_batch(recipe, parts, n=8)
    unet.train()
    first = evaluation.denoising_loss(unet, scheduler, batch, seed=3)
    assert first == evaluation.denoising_loss(unet, scheduler, batch, seed=3) and first > 0
    assert unet.training  # scored in eval mode, handed back as it came


def test_read_log_parses_numbers_and_counts_samples(tmp_path):
    path = tmp_path / "nano-deci_phases.csv"
    path.write_text("phase,steps,samples,loss_first,single_acc\n1 low-res,10,640,0.5,\n2 full-res,20,1280,0.25,0.75\n")
    rows = logs.read_log(path)
    assert rows[0] == {"phase": "1 low-res", "steps": 10, "samples": 640, "loss_first": 0.5, "single_acc": None,
                       "samples_seen": 640}
    assert rows[1]["samples_seen"] == 1920 and rows[1]["single_acc"] == 0.75
    assert logs.shipped_phase_logs(tmp_path) == {"nano-deci": rows}


def test_missing_logs_are_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="train-nano"):
        logs.shipped_phase_logs(tmp_path)


def test_plots_show_every_score_and_both_losses(run):
    ax = plots.plot_scores(run.rows)
    assert len(ax.get_legend().get_texts()) == len(evaluation.GENERATION_KEYS)
    ax = plots.plot_scores(run.rows, keys=evaluation.DENOISE_KEYS, baseline=run.baseline)
    assert len(ax.lines) == 2 * len(evaluation.DENOISE_KEYS) + len(run.rows) - 1  # curves, baselines, phase marks
    ax = plots.plot_losses(run.rows)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training loss (phase start, end)",
                                                                    "validation loss (fixed batch)"]
    assert len(plots.plot_curves(run.rows, title="toy", baseline=run.baseline).axes) == 3
    shipped_like = [{k: v for k, v in r.items() if not k.startswith(("denoise", "val_"))} for r in run.rows[1:]]
    assert len(plots.plot_curves(shipped_like).axes) == 2
    plt.close("all")


def test_quoted_recipe_is_labelled_and_derives_samples():
    assert all(r["quoted"] for r in QUOTED_RECIPE) and len(QUOTED_RECIPE) == 4
    assert QUOTED_RECIPE[0]["samples"] == 1_280_000 * 18_432 and QUOTED_RECIPE[3]["samples"] is None
    text = quoted_recipe_markdown()
    assert text.startswith("**Quoted**") and "| 1 | from scratch at 256x256, a 320 M-sample LAION-v2 subset | 1,280,000 | 18,432 | 23.59 B |" in text
    assert "LAMB, lr 5e-3" in text


def test_describe_phases_counts_what_was_precomputed(recipe, phases):
    rows = mini.describe_phases(phases, recipe)
    assert [r["resolution"] for r in rows] == ["32x32", "64x64", "64x64", "64x64"]
    assert rows[0]["latents"] == "16x4x4x4" and rows[1]["latents"] == "16x4x8x8"
    assert rows[1]["text_states"].endswith(f"x77x{nano.TEXT_DIM}")
    assert 0 < rows[0]["distinct_captions"] <= 16 and [r["samples"] for r in rows] == [8] * 4


def test_denoised_images_are_uint8_images_with_and_without_a_unet(recipe, parts):
    unet, scheduler = build_nano_unet("nano-deci")
    batch = mini.validation_batch(recipe, parts, n=3)
    assert len(batch["captions"]) == 3
    for model in (unet, None):
        images = evaluation.denoised_images(model, scheduler, parts, batch, timestep=500)
        assert images.shape == (3, 64, 64, 3) and images.dtype.name == "uint8"
    first = evaluation.denoised_images(unet, scheduler, parts, batch, limit=1)
    whole = evaluation.denoised_images(unet, scheduler, parts, batch)
    assert first.shape == (1, 64, 64, 3) and abs(first[0].astype(int) - whole[0].astype(int)).max() <= 1
    scores = evaluation.denoise_scores(None, scheduler, parts, batch)
    assert set(scores) == set(evaluation.DENOISE_KEYS)


def test_training_step_seconds_times_each_case_and_leaves_the_weights(parts, phases):
    unet, noise_scheduler = build_nano_unet("nano-deci")
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    cases = {"low": (unet, noise_scheduler, phases[0].tensors), "full": (unet, noise_scheduler, phases[1].tensors)}
    seconds = mini.training_step_seconds(cases, batch=4, rounds=3, steps=1)
    assert set(seconds) == {"low", "full"} and all(len(s) == 3 and 0 < min(s) < 1 for s in seconds.values())
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert all(p.grad is None for p in unet.parameters())


def test_step_cost_ratio_pairs_the_rounds():
    ratio, (low, high) = mini.step_cost_ratio({"full": [4.0, 6.0, 5.0], "low": [2.0, 2.0, 2.5]}, "full", "low")
    assert ratio == 2.0  # best round against best round
    assert 2.0 <= low <= high <= 3.0  # per-round ratios 2, 3, 2


def test_a_run_scores_generation_only_when_asked(recipe, parts, phases):
    quiet = mini.run_mini(recipe, parts, phases, validation_images=4, score_each_phase=False)
    assert all(not set(evaluation.GENERATION_KEYS) & set(row) for row in quiet.rows)
    assert all(set(evaluation.DENOISE_KEYS) <= set(row) for row in quiet.rows)
    assert len(plots.plot_curves(quiet.rows, baseline=quiet.baseline).axes) == 2  # loss, denoising
    plt.close("all")


def test_an_ablation_can_be_scored_at_its_end_only(recipe, parts, phases, run):
    end_only = mini.run_mini(recipe, parts, phases, prompts_per_kind=1, validation_images=4,
                                  score_each_phase=False)
    assert [r["phase"] for r in end_only.rows] == ["0 untrained", PHASES[-1].name]
    assert end_only.rows[-1]["samples_seen"] == run.rows[-1]["samples_seen"]
    assert end_only.rows[-1]["val_loss"] == run.rows[-1]["val_loss"]  # same seeds, same run, fewer scores
