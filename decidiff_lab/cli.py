"""The `decidiff-lab` command line. Errors are one line on stderr with exit status 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from . import runtimes
from .accounting import architecture_summary
from .bench import BenchCase, bench_cases, decompose_speedup, markdown_table, matmul_peak_gflops, speedup
from .checker import format_scores
from .doctor import format_machine_report, machine_report, smoke_preset
from .errors import UserError
from .fetch import fetch
from .generate import check_generation_args, generate, image_grid
from .loading import default_device, load_pipeline, resolve_preset
from .presets import data_dir, get_preset
from .schedulers import check_guidance


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _arch(args) -> None:
    results = {name: architecture_summary(name, args.resolution) for name in args.presets}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'preset':10s} {'unet':>13s} {'vae':>12s} {'text_encoder':>13s} {'total':>15s} "
          f"{'GFLOPs/step':>12s} {'U-Net fp16 bytes':>17s}  (U-Net at {args.resolution}px, batch 1)")
    for name, r in results.items():
        if r["unet_is_reconstruction"]:
            note = "  U-Net config: our reconstruction"
        else:  # nano configs ship in data/; hub configs are the published ones
            note = "" if get_preset(name).is_nano else "  U-Net config: published"
        print(f"{name:10s} {r['unet']:13,d} {r['vae']:12,d} {r['text_encoder']:13,d} {r['total']:15,d} "
              f"{r['unet_gflops_per_step']:12.1f} {r['unet_fp16_safetensors_bytes']:17,d}{note}")


def _doctor(args) -> None:
    if args.smoke:
        results = [smoke_preset(name.strip()) for name in args.smoke.split(",")]
        for _, line in results:
            print(line, flush=True)
        if not all(ok for ok, _ in results):
            raise UserError("smoke test failed: see the FAILED line(s) above")
        return

    info = machine_report()
    print(json.dumps(info, indent=2) if args.json else format_machine_report(info))


def _check_out_path(path: Path) -> None:
    if path.suffix.lower() != ".png":
        raise UserError(f"--out must end in .png (got {path})")
    if not path.parent.is_dir():
        raise UserError(f"--out directory {path.parent} does not exist: create it first")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"--out directory {path.parent} is not writable")


def _generate(args) -> None:
    out = Path(args.out)
    _check_out_path(out)  # fail before minutes of loading, not after
    preset, why = resolve_preset(args.preset)
    sampling = dict(preset.sampling)
    sampling.update({k: v for k, v in (("steps", args.steps), ("guidance_scale", args.guidance)) if v is not None})
    check_generation_args(sampling["steps"], 8 if args.height is None else args.height,
                          8 if args.width is None else args.width, args.num_images)
    check_guidance(sampling["guidance_scale"], sampling["guidance_rescale"])
    pipe = load_pipeline(preset, verbose=False, why=why)
    print(f"preset {preset.name} ({why}); {sampling['steps']} steps, guidance {sampling['guidance_scale']} "
          f"(rescale {sampling['guidance_rescale']}), sampler {type(pipe.scheduler).__name__}, seed {args.seed}")
    start = time.perf_counter()
    images = generate(pipe, args.prompt, **sampling, seed=args.seed, height=args.height, width=args.width,
                      num_images=args.num_images)
    seconds = time.perf_counter() - start
    tmp = out.with_name(f".{out.name}.partial")
    Image.fromarray(image_grid(images) if len(images) > 1 else images[0]).save(tmp, format="PNG")
    tmp.replace(out)  # atomic: no half-written PNG if interrupted
    print(f"wrote {out} ({len(images)} image{'s' * (len(images) > 1)}) in {seconds:.2f} s")


def _train_nano(args) -> None:
    from .training.recipe import Recipe
    from .training.train import train_nano

    recipe = Recipe.quick() if args.quick else Recipe()
    if args.recipe:  # a recipe.json (as a run writes it), whole or in part
        try:
            fields = json.loads(Path(args.recipe).read_text())
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
            recipe = replace(recipe, **fields)
        except (OSError, ValueError, TypeError) as err:
            raise UserError(f"--recipe {args.recipe}: {err} (a JSON object of Recipe fields, like a run's recipe.json)")
    if args.minutes is not None:
        recipe.vae_minutes = recipe.clip_minutes = recipe.clip_relation_minutes = recipe.unet_minutes = args.minutes
    recipe.seed = args.seed if args.seed is not None else recipe.seed
    recipe.joint_text_encoder = args.joint_text_encoder or recipe.joint_text_encoder
    out = args.out or ("build/nano-quick" if args.quick else str(data_dir()))  # --quick never overwrites data/
    start = time.perf_counter()
    train_nano(Path(out), Path(args.workdir), recipe, only=tuple(args.only.split(",")))
    print(f"trained the nano models into {out} in {(time.perf_counter() - start) / 60:.1f} min")


def _number_list(text: str, flag: str, cast=int) -> list:
    """"16,10" -> [16, 10]; a one-line error naming `flag` otherwise."""
    try:
        return [cast(v) for v in text.split(",")]
    except ValueError:
        kind, example = ("integers", "16,10") if cast is int else ("numbers", "2.5,5")
        raise UserError(f"{flag} takes comma-separated {kind} like {example} (got {text!r})") from None


def _int_list(text: str) -> list[int]:
    values = _number_list(text, "--steps")
    if any(v < 1 for v in values):
        raise UserError(f"--steps must be positive (got {text!r})")
    return values


def _bench(args) -> None:
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1 (got {args.repeats})")
    steps_list = _int_list(args.steps)
    runtimes_list = [r.strip() for r in args.runtimes.split(",")]
    for runtime in runtimes_list:
        runtimes.missing(runtime)  # an unknown name fails here, in one line, before anything loads
    device = args.device or default_device()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(args.dtype)
    peak = matmul_peak_gflops(device, dtype)  # None: the dtype pipelines load in on this device
    cases = []
    for name in args.presets.split(","):
        preset = get_preset(name.strip())
        try:
            pipe = load_pipeline(preset, device=device, dtype=dtype, verbose=False)
        except UserError as err:
            print(f"skip {preset.name}: {err}", file=sys.stderr)
            continue
        available = []
        for runtime in runtimes_list:
            if why := runtimes.missing(runtime):
                print(f"skip {runtime}: {why}", file=sys.stderr)
            else:
                available.append(runtime)
        runs = runtimes.with_runtimes(pipe, [r for r in available if r != "eager"], threads=torch.get_num_threads())
        for runtime in available:
            run = runs.get(runtime, pipe)
            name = preset.name if runtime == "eager" else f"{preset.name} [{runtime}]"
            cases += [BenchCase(name, run, steps, preset.default_guidance, preset.guidance_rescale)
                      for steps in steps_list]
    if not cases:
        return  # every preset was skipped, each with its one line
    # Every preset and step count in the same interleaved rounds: their ratios share the machine's state.
    records = bench_cases(cases, repeats=args.repeats, warmup=args.warmup, usd_per_hour=args.usd_per_hour,
                          peak_gflops=peak)
    for record in records:
        low, high = record["seconds_interval"]
        print(f"{record['preset']:10s} {record['steps']:3d} steps: {record['seconds_per_image']:.3f} s/image best "
              f"(median {record['seconds_median']:.3f}, 95% interval {low:.3f}-{high:.3f}), "
              f"U-Net {record['unet_seconds_per_step'] * 1e3:.1f} ms/step, {record['achieved_gflops']:.1f} GFLOP/s "
              f"= {record['peak_fraction']:.0%} of matmul peak", flush=True)
    if args.markdown:
        print(markdown_table(records))
    names = {r["preset"] for r in records}
    pairs = [(sd + tag, deci + tag) for sd, deci in (("nano-sd", "nano-deci"), ("sd15", "deci-v2"), ("sd15", "deci-v1"))
             for tag in ["" if r == "eager" else f" [{r}]" for r in runtimes_list]]
    for sd, deci in pairs:
        if len(steps_list) >= 2 and {sd, deci} <= names:
            split = decompose_speedup(records, (sd, max(steps_list)), (deci, min(steps_list)))
            total = speedup(records, (sd, max(steps_list)), (deci, min(steps_list)))
            low, high = total["interval"]
            print(f"speed-up {deci}@{min(steps_list)} vs {sd}@{max(steps_list)}: {split['measured_total']:.2f}x best rounds "
                  f"(per-round ratios: median {total['paired_median']:.2f}x, 95% interval {low:.2f}-{high:.2f}) "
                  f"= fewer steps {split['fewer_steps']:.2f}x "
                  f"x cheaper U-Net {split['cheaper_unet']:.2f}x (product {split['product']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
        print(f"wrote {args.json}")


def _evaluate(args) -> None:
    from .training.evaluation import evaluate_pipeline  # local: the recipe's imports (~1 s) only for `evaluate`

    if args.prompts < 1:
        raise UserError(f"--prompts must be at least 1 (got {args.prompts})")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be a positive integer (got {args.steps})")
    sweep = None if args.guidance is None else _number_list(args.guidance, "--guidance", float)
    for value in sweep or []:
        check_guidance(value)
    for name in args.presets.split(","):
        preset = get_preset(name.strip())
        steps = preset.default_steps if args.steps is None else args.steps
        pipe = load_pipeline(preset, verbose=False)
        for guidance in sweep or [preset.default_guidance]:
            start = time.perf_counter()
            report = evaluate_pipeline(pipe, preset.name, args.prompts, args.seed, steps=steps, split=args.split,
                                       guidance_scale=guidance, guidance_rescale=preset.guidance_rescale)
            print(f"{preset.name}: {steps} steps, guidance {guidance}, {2 * args.prompts} {args.split} "
                  f"prompts ({time.perf_counter() - start:.0f} s)\n{format_scores(report)}", flush=True)


def _fetch(args) -> None:
    for name in args.presets:
        path, size = fetch(name)
        print(f"{name}: {size / 2**30:.2f} GiB in {path} (pinned commit {path.name})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="decidiff-lab", description="DeciDiffusion vs Stable Diffusion 1.5, taken apart.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    arch = sub.add_parser("arch", help="parameters and U-Net FLOPs per step, computed on the meta device")
    arch.add_argument("presets", nargs="+", help="preset names, e.g. sd15 deci-v1 deci-v2")
    arch.add_argument("--resolution", type=int, default=512, help="image side in pixels (default 512)")
    arch.add_argument("--json", action="store_true", help="print one JSON object keyed by preset")
    arch.set_defaults(run=_arch)

    gen = sub.add_parser("generate", help="text to image with any preset; writes a PNG (a grid when K > 1)")
    gen.add_argument("prompt")
    gen.add_argument("--preset", default="auto", help="auto | nano-deci | nano-sd | deci-v1 | deci-v2 | sd15")
    gen.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    gen.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--out", default="out.png")
    gen.set_defaults(run=_generate)

    bench = sub.add_parser("bench", help="latency per image and per component, FLOP/s, cost per 10k images")
    bench.add_argument("--presets", default="nano-sd,nano-deci")
    bench.add_argument("--steps", default="16,10", help="comma-separated step counts")
    bench.add_argument("--repeats", type=int, default=5, help="interleaved rounds: every case once per round")
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--usd-per-hour", type=float, default=None, help="machine price, for cost per 10k images")
    bench.add_argument("--device", default=None)
    bench.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="default: fp16 on CUDA")
    bench.add_argument("--runtimes", default="eager",
                       help="comma-separated U-Net runtimes: eager, torch.compile, onnxruntime, openvino (the last two: CPU)")
    bench.add_argument("--json", default=None, help="write one record per (preset, steps) here")
    bench.add_argument("--markdown", action="store_true", help="also print a markdown table")
    bench.set_defaults(run=_bench)

    train = sub.add_parser("train-nano", help="train the nano VAE, CLIP and both U-Nets (resumable)")
    train.add_argument("--out", default=None,
                       help="where the pipeline folders go (default: data/; build/nano-quick with --quick)")
    train.add_argument("--workdir", default="build/train-nano", help="checkpoints and CSV logs")
    train.add_argument("--quick", action="store_true",
                       help="a few minutes, for learners: U-Nets only, on the shipped VAE and CLIP")
    train.add_argument("--minutes", type=float, default=None, help="override each stage's minute budget")
    train.add_argument("--seed", type=int, default=None, help="the recipe's seed (default 0)")
    train.add_argument("--recipe", default=None, help="a JSON file of Recipe fields to override (e.g. a run's recipe.json)")
    train.add_argument("--only", default="nano-sd,nano-deci", choices=["nano-sd,nano-deci", "nano-sd", "nano-deci"],
                       help="which U-Nets to train")
    train.add_argument("--joint-text-encoder", action="store_true",
                       help="fine-tune CLIP's text tower with nano-sd's U-Net, then freeze it for nano-deci")
    train.set_defaults(run=_train_nano)

    ev = sub.add_parser("evaluate", help="caption-checker accuracy (colour, shape, place) on held-out prompts")
    ev.add_argument("--presets", default="nano-sd,nano-deci")
    ev.add_argument("--prompts", type=int, default=48, help="prompts per kind (single object, pair)")
    ev.add_argument("--split", choices=["test", "train"], default="test",
                    help="test: combinations never seen in training")
    ev.add_argument("--steps", type=int, default=None, help="default: the preset's (nano-sd 16, nano-deci 10)")
    ev.add_argument("--guidance", default=None,
                    help="guidance scale, or comma-separated scales to sweep (default: the preset's)")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(run=_evaluate)

    fetch = sub.add_parser("fetch", help="pre-download real presets' pinned weights (once per workshop)")
    fetch.add_argument("presets", nargs="+", help="e.g. deci-v2 sd15")
    fetch.set_defaults(run=_fetch)

    doctor = sub.add_parser("doctor", help="versions, device, hub reachability, locally available presets")
    doctor.add_argument("--json", action="store_true")
    doctor.add_argument("--smoke", nargs="?", const="deci-v2,deci-v1,sd15", default=None, metavar="PRESETS",
                        help="instructors, on a GPU with the hub: load the pinned real presets, check the U-Net "
                             "against its checkpoint, generate one image each (default: deci-v2,deci-v1,sd15)")
    doctor.set_defaults(run=_doctor)
    return parser


def _check(args) -> None:
    if getattr(args, "resolution", 8) <= 0 or getattr(args, "resolution", 8) % 8:
        raise UserError(f"--resolution must be a positive multiple of 8 (got {args.resolution})")
    names = getattr(args, "presets", None)
    if names:
        for name in names.split(",") if isinstance(names, str) else names:
            get_preset(name.strip())


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _check(args)
        args.run(args)
    except UserError as err:
        print(f"decidiff-lab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("decidiff-lab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
