"""The same U-Net under four runtimes: eager PyTorch, `torch.compile`, ONNX Runtime, OpenVINO.

Deci's quoted speed-ups are not eager PyTorch: the blog post's 3x comes "combined with" Deci's
Infery SDK, and the model card's AI 100 rows are compiled. `with_runtime(pipe, name)` returns a
copy of a pipeline whose U-Net runs under `name`, so `bench.bench_cases` can time every runtime
in the same interleaved rounds and the pipeline samples exactly as before:

    fast = with_runtime(pipe, "onnxruntime")
    parity(pipe.unet, fast.unet)      # max |difference| of one guided U-Net call

`with_runtimes(pipe, names)` does it for several at once and exports the U-Net to ONNX once for
every runtime that reads ONNX (the export is the slow part: longer than building either runtime from it).

ONNX Runtime and OpenVINO are the optional `deploy` extra (`pip install "decidiff-lab[deploy]"`);
`missing(name)` says in one line what is not installed. The export traces the U-Net with PyTorch's
TorchScript-based ONNX exporter (`torch.onnx.export(dynamo=False)`) with a dynamic batch, so the
guided batch of 2 and the unguided batch of 1 share one graph. On the nano U-Nets it takes a few
seconds where the `torch.export`-based exporter (`dynamo=True`) took 30-60 (its tracing and its
graph optimiser), for the same outputs to fp32 rounding and the same speed under both runtimes,
which optimise the graph themselves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from .errors import UserError

RUNTIMES = ("eager", "torch.compile", "onnxruntime", "openvino")
_NEEDS = {"onnxruntime": ("onnxruntime", "onnxscript"), "openvino": ("openvino", "onnxscript")}


def missing(name: str) -> str | None:
    """None if runtime `name` can run here, else one line saying what to install."""
    if name not in RUNTIMES:
        raise UserError(f"unknown runtime {name!r}: pick one of {', '.join(RUNTIMES)}")
    absent = [m for m in _NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
    if absent:
        return f"{name} needs {' and '.join(absent)}: pip install \"decidiff-lab[deploy]\""
    return None


class _Forward(torch.nn.Module):
    """The U-Net as a plain function of three tensors, which is what exporters trace."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class RuntimeUNet(torch.nn.Module):
    """Stands in for a diffusers U-Net inside a pipeline: same call, same `config`, another runtime.

    Only the plain text-to-image call is supported (no ControlNet residuals, no added conditions),
    which is all `StableDiffusionPipeline` passes to these U-Nets.
    """

    def __init__(self, unet, run, runtime: str):
        super().__init__()
        self.unet = unet  # keeps config, dtype, device and the weights (FLOP counting reads them)
        self.run = run
        self.runtime = runtime

    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self):
        return self.unet.dtype

    @property
    def device(self):
        return self.unet.device

    def forward(self, sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        unsupported = [k for k, v in kwargs.items() if v is not None and k != "cross_attention_kwargs"]
        if args or unsupported:
            raise UserError(f"a {self.runtime} U-Net runs the plain text-to-image call only (got {unsupported or args})")
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(len(sample)).to(torch.int64)
        out = self.run(sample, timestep, encoder_hidden_states)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


def _export_onnx(unet, workdir: str | Path | None) -> Path:
    folder = Path(workdir or tempfile.mkdtemp(prefix="decidiff-lab-onnx-"))
    folder.mkdir(parents=True, exist_ok=True)
    side, channels = unet.config.sample_size, unet.config.in_channels
    example = (torch.zeros(2, channels, side, side, dtype=unet.dtype, device=unet.device),
               torch.full((2,), 500, dtype=torch.int64, device=unet.device),
               torch.zeros(2, 77, unet.config.cross_attention_dim, dtype=unet.dtype, device=unet.device))
    path = folder / "unet.onnx"
    batch = {0: "batch"}
    # The tracer warns about every shape check it turns into a constant (diffusers' asserts on channel
    # counts, which hold for any batch) and the exporter about its own deprecation: none is the learner's.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Forward(unet).eval(), example, path, input_names=["sample", "timestep", "text"],
                              output_names=["out"], dynamo=False, opset_version=18, verbose=False,
                              dynamic_axes={"sample": batch, "timestep": batch, "text": batch, "out": batch})
    finally:
        quiet.setLevel(level)
    return path


