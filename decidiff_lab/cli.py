"""The `decidiff-lab` command line. Errors are one line on stderr with exit status 2."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _arch(args) -> None:
    from .accounting import architecture_summary

    results = {name: architecture_summary(name, args.resolution) for name in args.presets}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'preset':10s} {'unet':>13s} {'vae':>12s} {'text_encoder':>13s} {'total':>15s} "
          f"{'GFLOPs/step':>12s}  (U-Net at {args.resolution}px, batch 1)")
    for name, r in results.items():
        note = "  U-Net config: our reconstruction" if r["unet_is_reconstruction"] else ""
        print(f"{name:10s} {r['unet']:13,d} {r['vae']:12,d} {r['text_encoder']:13,d} {r['total']:15,d} "
              f"{r['unet_gflops_per_step']:12.1f}{note}")


def _doctor(args) -> None:
    from .doctor import format_report, report

    info = report()
    print(json.dumps(info, indent=2) if args.json else format_report(info))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="decidiff-lab", description="DeciDiffusion vs Stable Diffusion 1.5, taken apart.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    arch = sub.add_parser("arch", help="parameters and U-Net FLOPs per step, computed on the meta device")
    arch.add_argument("presets", nargs="+", help="preset names, e.g. sd15 deci-v1 deci-v2")
    arch.add_argument("--resolution", type=int, default=512, help="image side in pixels (default 512)")
    arch.add_argument("--json", action="store_true", help="print one JSON object keyed by preset")
    arch.set_defaults(run=_arch)

    doctor = sub.add_parser("doctor", help="versions, device, hub reachability, locally available presets")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(run=_doctor)
    return parser


def _check(args) -> None:
    if getattr(args, "resolution", 8) <= 0 or getattr(args, "resolution", 8) % 8:
        raise UserError(f"--resolution must be a positive multiple of 8 (got {args.resolution})")
    if getattr(args, "presets", None):
        from .presets import get_preset

        for name in args.presets:
            get_preset(name)


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
