"""``edged-cloud``: the cloud half of the loop, one command per step.

    edged-cloud data synth|import|from-captures    a training set
    edged-cloud train                              the reference autoencoder (PyTorch)
    edged-cloud optimize                           ONNX Runtime optimisation, int8, gated
    edged-cloud package / keys ...                 a signed bundle; the release keys
    edged-cloud publish                            the bundle to S3
    edged-cloud deploy / rollout ...               an IoT job to things or a group
    edged-cloud provision THING                    a thing, its certificate and its zip
    edged-cloud monitor LAKE                       drift, silence, versions across the fleet
    edged-cloud fleet-demo                         the whole loop on one machine

Each group lives in its own module under ``edged_cloud.commands`` and adds its parsers
with ``register(subparsers)``. A module imports only argparse-level things at the top;
what a command needs (torch, boto3, onnxruntime) is imported when it runs, so ``--help``
and a mistyped option never wait for, or fail on, a heavy import.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edged_cloud.errors import CloudToolError

#: The command groups, in the order ``--help`` lists them.
GROUPS = (
    "edged_cloud.commands.data",
    "edged_cloud.commands.train",
    "edged_cloud.commands.optimize",
    "edged_cloud.commands.package",
    "edged_cloud.commands.publish",
    "edged_cloud.commands.rollout",
    "edged_cloud.commands.provision",
    "edged_cloud.commands.monitor",
    "edged_cloud.commands.fleet_demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edged-cloud",
        description="Train, optimise, package, sign, publish and roll out edged models; "
                    "provision devices; monitor the fleet's models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the group exists and one of its imports is missing
                raise
            continue  # a group not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CloudToolError as exc:
        print(f"edged-cloud {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())

