"""Issue 13, item 7 (trusted JSON and bundles): what repeated keys and a huge tar metadata
header do to the decoders of the tree at ``--tree``.

    .venv/bin/python benchmarks/abuse/bundle_abuse.py [--tree PATH] [--pax-mb 50]

Builds, with this checkout's edged and a fresh signing key, real signed bundles of the
shipped wind-turbine model, then checks each in a child process that imports edged from
``--tree`` (default: the checkout this script lives in), exactly as the jobs executor
does (``extract_bundle`` then ``verify_bundle``):

1. a bundle whose signed manifest lists ``model.onnx`` twice, a decoy hash first and the
   true one last: accepted or refused;
2. the good bundle with a ``--pax-mb`` MB pax extended header on its manifest entry: the
   outcome, the wall time, and the child's peak RSS (and the same for the plain bundle,
   as the baseline);
3. a job document whose ``bundle.sha256`` is given twice, and a capture request whose
   ``turbine`` is given twice: accepted or refused.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(HERE))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from edged.model.bundle import build_bundle, extract_bundle, sign_manifest  # noqa: E402
from edged.model.bundle.keys import public_pem  # noqa: E402
from edged.model.package import resolve_model_path  # noqa: E402

# Run in the child, with the tree's edged first on sys.path.
CHILD = r"""
import json, sys, time
from pathlib import Path
import edged
try:  # the floors of issue 14; the tree before them had these at the top level
    from edged.model.bundle import TrustStore, extract_bundle, verify_bundle
    from edged.model.bundle.keys import load_public_key
    from edged.cloud.jobs.document import parse_document
    from edged.cloud.capture_requests import CaptureRequests
    from edged.base.metrics import Counters
except ImportError:
    from edged.bundle import TrustStore, extract_bundle, verify_bundle
    from edged.bundle.keys import load_public_key
    from edged.jobs.document import parse_document
    from edged.capture.commands import CaptureCommands as CaptureRequests
    from edged.metrics import Counters

kind, arg, pem, work = sys.argv[1:5]
result = {"edged": edged.__file__}
started = time.monotonic()
try:
    if kind == "bundle":
        trust = TrustStore.from_keys(load_public_key(Path(pem).read_bytes()))
        slot = extract_bundle(Path(arg), Path(work) / "slot")
        manifest = verify_bundle(slot, trust, installed_version=None)
        result["outcome"] = f"accepted (version {manifest.version})"
    elif kind == "document":
        parse_document(Path(arg).read_text())
        result["outcome"] = "accepted"
    else:
        class Capture:
            def request(self, turbine, duration_s):
                result["captured_turbine"] = turbine
        requests = CaptureRequests(link=None, thing="gw", captures={"turbines": Capture()},
                                   counters=Counters())
        response = requests.handle(Path(arg).read_bytes())
        result["outcome"] = response["status"] + (
            f": {response['reason']}" if response["status"] == "rejected" else "")
except Exception as exc:
    detail = getattr(exc, "detail", None) or str(exc)
    result["outcome"] = f"refused: {getattr(exc, 'reason', type(exc).__name__)}: {detail[:160]}"
result["seconds"] = round(time.monotonic() - started, 3)
# VmHWM, not ru_maxrss: exec keeps the parent's ru_maxrss (which built a 50 MB header).
hwm = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM")]
result["peak_rss_mb"] = round(int(hwm[0].split()[1]) / 1024, 1)
print(json.dumps(result))
"""


def check(tree: Path, kind: str, path: Path, pem: Path, tmp: Path) -> dict:
    work = Path(tempfile.mkdtemp(dir=tmp))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", CHILD, kind, str(path), str(pem), str(work)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=work,
                          check=False)
    shutil.rmtree(work, ignore_errors=True)
    if done.returncode != 0:
        return {"outcome": f"child exited {done.returncode}", "stderr": done.stderr[-800:]}
    return json.loads(done.stdout.splitlines()[-1])  # after any log lines


def repack(source: Path, out: Path, *, manifest_edit=None, key=None,
           pax_bytes: int = 0) -> Path:
    """``source``'s entries again as a ustar/pax tar.gz, the manifest edited (and signed
    anew) if asked, with a ``pax_bytes`` pax header on manifest.json if asked."""
    stage = extract_bundle(source, out.with_suffix(".stage"))
    if manifest_edit is not None:
        manifest = stage / "manifest.json"
        manifest.write_text(manifest_edit(manifest.read_text()))
        (stage / "manifest.sig").write_bytes(sign_manifest(manifest.read_bytes(), key))
    with gzip.open(out, "wb", compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(stage.iterdir()):
            info = tarfile.TarInfo(path.name)
            info.size = path.stat().st_size
            if pax_bytes and path.name == "manifest.json":
                info.pax_headers = {"comment": "x" * pax_bytes}
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return out


def list_model_twice(text: str) -> str:
    true = json.loads(text)["files"]["model.onnx"]
    entry = f'"model.onnx": "{true}"'
    return text.replace(entry, f'"model.onnx": "{"0" * 64}", {entry}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=HERE)
    parser.add_argument("--pax-mb", type=int, default=50)
    args = parser.parse_args()
    tree = args.tree.resolve()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        key = Ed25519PrivateKey.generate()
        pem = tmp / "release.pub.pem"
        pem.write_bytes(public_pem(key.public_key()))
        model = tmp / "windturbine-v2"
        shutil.copytree(resolve_model_path("builtin:windturbine-v1"), model)
        good = build_bundle(model, tmp / "good.tar.gz", key)
        twice = repack(good, tmp / "twice.tar.gz", manifest_edit=list_model_twice, key=key)
        pax = repack(good, tmp / "pax.tar.gz", pax_bytes=args.pax_mb << 20)
        bundle = good.read_bytes()
        document = {"operation": "edged.deploy-model",
                    "bundle": {"url": "https://b.example.com/w.tar.gz",
                               "sha256": hashlib.sha256(bundle).hexdigest(),
                               "size": len(bundle)},
                    "model": {"name": "windturbine", "version": 2}}
        text = json.dumps(document)
        entry = f'"sha256": "{document["bundle"]["sha256"]}"'
        doc = tmp / "document.json"
        doc.write_text(text.replace(entry, f'"sha256": "{"0" * 64}", {entry}'))
        request = tmp / "request.json"
        request.write_bytes(b'{"pipeline": "turbines", "turbine": "turbine-1", '
                            b'"turbine": "*", "duration_s": 60, "request_id": "r"}')
        figures = {
            "tree": str(tree),
            "good_bundle": check(tree, "bundle", good, pem, tmp),
            "manifest_lists_a_file_twice": check(tree, "bundle", twice, pem, tmp),
            f"pax_header_{args.pax_mb}_mb": check(tree, "bundle", pax, pem, tmp)
            | {"archive_kb": round(pax.stat().st_size / 1024)},
            "job_document_sha256_twice": check(tree, "document", doc, pem, tmp),
            "capture_request_turbine_twice": check(tree, "request", request, pem, tmp),
        }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.stdin.close()
    main()
