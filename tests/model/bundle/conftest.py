"""A signed bundle of the built-in model, and helpers to take one apart and repack it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.model.bundle import TrustStore, build_bundle, extract_bundle, pack_bundle, sign_manifest
from edged.model.package import read_manifest, resolve_model_path

BUILTIN = resolve_model_path("builtin:windturbine-v1")


@dataclass
class Signed:
    key: Ed25519PrivateKey
    trust: TrustStore
    model_dir: Path
    bundle: Path
    tmp: Path

    def unpack(self, name: str = "stage") -> Path:
        """The bundle's files in a fresh directory, to tamper with before ``repack``."""
        return extract_bundle(self.bundle, self.tmp / name)

    def repack(self, stage: Path, name: str = "bad.tar.gz") -> Path:
        return pack_bundle({p.name: p for p in stage.iterdir()}, self.tmp / name)

    def resign(self, stage: Path, key: Ed25519PrivateKey | None = None) -> None:
        data = (stage / "manifest.json").read_bytes()
        (stage / "manifest.sig").write_bytes(sign_manifest(data, key or self.key))


@pytest.fixture
def signed(tmp_path: Path) -> Signed:
    model_dir = tmp_path / "windturbine-v2"
    shutil.copytree(BUILTIN, model_dir)
    key = Ed25519PrivateKey.generate()
    bundle = build_bundle(model_dir, tmp_path / "windturbine.tar.gz", key)
    return Signed(key, TrustStore.from_keys(key.public_key()), model_dir, bundle, tmp_path)


@pytest.fixture(scope="session")
def installed_manifest():
    return read_manifest(BUILTIN)
