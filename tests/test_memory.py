"""GPU memory modes, tested on CPU: only the device queries are mocked, the models are real
(tiny ones, or the real presets built empty on the `meta` device)."""

import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from decidiff_lab import memory
from decidiff_lab.accounting import build_components
from decidiff_lab.errors import UserError
from decidiff_lab.generate import generate
from decidiff_lab.memory import MAX_IMAGES

GIB = 2**30
T4_USABLE = 15 * GIB  # what a 16 GB T4 leaves to PyTorch
LARGEST_CALL = 24  # notebooks 03 and 05: 12 + 12 checker prompts in one generate call


def _gpu(monkeypatch, gib):
    monkeypatch.setattr(memory.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(memory.torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(total_memory=gib * 2**30))


def _free(monkeypatch, free):
    monkeypatch.setattr(memory.torch.cuda, "mem_get_info", lambda device=None: (free, T4_USABLE))


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
    assert tiny_pipe.vae.use_tiling and tiny_pipe.vae.use_slicing
    assert "8 GB of GPU memory (< 12): enable_attention_slicing, enable_vae_tiling" in capsys.readouterr().out


def test_on_any_gpu_the_vae_decodes_one_image_at_a_time(monkeypatch, tiny_pipe):
    memory.place(tiny_pipe, "cpu")
    assert not tiny_pipe.vae.use_slicing
    _gpu(monkeypatch, 15.8)
    moved = []
    monkeypatch.setattr(type(tiny_pipe), "to", lambda self, device: moved.append(device))
    memory.place(tiny_pipe, "cuda:1")
    assert moved == ["cuda:1"] and tiny_pipe.vae.use_slicing and not tiny_pipe.vae.use_tiling


def test_bad_images_are_detected():
    assert memory.is_bad_image(torch.full((1, 3, 4, 4), float("nan")))
    assert memory.is_bad_image(-torch.ones(1, 3, 4, 4))
    assert not memory.is_bad_image(torch.rand(1, 3, 4, 4))


def test_decode_goes_slice_by_slice_and_matches_one_batch(tiny_vae, monkeypatch):
    latents = torch.randn(3, 4, 4, 4)
    whole = memory.decode_latents_safely(tiny_vae, latents, batch=3)
    sizes = []
    real = tiny_vae.decode
    monkeypatch.setattr(tiny_vae, "decode", lambda z, **kw: sizes.append(len(z)) or real(z, **kw))
    assert torch.allclose(memory.decode_latents_safely(tiny_vae, latents), whole, atol=1e-5)
    assert sizes == [1, 1, 1]
    sizes.clear()
    memory.decode_latents_safely(tiny_vae, latents, batch=2)
    assert sizes == [2, 1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_nan_decode_is_redone_in_fp32_and_leaves_the_pipeline_working(tiny_pipe, monkeypatch, dtype):
    vae = tiny_pipe.vae.to(dtype)
    real, seen = vae.decode, []

    def nan_the_first_time(z, **kwargs):
        out = real(z, **kwargs)
        if not seen:
            out.sample.fill_(float("nan"))
        seen.append(z.dtype)
        return out

    monkeypatch.setattr(vae, "decode", nan_the_first_time)
    latents = torch.randn(2, 4, 8, 8)
    with pytest.warns(UserWarning, match="decoding again in float32"):
        images = memory.decode_latents_safely(vae, latents)
    assert seen == [dtype, torch.float32, dtype]  # only the bad slice was redone
    assert torch.isfinite(images).all() and images.dtype == dtype and vae.dtype == dtype
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.isfinite(memory.decode_latents_safely(vae, latents)).all()
        images = generate(tiny_pipe, ["a red circle on the left", "a blue square"], steps=2, seed=0)
    assert not [w for w in caught if "decoding again" in str(w.message)]  # no retry: all in `dtype`
    assert seen[3:] == [dtype] * 4 and images.shape == (2, 8, 8, 3) and vae.dtype == dtype


def test_a_really_overflowing_fp16_vae_is_decoded_in_fp32_then_cast_back(tiny_pipe):
    vae = tiny_pipe.vae
    with torch.no_grad():
        vae.post_quant_conv.weight.mul_(1e5)  # fine in fp32, inf in fp16 (max 65,504)
    vae.to(torch.float16)
    latents = torch.randn(1, 4, 4, 4, dtype=torch.float16)
    with pytest.warns(UserWarning, match="decoding again in float32"):
        images = memory.decode_latents_safely(vae, latents)
    assert torch.isfinite(images).all() and vae.dtype == torch.float16


def test_generate_with_a_half_precision_vae_still_gives_finite_images(tiny_pipe):
    tiny_pipe.vae.to(torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = generate(tiny_pipe, "a red circle on the left", steps=2, seed=0)
    assert images.shape == (1, 8, 8, 3)


def test_the_trace_counts_live_tensors_once_and_frees_dropped_ones():
    def fn():
        a = torch.zeros(256, 256, device="meta")  # 256 KiB
        b = a + 1  # 2 alive
        view = b.t()  # shares b's storage: no new bytes
        del a
        c = view * 2  # a freed: still 2 alive
        c.add_(1)  # in place: no new bytes
        return c

    assert memory.peak_activation_bytes(fn) == 2 * 256 * 256 * 4
    weight = torch.zeros(1024, 1024, device="meta")
    assert memory.peak_activation_bytes(lambda: weight.t()) == 0  # views of weights are not activations


def test_attention_is_traced_as_a_fused_kernel_without_the_token_by_token_matrix():
    q = torch.zeros(2, 8, 4096, 40, device="meta", dtype=torch.float16)
    peak = memory.peak_activation_bytes(lambda: F.scaled_dot_product_attention(q, q, q))
    assert q.nbytes <= peak < 2 * q.nbytes  # the math path would hold 2 x 8 x 4096^2 scores: 512 MiB


@pytest.fixture(scope="module")
def real_presets():
    """sd15, deci-v1, deci-v2 in fp16 on `meta`: (fp16 weight bytes, U-Net, VAE)."""
    presets = {}
    for name in ("sd15", "deci-v1", "deci-v2"):
        parts = {k: memory._cast(m, torch.float16) for k, m in build_components(name).items()}
        weights = sum(p.numel() * p.element_size() for m in parts.values() for p in m.parameters())
        presets[name] = weights, parts["unet"], parts["vae"]
    return presets


@pytest.mark.parametrize("name", ["sd15", "deci-v1", "deci-v2"])
def test_each_real_preset_fits_a_t4_at_the_courses_largest_call(real_presets, name):
    weights, unet, vae = real_presets[name]
    activations = memory.call_activation_bytes(unet, vae, 512, 512, LARGEST_CALL)
    assert memory.call_activation_bytes(unet, vae, 512, 512, 1) < activations  # grows with the images
    assert weights + activations < T4_USABLE


@pytest.mark.parametrize("deci", ["deci-v1", "deci-v2"])
def test_a_comparison_pair_loaded_together_fits_a_t4(real_presets, deci):
    weights = real_presets["sd15"][0] + real_presets[deci][0]
    largest = max(memory.call_activation_bytes(unet, vae, 512, 512, LARGEST_CALL)
                  for _, unet, vae in (real_presets["sd15"], real_presets[deci]))
    assert weights + largest < T4_USABLE


def _meta_pipe(unet, vae, device="cuda"):
    return SimpleNamespace(unet=unet, vae=vae, _execution_device=torch.device(device))


@pytest.mark.parametrize("name", ["sd15", "deci-v1", "deci-v2"])
def test_images_per_call_on_a_t4_beside_the_other_pipeline(real_presets, monkeypatch, name):
    free = T4_USABLE - real_presets["sd15"][0] - real_presets["deci-v1"][0]  # the heaviest pair is loaded
    _free(monkeypatch, free)
    _, unet, vae = real_presets[name]
    limit = memory.max_images_per_call(_meta_pipe(unet, vae), 512, 512)
    assert LARGEST_CALL <= limit <= MAX_IMAGES
    assert memory.call_activation_bytes(unet, vae, 512, 512, limit) < free
    if limit < MAX_IMAGES:
        assert memory.call_activation_bytes(unet, vae, 512, 512, limit + 1) > free - memory.RESERVE_BYTES


def test_images_per_call_shrinks_with_free_memory_and_resolution(real_presets, monkeypatch):
    _, unet, vae = real_presets["sd15"]
    pipe = _meta_pipe(unet, vae)
    _free(monkeypatch, 4 * GIB)
    at_512, at_768 = memory.max_images_per_call(pipe, 512, 512), memory.max_images_per_call(pipe, 768, 768)
    assert 1 <= at_768 < at_512 < MAX_IMAGES
    _free(monkeypatch, GIB // 2)
    assert memory.max_images_per_call(pipe, 512, 512) == 1  # never 0: one image is the floor
    assert memory.max_images_per_call(_meta_pipe(unet, vae, "cpu"), 512, 512) == MAX_IMAGES


def test_generate_names_the_images_per_call_limit(tiny_pipe, monkeypatch):
    with pytest.raises(UserError, match=f"^65 images in one call: at most {MAX_IMAGES} images per call at 8x8: "
                                        "loop over seeds$"):
        generate(tiny_pipe, ["a red circle"] * 65, steps=2)
    monkeypatch.setattr(type(tiny_pipe), "_execution_device", property(lambda self: torch.device("cuda")))
    _free(monkeypatch, GIB // 2)  # under the reserve: one image at most
    with pytest.raises(UserError, match=r"^2 images in one call: at most 1 image per call at 8x8 on this GPU "
                                        r"\(0\.5 GiB free\): loop over seeds$"):
        generate(tiny_pipe, "a red circle", steps=2, num_images=2)
