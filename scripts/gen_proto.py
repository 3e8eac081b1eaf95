#!/usr/bin/env python3
"""Regenerate the agent's gRPC Python modules from ``edged/agent/proto/agent.proto``.

    python scripts/gen_proto.py           # rewrite agent_pb2.py, agent_pb2.pyi, agent_pb2_grpc.py
    python scripts/gen_proto.py --check   # exit 1 if the committed files are stale

The generated files are committed, so a device install needs neither protoc nor
grpcio-tools. They are made with grpcio-tools 1.81.1 exactly: its output runs on
protobuf 6.31+ and 7, while newer grpcio-tools emit code that refuses protobuf < 7.35
(a device with the distribution's protobuf 6 could not import it). Any other version is
refused rather than silently producing different files.

protoc writes ``import agent_pb2`` into the grpc module, which only works with the proto
directory on ``sys.path``; the import is rewritten to ``from edged.agent.proto import
agent_pb2``.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TextIO

REQUIRED_GRPCIO_TOOLS = "1.81.1"
ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "edged" / "agent" / "proto"
PROTO = "agent.proto"
GENERATED = ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py")
PACKAGE = "edged.agent.proto"


def _say(message: str, stream: TextIO = sys.stdout) -> None:
    stream.write(f"gen_proto: {message}\n")


def _check_tools() -> str | None:
    try:
        version = metadata.version("grpcio-tools")
    except metadata.PackageNotFoundError:
        return (f"grpcio-tools is not installed; install grpcio-tools=={REQUIRED_GRPCIO_TOOLS} "
                "(pip install -e '.[dev]')")
    if version != REQUIRED_GRPCIO_TOOLS:
        return (f"grpcio-tools {version} is installed but {REQUIRED_GRPCIO_TOOLS} is required: "
                "newer releases generate code that needs protobuf >= 7.35, which devices "
                "with protobuf 6 cannot import, and other versions would not reproduce "
                "the committed files")
    return None


def generate(out_dir: Path) -> None:
    """Run protoc on agent.proto, writing the three modules into ``out_dir``."""
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
           f"--python_out={out_dir}", f"--pyi_out={out_dir}",
           f"--grpc_python_out={out_dir}", str(PROTO_DIR / PROTO)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"protoc failed ({result.returncode}):\n{result.stderr}")
    grpc_module = out_dir / "agent_pb2_grpc.py"
    text = grpc_module.read_text()
    fixed, count = re.subn(r"^import agent_pb2 as agent__pb2$",
                           f"from {PACKAGE} import agent_pb2 as agent__pb2",
                           text, flags=re.MULTILINE)
    if count != 1:
        raise SystemExit("could not find the `import agent_pb2` line in the generated "
                         "grpc module; has protoc's output changed?")
    grpc_module.write_text(fixed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary directory and compare; "
                        "exit 1 if the committed files differ")
    args = parser.parse_args(argv)
    problem = _check_tools()
    if problem:
        _say(problem, sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        if args.check:
            stale = [name for name in GENERATED
                     if not (PROTO_DIR / name).is_file()
                     or not filecmp.cmp(out / name, PROTO_DIR / name, shallow=False)]
            if stale:
                _say(f"stale or missing: {', '.join(stale)}; "
                     "run `python scripts/gen_proto.py`", sys.stderr)
                return 1
            _say("generated files are current")
            return 0
        for name in GENERATED:
            shutil.copyfile(out / name, PROTO_DIR / name)
            _say(f"wrote {(PROTO_DIR / name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
