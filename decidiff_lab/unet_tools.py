"""Looking inside a U-Net while it runs (notebook 03).

Everything here works through PyTorch forward hooks, so it needs no change to the model and
works the same on diffusers' `UNet2DConditionModel` (SD 1.5, nano-sd) and on our
`FlexibleUNet2DConditionModel` (DeciDiffusion's U-Net-NAS, nano-deci):

* `count_calls`: how many times named submodules run in a forward pass (the mid-block quirk).
* `module_flops`: FLOPs of named submodules during one forward, counted on a `meta` copy.
* `block_latencies`: measured time per down/mid/up block, median over repeats.
* `skip_stack_trace`: every skip state pushed on the down path and popped on the up path.
* `run_order`: the order in which each block really runs its ResNets, attentions and resamplers.
* `plot_block_bars`: the matching figure (tables of these rows: `decidiff_lab.tables`).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch.utils.flop_counter import FlopCounterMode

from .accounting import block_names, build_unet
from .bench import cpu_threads, synchronize

REST = "rest (conv_in, time embedding, conv_out)"


def unet_inputs(unet, side: int | None = None, batch: int = 2, timestep: int = 500, seed: int = 0):
    """Seeded (sample, timestep, text states) for one U-Net call; batch 2 = one step with CFG."""
    cfg = unet.config
    side = side or cfg.sample_size
    param = next(unet.parameters())
    gen = torch.Generator("cpu").manual_seed(seed)
    sample = torch.randn(batch, cfg.in_channels, side, side, generator=gen)
    text = torch.randn(batch, 77, cfg.cross_attention_dim, generator=gen)
    to = dict(device=param.device, dtype=param.dtype)
    return sample.to(**to), torch.full((batch,), timestep, device=param.device), text.to(**to)


@contextmanager
def count_calls(model: torch.nn.Module, names):
    """`with count_calls(unet, ["mid_block.modules_list.0"]) as calls: unet(...)` -> calls[name]."""
    calls = dict.fromkeys(names, 0)

    def hook(name):
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in calls]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def module_flops(unet, names, resolution: int = 512, batch: int = 1, vae_factor: int = 8) -> list[dict]:
    """FLOPs and call counts of named submodules in one forward, on a `meta` copy (no memory).

    One row per name: calls, gflops (all calls together), gflops_per_call and share (of the
    whole forward). A module that runs twice is counted twice: that is the point.
    """
    meta = unet if next(unet.parameters()).is_meta else build_unet(dict(unet.config))
    side = resolution // vae_factor
    with torch.device("meta"):
        inputs = (torch.zeros(batch, meta.config.in_channels, side, side), torch.full((batch,), 999),
                  torch.zeros(batch, 77, meta.config.cross_attention_dim))
    counter = FlopCounterMode(display=False)
    with count_calls(meta, names) as calls, counter, torch.no_grad():
        meta(*inputs)
    total = counter.get_total_flops()
    counts = counter.get_flop_counts()
    prefix = type(meta).__name__ + "."
    rows = []
    for name in names:
        flops = sum(counts.get(prefix + name, {}).values())
        rows.append({"module": name, "calls": calls[name], "gflops": flops / 1e9,
                     "gflops_per_call": flops / max(calls[name], 1) / 1e9, "share": flops / total})
    return rows


def block_latencies(unet, side: int | None = None, batch: int = 2, repeats: int = 10, warmup: int = 2,
                    num_threads: int | None = None) -> list[dict]:
    """Measured milliseconds per block for one U-Net call (median over `repeats`).

    A pre-hook and a hook on each down/mid/up block read the clock around it; the last row,
    `REST`, is the whole call minus the blocks (conv_in, time embedding, conv_out, glue).
    Rows: block, ms, share (of the whole call's median). `num_threads`: see `bench.cpu_threads`.
    """
    with cpu_threads(num_threads), torch.inference_mode():
        return _block_latencies(unet, side, batch, repeats, warmup)


def _block_latencies(unet, side, batch, repeats, warmup) -> list[dict]:
    unet.eval()
    device = next(unet.parameters()).device
    names = block_names(unet)
    started, spent = {}, {}

    def before(name):
        def hook(*_):
            synchronize(device)
            started[name] = time.perf_counter()
        return hook

    def after(name):
        def hook(*_):
            synchronize(device)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started[name]
        return hook

    handles = []
    for name in names:
        module = unet.get_submodule(name)
        handles += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
    inputs = unet_inputs(unet, side, batch)
    samples = {name: [] for name in names + ["total"]}
    try:
        for i in range(warmup + repeats):
            spent.clear()
            synchronize(device)
            start = time.perf_counter()
            unet(*inputs)
            synchronize(device)
            if i >= warmup:
                samples["total"].append(time.perf_counter() - start)
                for name in names:
                    samples[name].append(spent[name])
    finally:
        for handle in handles:
            handle.remove()
    median = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
    rows = [{"block": name, "ms": median[name]} for name in names]
    rows.append({"block": REST, "ms": max(median["total"] - sum(median[n] for n in names), 0.0)})
    for row in rows:
        row["share"] = row["ms"] / median["total"]
    return rows


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@torch.no_grad()
def skip_stack_trace(unet, side: int | None = None) -> list[dict]:
    """Every skip state of one forward pass, in order: pushed on the way down, popped on the way up.

    Rows: op ("push"/"pop"), by (the module that produced it or consumes it), shape (C, H, W),
    depth (stack size after the op) and, for pops, `concat_in` (channels entering the ResNet
    after concatenation) and `matches` (the ResNet's input really ends with that skip tensor).
    Works on any diffusers-style U-Net whose down blocks return (hidden_states, skips).
    """
    unet.eval()
    produced, stack, events, handles = {}, [], [], []

    def produced_by(name):
        def hook(_module, _args, output):
            tensor = _first_tensor(output)
            if tensor is not None:
                produced[id(tensor)] = name
        return hook

    def push(tensor, name):
        stack.append(tensor)
        events.append({"op": "push", "by": name, "shape": tuple(tensor.shape[1:]), "depth": len(stack)})

    def pushed_by_block(name):
        def hook(_module, _args, output):
            for skip in output[1]:
                push(skip, produced.get(id(skip), name))
        return hook

    def pop(name):
        def hook(_module, args, kwargs):
            skip = stack.pop()
            x = args[0] if args else kwargs["input_tensor"]
            events.append({"op": "pop", "by": name, "shape": tuple(skip.shape[1:]), "depth": len(stack),
                           "concat_in": x.shape[1],
                           "matches": bool(torch.equal(x[:, x.shape[1] - skip.shape[1]:], skip))})
        return hook

    kinds = (ResnetBlock2D, Transformer2DModel, Downsample2D)
    handles.append(unet.conv_in.register_forward_hook(lambda _m, _a, out: push(out, "conv_in")))
    for i, block in enumerate(unet.down_blocks):
        for sub, module in block.named_modules():
            if isinstance(module, kinds):
                handles.append(module.register_forward_hook(produced_by(f"down_blocks.{i}.{sub}")))
        handles.append(block.register_forward_hook(pushed_by_block(f"down_blocks.{i}")))
    for i, block in enumerate(unet.up_blocks):
        for sub, module in block.named_modules():
            if isinstance(module, ResnetBlock2D):
                handles.append(module.register_forward_pre_hook(pop(f"up_blocks.{i}.{sub}"), with_kwargs=True))
    try:
        unet(*unet_inputs(unet, side, batch=1))
    finally:
        for handle in handles:
            handle.remove()
    return events


_SYMBOLS = {"ResnetBlock2D": "R", "Transformer2DModel": "A", "Downsample2D": "v", "Upsample2D": "^"}


@torch.no_grad()
def run_order(unet) -> list[dict]:
    """What each block runs, in order, in one forward: R = ResNet, A = attention (transformer),
    v = downsampler, ^ = upsampler. Traced on a `meta` copy, so full-size models cost nothing.

    Rows: block, order (e.g. "R A R A v"), resnets, attentions (distinct modules, not calls).
    """
    meta = unet if next(unet.parameters()).is_meta else build_unet(dict(unet.config))
    seen, handles = {name: [] for name in block_names(meta)}, []
    distinct = {name: {"R": set(), "A": set()} for name in seen}

    def hook(block, symbol, module):
        def record(*_):
            seen[block].append(symbol)
            if symbol in "RA":
                distinct[block][symbol].add(id(module))
        return record

    for block in seen:
        for module in meta.get_submodule(block).modules():
            symbol = _SYMBOLS.get(type(module).__name__)
            if symbol:
                handles.append(module.register_forward_hook(hook(block, symbol, module)))
    side = meta.config.sample_size
    with torch.device("meta"):
        inputs = (torch.zeros(1, meta.config.in_channels, side, side), torch.full((1,), 999),
                  torch.zeros(1, 77, meta.config.cross_attention_dim))
    try:
        meta(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [{"block": b, "order": " ".join(seen[b]), "resnets": len(distinct[b]["R"]),
             "attentions": len(distinct[b]["A"])} for b in seen]


# ------------------------------------------------------------------ figures


def plot_block_bars(tables: dict, key: str = "gflops", ylabel: str = "GFLOPs per step", title: str | None = None,
                    ax=None):
    """Grouped bars, one group per block, one bar per model: `tables` maps a label to rows with
    "block" and `key` (e.g. `accounting.unet_block_table` or `block_latencies` rows)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(9, 3.5))[1]
    blocks = list(dict.fromkeys(r["block"] for rows in tables.values() for r in rows))
    width = 0.8 / len(tables)
    for j, (label, rows) in enumerate(tables.items()):
        values = {r["block"]: r[key] for r in rows}
        xs = np.arange(len(blocks)) + (j - (len(tables) - 1) / 2) * width
        ax.bar(xs, [values.get(b, 0.0) for b in blocks], width, label=label)
    ax.set_xticks(np.arange(len(blocks)), [b.replace("_blocks.", " ").replace("_block", "").split(" (")[0]
                                           for b in blocks], fontsize=8)
    ax.set(ylabel=ylabel, title=title or "")
    ax.legend(fontsize=8)
    return ax
