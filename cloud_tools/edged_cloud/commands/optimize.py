"""``edged-cloud optimize``: ONNX Runtime graph optimisation and int8, gated on decisions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _share(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: a share in (0, 1] or a percentage")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "optimize", help="ONNX Runtime optimisation and int8, gated on decision agreement",
        description="Optimise a model for the device (the Neo step): ONNX Runtime offline "
        "graph optimisation and int8 quantisation (dynamic or static), kept only when the "
        "device's decisions on held-out windows agree with the fp32 model's at the stated "
        "rate; the speed-up is measured here, side by side. Writes a training-output-"
        "shaped directory that 'edged-cloud package' takes (docs/cloud.md, 'optimize').")
    parser.add_argument("source", type=Path, metavar="MODEL_DIR",
                        help="a training output, a model directory or builtin:NAME")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="OUT",
                        help="the directory to write (absent or empty)")
    parser.add_argument("--quantize", choices=("auto", "none", "dynamic", "static"),
                        default="auto", help="auto (default): the fastest candidate that "
                        "passes the gate, int8 only when >= 10%% faster; none: graph "
                        "optimisation only; dynamic / static: that int8, or refused")
    parser.add_argument("--level", choices=("basic", "extended"), default="basic",
                        help="offline graph optimisation (default basic: standard ONNX "
                             "operators only, portable to any runtime and CPU)")
    parser.add_argument("--min-agreement", type=_share, default=0.995, metavar="SHARE",
                        help="decisions that must agree with fp32 (default 0.995, or 99.5%%)")
    parser.add_argument("--validation", type=Path, metavar="FILE.npz",
                        help="held-out windows ('inputs', optional 'labels'); default: the "
                             "source's validation.npz, else its golden inputs")
    parser.add_argument("--batch", type=int, default=16, help="windows per model call, as "
                        "the onnx backend's max_batch (default 16)")
    parser.add_argument("--threads", type=int, default=1,
                        help="ONNX Runtime threads, as the backend's (default 1)")
    parser.add_argument("--repeats", type=int, default=15,
                        help="timed passes per model; the median counts (default 15)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=_optimize)


def _optimize(args: argparse.Namespace) -> int:
    from edged_cloud.errors import BadInput
    from edged_cloud.optimize import optimize

    for option in ("batch", "threads", "repeats"):
        if getattr(args, option) < 1:
            raise BadInput(f"--{option} {getattr(args, option)}: at least 1")
    report = optimize(args.source, args.out, level=args.level, mode=args.quantize,
                      min_agreement=args.min_agreement, validation=args.validation,
                      batch=args.batch, threads=args.threads, repeats=args.repeats)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_rewrite_line(report["graph_rewrite"]))
        for c in report["candidates"]:
            print(f"{c['quantization']:<8} agreement {c['agreement']:.2%} "
                  f"({c['disagreements']} of {report['windows']} differ)  "
                  f"{c['us_per_window']:.1f} us/window vs fp32 {c['fp32_us_per_window']:.1f}"
                  f"  speed-up {c['speedup']:.2f}x  {'pass' if c['passed'] else 'FAIL'}")
    if not report["accepted"]:
        print(f"edged-cloud optimize: refused: {report['quantization']} decisions agree with "
              f"fp32 on {report['agreement']:.2%} of {report['windows']} validation windows, "
              f"below the required {report['min_agreement']:.2%}; nothing written",
              file=sys.stderr)
        return 1
    if not args.json:
        print(f"{args.out}: {report['quantization']} ({report['level']} graph optimisation),"
              f" agreement {report['agreement']:.2%}, speed-up {report['speedup']:.2f}x "
              f"(batch {args.batch}, {args.threads} thread(s), median of {args.repeats})")
    return 0


def _rewrite_line(rewrites: dict) -> str:
    """What graph_rewrite did before the candidates were made, in one line."""
    if "skipped" in rewrites:
        return f"graph rewrite skipped: {rewrites['skipped']}"
    done = ", ".join(f"{kind} {n}" for kind, n in rewrites["rewritten"].items())
    kept = ", ".join(f"{why} {n}" for why, n in rewrites["kept"].items())
    return f"graph rewrite: {done or 'nothing'}; ConvTranspose kept: {kept or 'none'}"
