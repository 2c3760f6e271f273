"""The U-Net under another runtime: the same call, the same outputs, the pipeline none the wiser."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from decidiff_lab import runtimes
from decidiff_lab.generate import generate

def test_unknown_runtime_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt': pick one of eager, torch.compile"):
        runtimes.missing("tensorrt")


def test_a_missing_runtime_names_the_extra(monkeypatch):
    monkeypatch.setattr(runtimes.importlib.util, "find_spec", lambda name: None)
    assert runtimes.missing("openvino") == 'openvino needs openvino and onnxscript: pip install "decidiff-lab[deploy]"'
    assert runtimes.missing("eager") is None
    with pytest.raises(ValueError, match=r"decidiff-lab\[deploy\]"):
        runtimes.compile_unet(torch.nn.Linear(1, 1), "onnxruntime")


def test_eager_wrapper_is_the_unet_itself(tiny_pipe):
    wrapped = runtimes.compile_unet(tiny_pipe.unet, "eager")
    assert wrapped.config is tiny_pipe.unet.config and wrapped.dtype == torch.float32
    assert runtimes.parity(tiny_pipe.unet, wrapped) == 0.0


def test_the_wrapper_refuses_conditions_it_cannot_pass_on(tiny_pipe):
    wrapped = runtimes.compile_unet(tiny_pipe.unet, "eager")
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="plain text-to-image call only"):
        wrapped(x, 1, torch.zeros(1, 77, 32), down_block_additional_residuals=[x])


EXPORTERS = [name for name in ("onnxruntime", "openvino") if runtimes.missing(name) is None]
needs_exporters = pytest.mark.skipif(not EXPORTERS, reason=str(runtimes.missing("openvino")))


@needs_exporters
def test_exported_unets_match_eager_and_sample_the_same_image(make_tiny_pipe, tmp_path):
    pipe = make_tiny_pipe()
    fast = runtimes.with_runtimes(pipe, ["eager", *EXPORTERS], threads=1, workdir=tmp_path)
    assert list(tmp_path.glob("*.onnx")) == [tmp_path / "unet.onnx"]  # one export, read by every exporter
    a = generate(pipe, "a red circle", steps=3, guidance_scale=2.5, seed=1)
    for runtime in ["eager", *EXPORTERS]:
        assert fast[runtime].unet.runtime == runtime and fast[runtime].unet.unet is pipe.unet
        assert runtimes.parity(pipe.unet, fast[runtime].unet) < 1e-4
        for batch in (1, 3):  # one graph, any batch: guided (2), unguided (1), several prompts
            x = torch.randn(batch, 4, 8, 8)
            text = torch.randn(batch, 77, pipe.unet.config.cross_attention_dim)
            with torch.inference_mode():
                np.testing.assert_allclose(fast[runtime].unet(x, 10, text).sample, pipe.unet(x, 10, text).sample,
                                           atol=1e-4)
        b = generate(fast[runtime], "a red circle", steps=3, guidance_scale=2.5, seed=1)
        assert np.abs(a.astype(int) - b).max() <= 1  # the same image, to a rounding of the last 8-bit level


def test_with_runtimes_checks_every_name_before_exporting(tiny_pipe, monkeypatch):
    monkeypatch.setattr(runtimes, "_export_onnx", lambda *a: pytest.fail("exported before checking the names"))
    # Without the deploy extra the first name is already refused (the floor run); either way, before any export.
    refused = "unknown runtime 'tensorrt'" if runtimes.missing("onnxruntime") is None else r"decidiff-lab\[deploy\]"
    with pytest.raises(ValueError, match=refused):
        runtimes.with_runtimes(tiny_pipe, ["onnxruntime", "tensorrt"])


@needs_exporters
def test_a_stock_diffusers_unet_exports_too(tiny_config, tmp_path):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8).eval()
    onnx_path = runtimes._export_onnx(unet, tmp_path)
    for runtime in EXPORTERS:
        assert runtimes.parity(unet, runtimes.compile_unet(unet, runtime, threads=1, onnx_path=onnx_path)) < 1e-4
