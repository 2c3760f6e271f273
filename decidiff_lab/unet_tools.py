"""Looking inside a U-Net while it runs, and drawing noise schedules (notebooks 03 and 04).

Everything here works through PyTorch forward hooks, so it needs no change to the model and
works the same on diffusers' `UNet2DConditionModel` (SD 1.5, nano-sd) and on our
`FlexibleUNet2DConditionModel` (DeciDiffusion's U-Net-NAS, nano-deci):

* `count_calls`: how many times named submodules run in a forward pass (the mid-block quirk).
* `module_flops`: FLOPs of named submodules during one forward, counted on a `meta` copy.
* `block_latencies`: measured time per down/mid/up block, median over repeats.
* `cpu_threads`: run a measurement on a fixed number of CPU threads.
* `skip_stack_trace`: every skip state pushed on the down path and popped on the up path.
* `run_order`: the order in which each block really runs its ResNets, attentions and resamplers.
* `plot_block_bars`, `plot_noise_schedules`, `plot_timesteps`: the matching figures.
* `text_table`: a plain-text table of rows (dicts), so notebooks print deterministic tables
  without pandas.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .accounting import build_unet

REST = "rest (conv_in, time embedding, conv_out)"


def block_names(unet) -> list[str]:
    """"down_blocks.0", ..., "mid_block", "up_blocks.0", ...: the U-Net's blocks in run order."""
    return ([f"down_blocks.{i}" for i in range(len(unet.down_blocks))] + ["mid_block"]
            + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))])


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


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextmanager
def cpu_threads(num_threads: int | None):
    """`with cpu_threads(1): ...` runs PyTorch's CPU ops on that many threads, then restores the
    previous setting; None changes nothing.

    Why: on a CPU shared with other busy processes (two notebooks tested in parallel on two
    cores), multi-threaded kernels wait on each other at every barrier and small models run up to
    10x slower, with huge spread. One thread per process keeps timings stable and comparable.
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def block_latencies(unet, side: int | None = None, batch: int = 2, repeats: int = 10, warmup: int = 2,
                    num_threads: int | None = None) -> list[dict]:
    """Measured milliseconds per block for one U-Net call (median over `repeats`).

    A pre-hook and a hook on each down/mid/up block read the clock around it; the last row,
    `REST`, is the whole call minus the blocks (conv_in, time embedding, conv_out, glue).
    Rows: block, ms, share (of the whole call's median). `num_threads`: see `cpu_threads`.
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
            _sync(device)
            started[name] = time.perf_counter()
        return hook

    def after(name):
        def hook(*_):
            _sync(device)
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
            _sync(device)
            start = time.perf_counter()
            unet(*inputs)
            _sync(device)
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
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

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


# ------------------------------------------------------------------ tables and figures


def text_table(rows: list[dict], columns=None, formats: dict | None = None) -> str:
    """Rows (dicts) as an aligned plain-text table; `formats` maps a column to a format spec."""
    columns = list(columns or rows[0])
    formats = formats or {}

    def cell(row, col):
        value = row.get(col, "")
        if value is None:
            return "-"
        if col in formats:
            return format(value, formats[col])
        if isinstance(value, float):
            return f"{value:.3g}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,d}"
        return str(value)

    cells = [[cell(r, c) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


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


def noise_schedule_curves(scheduler) -> dict:
    """t, alphas_cumprod and log-SNR = log(ac / (1 - ac)) at every training timestep."""
    ac = scheduler.alphas_cumprod.double().numpy()
    return {"t": np.arange(len(ac)), "alphas_cumprod": ac, "log_snr": np.log(ac / (1 - ac))}


def plot_noise_schedules(schedulers: dict, axes=None):
    """Two panels, alphas_cumprod and log-SNR vs t, one line per (label, scheduler)."""
    import matplotlib.pyplot as plt

    axes = axes if axes is not None else plt.subplots(1, 2, figsize=(10, 3.5))[1]
    for label, scheduler in schedulers.items():
        curves = noise_schedule_curves(scheduler)
        axes[0].plot(curves["t"], curves["alphas_cumprod"], label=label)
        axes[1].plot(curves["t"], curves["log_snr"], label=label)
    axes[0].set(xlabel="training timestep t", ylabel="alphas_cumprod (signal kept)", title="How much signal is left")
    axes[1].set(xlabel="training timestep t", ylabel="log-SNR", title="log signal-to-noise ratio")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].figure.tight_layout()
    return axes


def plot_timesteps(timesteps: dict, ax=None, num_train_timesteps: int = 1000):
    """One row per schedule: a dot at each timestep the sampler visits (left: pure noise)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(9, 0.6 + 0.55 * len(timesteps)))[1]
    labels = list(timesteps)
    for row, label in enumerate(labels):
        ts = [int(t) for t in timesteps[label]]
        ax.plot(ts, [row] * len(ts), "o", markersize=5)
        ax.hlines(row, min(ts), max(ts), alpha=0.3)
    ax.set_yticks(range(len(labels)), [f"{label} ({len(timesteps[label])})" for label in labels], fontsize=8)
    ax.set_xlim(num_train_timesteps, -10)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set(xlabel="timestep (sampling runs left to right, from noise to image)")
    ax.grid(axis="x", alpha=0.3)
    ax.figure.tight_layout()
    return ax