def _require_cpu(unet, runtime: str) -> None:
    if unet.device.type != "cpu":
        raise UserError(f"{runtime} runs here on the CPU only: benchmark a GPU pipeline with eager and torch.compile")


def _numpy_runner(predict, dtype):
    def run(sample, timestep, text):
        feeds = {"sample": sample.detach().cpu().numpy(), "timestep": timestep.cpu().numpy(),
                 "text": text.detach().cpu().numpy()}
        return torch.from_numpy(np.asarray(predict(feeds))).to(sample.device, dtype)
    return run


def compile_unet(unet, runtime: str, threads: int | None = None, workdir: str | Path | None = None,
                 onnx_path: str | Path | None = None) -> RuntimeUNet:
    """`unet` under `runtime`. `threads` fixes ONNX Runtime's and OpenVINO's CPU threads (PyTorch's
    own setting covers eager and torch.compile); `workdir` keeps the exported graph (a temporary
    folder otherwise); `onnx_path`, an ONNX export of this very U-Net, skips the export."""
    why = missing(runtime)
    if why:
        raise UserError(why)
    unet = unet.eval()
    if runtime == "eager":
        return RuntimeUNet(unet, _Forward(unet), runtime)
    if runtime == "torch.compile":
        return RuntimeUNet(unet, torch.compile(_Forward(unet)), runtime)
    _require_cpu(unet, runtime)
    path = Path(onnx_path) if onnx_path else _export_onnx(unet, workdir)
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return RuntimeUNet(unet, _numpy_runner(lambda feeds: session.run(None, feeds)[0], unet.dtype), runtime)
    import openvino as ov

    # f32 kept: on CPUs with bf16 units OpenVINO would otherwise drop to bf16 (another model, not a faster one).
    config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    return RuntimeUNet(unet, _numpy_runner(lambda feeds: compiled(feeds)[0], unet.dtype), runtime)


def _base_unet(pipe):
    return pipe.unet.unet if isinstance(pipe.unet, RuntimeUNet) else pipe.unet


def with_runtime(pipe, runtime: str, threads: int | None = None, workdir: str | Path | None = None,
                 onnx_path: str | Path | None = None):
    """A copy of `pipe` (same components, same scheduler config) whose U-Net runs under `runtime`."""
    components = {**pipe.components, "unet": compile_unet(_base_unet(pipe), runtime, threads, workdir, onnx_path),
                  "scheduler": type(pipe.scheduler).from_config(pipe.scheduler.config)}
    if "requires_safety_checker" in pipe.config:  # as the pipeline was built: ours ship no safety checker
        components["requires_safety_checker"] = pipe.config.requires_safety_checker
    fast = type(pipe)(**components)
    fast.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return fast


def with_runtimes(pipe, names, threads: int | None = None, workdir: str | Path | None = None) -> dict:
    """`with_runtime(pipe, name)` for each of `names`, the U-Net exported to ONNX once for all that read it."""
    for name in names:
        if why := missing(name):
            raise UserError(why)
    onnx_path = None
    readers = [name for name in names if name in _NEEDS]
    if readers:
        unet = _base_unet(pipe).eval()
        _require_cpu(unet, readers[0])
        onnx_path = _export_onnx(unet, workdir)
    return {name: with_runtime(pipe, name, threads, workdir, onnx_path) for name in names}


@torch.inference_mode()
def parity(reference, other, seed: int = 0) -> float:
    """Max |difference| between two U-Nets' outputs on one guided call (batch 2) of random inputs."""
    cfg = reference.config
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
    text = torch.randn(2, 77, cfg.cross_attention_dim, generator=gen)
    sample, text = sample.to(reference.device, reference.dtype), text.to(reference.device, reference.dtype)
    a = reference(sample, 500, text).sample.float()
    b = other(sample, 500, text).sample.float()
    return float((a - b).abs().max())
