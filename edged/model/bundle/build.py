"""Build a signed model bundle from a model directory (used by tests and cloud_tools).

The archive is reproducible: the same directory and key give the same bytes (sorted
entries, fixed mtime/owner/mode, gzip header without a time or file name), so a bundle's
SHA-256 identifies its content.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import tarfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.base.errors import ModelError
from edged.model.bundle.keys import key_id as key_id_of
from edged.model.package import MANIFEST, ModelManifest, parse_manifest, sha256_file

SIGNATURE = "manifest.sig"
#: Names a bundle may hold: plain top-level files, nothing hidden, no paths.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
ALG = "ed25519"


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey,
                  key_id: str | None = None) -> bytes:
    """The content of ``manifest.sig`` for these exact manifest bytes."""
    kid = key_id or key_id_of(private_key.public_key())
    signature = base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii")
    return (json.dumps({"alg": ALG, "key_id": kid, "signature": signature}, indent=2)
            + "\n").encode()


def manifest_bytes(manifest: ModelManifest) -> bytes:
    """The canonical serialisation the builder writes (and signs)."""
    data = manifest.model_dump(mode="json", exclude_none=True)
    return (json.dumps(data, indent=2) + "\n").encode()


def model_files(model_dir: Path) -> list[Path]:
    """The files a bundle of ``model_dir`` carries besides the manifest and signature."""
    found = []
    for path in sorted(model_dir.iterdir()):
        if path.name in (MANIFEST, SIGNATURE):
            continue
        if path.is_symlink() or not path.is_file() or not SAFE_NAME.match(path.name):
            raise ModelError(f"{path}: a bundle holds only plain top-level files "
                             f"named like {SAFE_NAME.pattern}")
        found.append(path)
    return found


def pack_bundle(entries: dict[str, bytes | Path], out: Path) -> Path:
    """Write ``entries`` (name -> content or file) as a reproducible tar.gz at ``out``,
    atomically (a reader never sees half a bundle)."""
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(entries):
            content = entries[name]
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid = 0o644, 0, 0, 0
            info.uname = info.gname = ""
            if isinstance(content, Path):
                info.size = content.stat().st_size
                with content.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    os.replace(tmp, out)
    return out


def build_bundle(model_dir: Path, out: Path, private_key: Ed25519PrivateKey,
                 key_id: str | None = None) -> Path:
    """Bundle ``model_dir``: its manifest with ``files`` rehashed over every other file,
    ``manifest.sig`` over the manifest's exact bytes, and the files themselves."""
    manifest = parse_manifest(model_dir / MANIFEST)
    files = model_files(model_dir)
    names = {f.name for f in files}
    for needed in (manifest.model, manifest.golden):
        if needed is not None and needed not in names:
            raise ModelError(f"{model_dir}: the manifest names {needed!r}, which is missing")
    if manifest.golden is None:
        raise ModelError(f"{model_dir}: a bundle needs golden pairs (the manifest's 'golden')")
    manifest = manifest.model_copy(update={"files": {f.name: sha256_file(f) for f in files}})
    data = manifest_bytes(manifest)
    entries: dict[str, bytes | Path] = {f.name: f for f in files}
    entries[MANIFEST] = data
    entries[SIGNATURE] = sign_manifest(data, private_key, key_id)
    return pack_bundle(entries, out)
