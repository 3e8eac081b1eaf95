"""Plugin ``agent``: registers the ``edged agent`` command."""

from __future__ import annotations

import argparse

from edged import hookimpl
from edged.plugin.registry import CliCommand


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--address", required=True, metavar="SOCKET",
                        help="Unix socket path to serve on (clients dial unix:///PATH)")
    parser.add_argument("-c", "--config", required=True, metavar="FILE",
                        help="an existing agent JSON config (sagemaker_edge_* keys) or "
                        "edged YAML with an `agent:` section")


def _run(args: argparse.Namespace) -> int:
    from edged.agent.main import run  # grpc and the server load only when serving

    return run(args)


@hookimpl
def edged_cli_commands() -> list[CliCommand]:
    return [CliCommand("agent", "serve the SageMaker Edge Agent gRPC API on a Unix socket",
                       _arguments, _run)]
