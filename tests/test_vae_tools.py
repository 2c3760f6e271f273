"""VAE helpers: round-trip shapes and scaling, PSNR arithmetic, masks, ratios, FLOPs on meta."""

import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from decidiff_lab import vae_tools
from decidiff_lab.architectures import SD15_VAE
from decidiff_lab.shapes import Scene, Shape, make_dataset, render


@pytest.fixture(scope="module")
def images():
    return make_dataset(3, seed=1, size=16).images


@pytest.fixture(scope="module")
def vae_f4():
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8, 8), latent_channels=4, norm_num_groups=4, sample_size=16,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         scaling_factor=0.5).eval()


def test_encode_decode_shapes_and_scaling(vae_f4, images):
    scaled = vae_tools.encode(vae_f4, images)
    raw = vae_tools.encode(vae_f4, images, scaled=False)
    assert scaled.shape == (3, 4, 4, 4) and scaled.dtype == torch.float32
    assert torch.allclose(scaled, raw * 0.5)
    decoded = vae_tools.decode(vae_f4, scaled)
    assert decoded.shape == images.shape and decoded.dtype == np.uint8
    assert np.array_equal(decoded, vae_tools.decode(vae_f4, raw, scaled=False))
    assert np.array_equal(vae_tools.round_trip(vae_f4, images), decoded)


def test_sampling_is_seeded_and_differs_from_the_mean(vae_f4, images):
    a = vae_tools.encode(vae_f4, images, sample=True, seed=3)
    assert torch.equal(a, vae_tools.encode(vae_f4, images, sample=True, seed=3))
    assert not torch.equal(a, vae_tools.encode(vae_f4, images))


def test_psnr_values():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] += 1  # MSE 1 on the second image only
    values = vae_tools.psnr(a, b)
    assert values.shape == (2,) and math.isinf(values[0])
    assert values[1] == pytest.approx(10 * math.log10(255**2))
    assert vae_tools.psnr(a[1], b[1]) == pytest.approx(values[1])  # one image -> a scalar


def test_psnr_mask_restricts_the_pixels():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 10
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True
    assert vae_tools.psnr(a, b, mask) == pytest.approx(10 * math.log10(255**2 / 50))
    assert math.isinf(vae_tools.psnr(a, b, ~mask))
    with pytest.raises(ValueError, match="no pixel"):
        vae_tools.psnr(a, b, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="shapes differ"):
        vae_tools.psnr(a, b[:2])


def test_error_map():
    a = np.zeros((2, 3, 3, 3), np.uint8)
    b = a.copy()
    b[1, 1, 1] = (30, 0, 0)
    errors = vae_tools.error_map(a, b)
    assert errors.shape == (2, 3, 3) and errors[1, 1, 1] == 10 and errors.sum() == 10


def test_edge_mask_finds_the_outline_not_the_inside():
    image = render(Scene((Shape("red", "square", 32.0, 32.0, 20.0),), "a red square in the center", "center"))
    edges = vae_tools.edge_mask(image)
    assert edges.shape == (64, 64)
    assert edges[32, 22] and not edges[32, 32] and not edges[5, 5]
    wider = vae_tools.edge_mask(image, width=2)
    assert wider.sum() > edges.sum() and (wider | edges).sum() == wider.sum()
    assert vae_tools.edge_mask(image[None]).shape == (1, 64, 64)


def test_box_mask_scales_with_the_image():
    shape = Shape("red", "square", 32.0, 32.0, 16.0)
    assert vae_tools.box_mask(shape, 64, margin=0).sum() == 16 * 16
    assert vae_tools.box_mask(shape, 32, margin=0).sum() == 8 * 8
    assert vae_tools.box_mask(shape, 64, margin=1).sum() == 18 * 18


def test_latent_shape_and_compression_ratio(vae_f4):
    assert vae_tools.latent_shape(vae_f4, 16) == (4, 4, 4)
    with pytest.raises(ValueError, match="multiple"):
        vae_tools.latent_shape(vae_f4, 18)
    assert vae_tools.compression_ratio((3, 64, 64), (4, 8, 8)) == 48
    assert vae_tools.compression_ratio((512, 512, 3), (64, 64, 4)) == 48


def test_decode_flops_on_meta_grow_with_the_image(vae_f4):
    small, big = vae_tools.decode_flops(vae_f4, 16), vae_tools.decode_flops(vae_f4, 32)
    assert small > 0 and big >= 4 * small
    assert not next(vae_f4.parameters()).is_meta  # the real model is untouched


def test_sd15_vae_decode_flops_without_memory():
    with torch.device("meta"):
        sd_vae = AutoencoderKL(**{k: v for k, v in SD15_VAE.items()})
    assert vae_tools.latent_shape(sd_vae, 512) == (4, 64, 64)
    assert vae_tools.decode_flops(sd_vae, 512) > 1e12  # more than a TFLOP per 512x512 decode


def test_round_trip_figure(images):
    import matplotlib.pyplot as plt

    fig = vae_tools.round_trip_figure(images, images[::-1], titles=["a", "b", "c"])
    assert len(fig.axes) == 3 * 3 + 1  # panels + the colour bar
    plt.close(fig)
