"""``edged-cloud fleet-demo``: the whole loop on one machine, with no AWS account
(``edged_cloud.fleet_demo.story``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fleet-demo", help="the whole loop locally: train, sign, roll out to real daemons",
        description="Start a local AWS API server (moto) and mosquitto, provision N things "
        "and run a real 'edged run' daemon for each on a simulated farm; train, optimise, "
        "package, sign, publish and roll out a model v2 to them; check every device reports "
        "SUCCEEDED and serves v2 and that their captures are in S3; then roll out a "
        "tampered v3 and check the abort criteria cancel it before it reaches every "
        "device. Exits 0 only when every check held (docs/cloud.md, 'fleet-demo').")
    parser.add_argument("--devices", type=int, default=3, help="daemons to run (default 3)")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="keep every file here (new or empty; default: a temporary "
                             "directory, removed afterwards)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with the figures and the checks")
    parser.set_defaults(func=_fleet_demo)


def _fleet_demo(args: argparse.Namespace) -> int:
    import asyncio
    import tempfile

    from edged_cloud.errors import BadInput
    from edged_cloud.fleet_demo.story import Options, run

    if args.epochs < 1:
        raise BadInput(f"--epochs {args.epochs}: at least 1")
    # With --json the log goes to stderr: stdout holds the object alone.
    stream = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    with tempfile.TemporaryDirectory(prefix="edged-fleet-demo-") as scratch:
        workdir = args.workdir or Path(scratch) / "demo"
        figures = asyncio.run(run(Options(devices=args.devices, workdir=workdir,
                                          epochs=args.epochs), say))
        if args.workdir is None:
            figures["workdir"] = None  # the temporary directory is gone
    if args.json:
        print(json.dumps(figures, indent=2))
    failed = [c["name"] for c in figures["checks"] if not c["ok"]]
    say("the story held: every check passed" if figures["held"] else
        f"the story did NOT hold: {', '.join(failed)}")
    return 0 if figures["held"] else 1
