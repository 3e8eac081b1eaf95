"""Release signing keys: a key directory with one current key, older keys kept, revoked ones
marked.

Layout of a key directory (``keys create`` makes it, mode 0700)::

    KEYDIR/keyring.json        {"format": "edged-keyring", "version": 1, "keys": [...]}
    KEYDIR/<key id>.key.pem    the private key (0600), Ed25519 PKCS#8
    KEYDIR/<key id>.pub.pem    the public key, what devices trust (``trust.keys_dir``)

Each ``keys`` entry is ``{"id", "created", "status"}``; status is ``current`` (exactly one
key signs new bundles), ``retired`` (rotated out: devices still trust it, so bundles it
signed still install) or ``revoked`` (devices must refuse it: its id goes under their
``trust.revoked``). Keys come from ``edged.model.bundle.keys.generate_keypair`` and are
named by their id (``edged.model.bundle.keys.key_id``), so a file name says which key signs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from edged_cloud.errors import BadInput, CloudToolError, NotFound

INDEX = "keyring.json"
FORMAT = "edged-keyring"
STATUSES = ("current", "retired", "revoked")
#: keyring.json is read whole; a keyring of thousands of keys is a few hundred kilobytes.
MAX_INDEX_BYTES = 1 << 20


@dataclass(frozen=True)
class KeyEntry:
    id: str
    created: str
    status: str


@dataclass(frozen=True)
class Keyring:
    directory: Path
    keys: tuple[KeyEntry, ...]

    def private_path(self, kid: str) -> Path:
        return self.directory / f"{kid}.key.pem"

    def public_path(self, kid: str) -> Path:
        return self.directory / f"{kid}.pub.pem"

    @property
    def current(self) -> KeyEntry:
        for entry in self.keys:
            if entry.status == "current":
                return entry
        raise CloudToolError(f"{self.directory}: no current key (every key is revoked); "
                             "make one with 'edged-cloud keys rotate'")

    def entry(self, kid: str) -> KeyEntry:
        matches = [e for e in self.keys if e.id == kid or (len(kid) >= 4
                                                           and e.id.startswith(kid))]
        if len(matches) != 1:
            known = ", ".join(e.id for e in self.keys) or "none"
            what = "is ambiguous" if matches else "is not in it"
            raise NotFound(f"{self.directory}: key {kid!r} {what} (keys: {known})")
        return matches[0]

    @property
    def revoked(self) -> list[str]:
        return [e.id for e in self.keys if e.status == "revoked"]


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def load(directory: Path) -> Keyring:
    """The keyring in ``directory``; NotFound when there is none, BadInput when its index
    is not one."""
    from edged.base.durable import read_at_most
    from edged.base.strict_json import JsonError, loads

    path = directory / INDEX
    try:
        data = loads(read_at_most(path, MAX_INDEX_BYTES), max_bytes=MAX_INDEX_BYTES)
    except FileNotFoundError:
        raise NotFound(f"{directory}: no key directory here (no {INDEX}); make one with "
                       "'edged-cloud keys create'") from None
    except (OSError, JsonError) as exc:
        raise BadInput(f"{path}: cannot read: {exc}") from None
    try:
        if data["format"] != FORMAT:
            raise ValueError(f"format is {data['format']!r}, not {FORMAT!r}")
        keys = tuple(KeyEntry(str(k["id"]), str(k["created"]), str(k["status"]))
                     for k in data["keys"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"{path}: not an edged keyring: {exc}") from None
    for entry in keys:
        if entry.status not in STATUSES:
            raise BadInput(f"{path}: key {entry.id} has status {entry.status!r}, not one "
                           f"of {', '.join(STATUSES)}")
    if sum(e.status == "current" for e in keys) > 1:
        raise BadInput(f"{path}: more than one current key")
    return Keyring(directory, keys)


def _save(ring: Keyring) -> None:
    from edged.base.durable import write_durably

    body = {"format": FORMAT, "version": 1, "keys": [asdict(e) for e in ring.keys]}
    write_durably(ring.directory / INDEX, [(json.dumps(body, indent=2) + "\n").encode()],
                  fsync=True)


def _new_key(directory: Path) -> str:
    """A fresh key pair in ``directory`` named by its id; never replaces a file."""
    from edged.model.bundle.keys import generate_keypair, key_id, load_private_key

    scratch = Path(tempfile.mkdtemp(prefix=".new-", dir=directory))
    try:
        private, public = generate_keypair(scratch, "new")
        kid = key_id(load_private_key(private).public_key())
        # link, not rename: it fails on an existing name instead of replacing the file.
        for made, final in ((private, directory / f"{kid}.key.pem"),
                            (public, directory / f"{kid}.pub.pem")):
            try:
                os.link(made, final)
            except FileExistsError:
                raise CloudToolError(f"{final} exists already; not overwriting it") from None
        return kid
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def create(directory: Path) -> Keyring:
    """A new key directory with one current key; refuses a directory that has a keyring
    or any key file in it."""
    if (directory / INDEX).exists():
        raise CloudToolError(f"{directory}: a keyring exists already; not overwriting it "
                             "(use 'edged-cloud keys rotate' for a new key)")
    if directory.is_dir() and any(directory.glob("*.pem")):
        raise CloudToolError(f"{directory}: holds key files already; not mixing a new "
                             "keyring in (choose an empty directory)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    kid = _new_key(directory)
    ring = Keyring(directory, (KeyEntry(kid, _now(), "current"),))
    _save(ring)
    return ring


def rotate(directory: Path) -> tuple[Keyring, str | None]:
    """A new current key; the old current key is retired (still trusted). Returns the
    keyring and the id of the key retired (None when there was no current key)."""
    ring = load(directory)
    kid = _new_key(directory)
    old = next((e.id for e in ring.keys if e.status == "current"), None)
    keys = tuple(KeyEntry(e.id, e.created, "retired") if e.status == "current" else e
                 for e in ring.keys) + (KeyEntry(kid, _now(), "current"),)
    ring = Keyring(directory, keys)
    _save(ring)
    return ring, old


def revoke(directory: Path, kid: str, *, allow_current: bool = False) -> tuple[Keyring, KeyEntry]:
    """Mark key ``kid`` revoked. The current key is refused unless ``allow_current``
    (rotate first, so that the next release has a key devices trust)."""
    ring = load(directory)
    entry = ring.entry(kid)
    if entry.status == "current" and not allow_current:
        raise CloudToolError(f"key {entry.id} is the current signing key; rotate first "
                             "('edged-cloud keys rotate'), or pass --force to be left with "
                             "no key to sign with")
    keys = tuple(KeyEntry(e.id, e.created, "revoked") if e.id == entry.id else e
                 for e in ring.keys)
    ring = Keyring(directory, keys)
    _save(ring)
    return ring, ring.entry(entry.id)


def signing_key(path: Path) -> tuple[object, str]:
    """The private key to sign with and its id: ``path`` is a PEM file or a key
    directory (its current key). A key a keyring beside it marks revoked is refused."""
    from edged.base.errors import ConfigError
    from edged.model.bundle.keys import key_id, load_private_key

    if path.is_dir():
        ring = load(path)
        path = ring.private_path(ring.current.id)
    if not path.exists():
        raise NotFound(f"{path}: no such key file")
    try:
        private = load_private_key(path)
    except ConfigError as exc:
        raise BadInput("; ".join(exc.problems)) from None
    kid = key_id(private.public_key())
    if (path.parent / INDEX).exists():
        ring = load(path.parent)
        if kid in ring.revoked:
            raise CloudToolError(f"{path}: key {kid} is revoked in {path.parent / INDEX}; "
                                 "devices refuse what it signs")
    return private, kid
