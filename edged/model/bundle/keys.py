"""Ed25519 signing keys and the device's trust store.

Which keys a device trusts, and which it no longer does, is configuration: a directory of
public keys and/or keys listed in the config, minus the revoked key ids. Trusting a new
key or revoking one never needs a code change or a new release.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edged.base.errors import ConfigError
from edged.model.bundle.errors import BundleError
from edged.model.trust import KEY_ID_PATTERN, TrustConfig  # re-exported: bundle's API

__all__ = ["KEY_ID_PATTERN", "PUBLIC_KEY_SUFFIXES", "TrustConfig", "TrustStore",
           "generate_keypair", "key_id", "load_private_key", "load_public_key",
           "public_pem"]

PUBLIC_KEY_SUFFIXES = (".pem", ".pub")


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex characters of the SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_keypair(directory: Path, name: str = "signing") -> tuple[Path, Path]:
    """Write ``NAME.key.pem`` (private, mode 0600) and ``NAME.pub.pem`` under
    ``directory``; return both paths. Never overwrites an existing key."""
    directory.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    private_path = directory / f"{name}.key.pem"
    public_path = directory / f"{name}.pub.pem"
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # O_EXCL: a second keygen must not silently replace a key already in use.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(public_pem(private.public_key()))
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted PKCS#8 PEM Ed25519 private key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError([f"{path}: cannot load the private key: {exc}"]) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError([f"{path}: not an Ed25519 private key"])
    return key


def load_public_key(source: str | bytes | Path) -> Ed25519PublicKey:
    """A public key from PEM text (or bytes) or from the path of a PEM file."""
    origin = str(source)[:40] if not isinstance(source, Path) else str(source)
    try:
        if isinstance(source, Path):
            data = source.read_bytes()
        elif isinstance(source, bytes):
            data = source
        elif "-----BEGIN" in source:
            data = source.encode()
        else:
            origin = source
            data = Path(source).expanduser().read_bytes()
        key = serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError([f"{origin}: cannot load the public key: {exc}"]) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError([f"{origin}: not an Ed25519 public key"])
    return key


def _is_private_key(path: Path) -> bool:
    """`keygen` writes both halves into one directory; a private key beside the public
    ones is never a trust anchor, so a keys_dir may be that directory."""
    try:
        return b"PRIVATE KEY" in path.read_bytes()[:200]
    except OSError:
        return False


@dataclass(frozen=True)
class TrustStore:
    """Trusted public keys by key id, and the revoked ids."""

    keys: dict[str, Ed25519PublicKey]
    revoked: frozenset[str] = frozenset()

    @classmethod
    def from_keys(cls, *keys: Ed25519PublicKey, revoked: tuple[str, ...] = ()) -> TrustStore:
        return cls({key_id(k): k for k in keys}, frozenset(revoked))

    @classmethod
    def from_config(cls, config: TrustConfig) -> TrustStore:
        """Load every key the config names; a key that cannot be read is a config error."""
        keys: dict[str, Ed25519PublicKey] = {}
        problems: list[str] = []
        sources: list[str | Path] = []
        if config.keys_dir is not None:
            directory = config.keys_dir.expanduser()
            if not directory.is_dir():
                problems.append(f"trust.keys_dir: {directory} is not a directory")
            else:
                sources += sorted(p for p in directory.iterdir()
                                  if p.suffix in PUBLIC_KEY_SUFFIXES and p.is_file()
                                  and not _is_private_key(p))
        sources += config.keys
        for source in sources:
            try:
                key = load_public_key(source)
            except ConfigError as exc:
                problems += exc.problems
                continue
            keys[key_id(key)] = key
        if problems:
            raise ConfigError(problems)
        return cls(keys, frozenset(config.revoked))

    def public_key(self, kid: str) -> Ed25519PublicKey:
        """The trusted key ``kid``; refuses revoked and unknown ids."""
        if kid in self.revoked:
            raise BundleError("revoked_key", f"signing key {kid} is revoked")
        try:
            return self.keys[kid]
        except KeyError:
            raise BundleError("unknown_key", f"signing key {kid} is not trusted here") from None
