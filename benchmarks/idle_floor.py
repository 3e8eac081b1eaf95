"""What an idle daemon's memory is made of, library by library (issue 20).

    .venv/bin/python benchmarks/idle_floor.py [--json]

Imports, in one fresh process each time, what the daemon is built on, adding one part
per step, and prints VmRSS after each: Python itself; numpy; ONNX Runtime; a session of
the built-in model run once (as the daemon holds it); aiomqtt (paho, ssl, asyncio); pywt;
structlog, PyYAML and pluggy; pydantic with one model defined (the config layer); and
edged itself (its plugins registered and the production config, configs/edged.yaml,
validated: what the daemon does before it starts the graph). Each step is its own
process, so one step's garbage does not count in the next; the figures are cumulative.

``benchmarks/lean.py`` measures the running daemon idle (its sockets, threads and the
graph); this says which library the megabytes come with, and so what a lower idle figure
would have to leave out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "edged" / "model" / "builtin" / "windturbine-v1" / "model.onnx"

STEPS = [
    ("python", ""),
    ("numpy", "import numpy"),
    ("onnxruntime", "import onnxruntime"),
    # As edged.model.session opens it (one thread each), without importing edged yet.
    ("a session of the model, run once", f"""
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
s = onnxruntime.InferenceSession({str(MODEL)!r}, options, providers=["CPUExecutionProvider"])
s.run(None, {{"input": numpy.zeros((8, 6, 10, 10), numpy.float32)}})"""),
    ("aiomqtt (paho, ssl, asyncio)", "import aiomqtt"),
    ("pywt", "import pywt"),
    ("structlog, yaml, pluggy", "import structlog, yaml, pluggy"),
    ("pydantic, one model", """
import pydantic
class M(pydantic.BaseModel):
    a: int = 1"""),
    ("edged: plugins and the production config", f"""
from edged.config import load_config
from edged.plugin.manager import make_plugin_manager
load_config({str(ROOT / "configs" / "edged.yaml")!r}, make_plugin_manager()[1])"""),
]

PROBE = """
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) / 1024)
"""


def measure(upto: int) -> float:
    code = "\n".join(step for _, step in STEPS[:upto + 1]) + PROBE
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return float(done.stdout.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows, before = [], 0.0
    for i, (name, _) in enumerate(STEPS):
        rss = measure(i)
        rows.append({"step": name, "rss_mb": round(rss, 1), "added_mb": round(rss - before, 1)})
        before = rss
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'with':<42}{'VmRSS MB':>9}{'added':>7}")
    for row in rows:
        print(f"{row['step']:<42}{row['rss_mb']:>9.1f}{row['added_mb']:>+7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
