"""Does the benchmark agree with itself and with an outside timing? (`make bench-agreement`)

1. `decidiff-lab bench` twice, as two separate processes, one after the other: nano-deci@10 vs
   nano-sd@16 should come out the same within 5%.
2. An independent timing that shares no code with `decidiff_lab.bench`: the plain diffusers
   pipelines loaded from data/ with `DiffusionPipeline.from_pretrained`, called as diffusers
   documents (`pipe(prompt, num_inference_steps=16)`; nano-deci's scheduler squeezes 16 to 10
   itself), alternating, best of `--rounds`. The bench's ratio should be within 15% of it.

Exits 1 when either check fails. Run it on a quiet machine: it measures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench_ratio(repeats: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        subprocess.run([sys.executable, "-m", "decidiff_lab", "bench", "--presets", "nano-sd,nano-deci",
                        "--steps", "16,10", "--repeats", str(repeats), "--json", str(out)], check=True)
        seconds = {(r["preset"], r["steps"]): r["seconds_per_image"] for r in json.loads(out.read_text())}
    return seconds[("nano-sd", 16)] / seconds[("nano-deci", 10)]


def plain_diffusers_ratio(rounds: int) -> float:
    import torch
    from diffusers import DiffusionPipeline

    import decidiff_lab  # noqa: F401  registers nano-deci's U-Net and scheduler classes with diffusers

    prompt = "a blue square to the left of a green triangle"
    pipes = {name: DiffusionPipeline.from_pretrained(ROOT / "data" / name) for name in ("nano-sd", "nano-deci")}
    best = dict.fromkeys(pipes, float("inf"))
    for k in range(rounds + 1):  # round 0 warms up
        for name, pipe in pipes.items():
            pipe.set_progress_bar_config(disable=True)
            start = time.perf_counter()
            with torch.inference_mode():
                pipe(prompt, num_inference_steps=16, guidance_scale=2.5, generator=torch.Generator().manual_seed(k))
            if k:
                best[name] = min(best[name], time.perf_counter() - start)
    return best["nano-sd"] / best["nano-deci"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds of each `decidiff-lab bench` run")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the independent timing")
    args = parser.parse_args()
    first, second = bench_ratio(args.repeats), bench_ratio(args.repeats)
    outside = plain_diffusers_ratio(args.rounds)
    between_runs = abs(first - second) / min(first, second)
    vs_outside = abs((first + second) / 2 - outside) / outside
    print(f"bench run 1: {first:.2f}x, run 2: {second:.2f}x (they differ by {between_runs:.1%}; target < 5%)")
    print(f"plain diffusers, interleaved, best of {args.rounds}: {outside:.2f}x "
          f"(the bench's mean differs by {vs_outside:.1%}; target < 15%)")
    return 0 if between_runs < 0.05 and vs_outside < 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())
