"""Unpack and verify a model bundle before anything of it is trusted.

``extract_bundle`` unpacks a downloaded tar.gz into an empty slot, streaming, refusing
anything but plain top-level files and capping sizes as it reads, so neither a crafted
archive nor a gzip bomb writes outside the slot or fills the disk. ``verify_bundle`` then
checks, cheapest first: the signature over the manifest's exact bytes, every file's
SHA-256, a newer version, the schema and preprocessing this device's pipeline expects,
and the golden input/output pairs. Both block: call them from a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import gzip
import io
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from pydantic import ValidationError

from edged.base.durable import read_at_most
from edged.base.errors import GoldenError
from edged.base.strict_json import JsonError
from edged.base.strict_json import loads as strict_loads
from edged.model import golden
from edged.model.bundle.build import ALG, SAFE_NAME, SIGNATURE
from edged.model.bundle.errors import BundleError
from edged.model.bundle.keys import TrustStore
from edged.model.package import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    ModelManifest,
    TensorSpec,
    manifest_of,
    sha256_file,
)
from edged.model.session import open_session

__all__ = ["BundleError", "ModelExpectation", "extract_bundle", "verify_bundle"]

MiB = 1 << 20
DEFAULT_MAX_TOTAL_BYTES = 512 * MiB
DEFAULT_MAX_FILE_BYTES = 256 * MiB
#: A bundle holds a handful of files; thousands of tiny entries are an attack.
MAX_ENTRIES = 64
#: Tar headers and padding on top of the file bytes: 512-byte header + block padding each.
_TAR_OVERHEAD = (MAX_ENTRIES + 4) * 2048
_CHUNK = 1 << 16
#: Largest tar metadata header read (a pax extended header, a GNU long name or link):
#: tarfile reads each whole into memory, and a bundle's need a few hundred bytes.
MAX_METADATA_BYTES = 64 * 1024
#: Metadata headers in a row before one file: tarfile reads such a chain recursively.
MAX_METADATA_CHAIN = 8
#: Largest manifest.sig read (it is parsed whole); manifest.json's is modelpkg's.
MAX_SIGNATURE_BYTES = 4096
_METADATA_TYPES = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK})


class _CappedReader(io.RawIOBase):
    """Decompressed bytes, refused past ``limit``: bounds what tarfile may read (long
    names and pax headers included), not only the files it hands out."""

    def __init__(self, inner: io.BufferedIOBase, limit: int) -> None:
        self._inner = inner
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        data = self._inner.read(min(len(view), self._left + 1))
        if len(data) > self._left:
            raise BundleError("too_large", "the archive unpacks to more than its cap")
        self._left -= len(data)
        view[:len(data)] = data
        return len(data)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses a metadata header before tarfile reads it whole into memory (a 50 MB pax
    header would be), a chain of them before it recurses past the stack, and a GNU
    sparse file, whose extension headers tarfile would also read without bound."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _METADATA_TYPES:
            if self.size > MAX_METADATA_BYTES:
                raise BundleError("too_large", f"a tar metadata header of {self.size} "
                                  f"bytes, over the {MAX_METADATA_BYTES}-byte cap")
            chain = getattr(tar, "_edged_metadata_chain", 0) + 1
            if chain > MAX_METADATA_CHAIN:
                raise BundleError("malformed", f"more than {MAX_METADATA_CHAIN} tar "
                                  "metadata headers in a row")
            tar._edged_metadata_chain = chain  # type: ignore[attr-defined]
        else:
            tar._edged_metadata_chain = 0  # type: ignore[attr-defined]
            if self.type == tarfile.GNUTYPE_SPARSE:
                raise BundleError("unsafe_entry", f"entry {self.name!r} is a sparse file")
        return super()._proc_member(tar)  # type: ignore[misc]


def _kind(member: tarfile.TarInfo) -> str:
    for test, kind in ((member.issym, "symlink"), (member.islnk, "hardlink"),
                       (member.isdir, "directory"), (member.ischr, "character device"),
                       (member.isblk, "block device"), (member.isfifo, "fifo")):
        if test():
            return kind
    return "special file"


def extract_bundle(archive: Path, dest: Path, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                   max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Path:
    """Unpack ``archive`` into ``dest`` (absent or an empty directory) and return ``dest``.

    Only regular files named like ``SAFE_NAME`` at the top level are written, each opened
    with O_EXCL|O_NOFOLLOW inside ``dest``; every entry is checked before any byte of it is
    written. On any error what was written is removed (and ``dest``, if this created it)
    and a ``BundleError`` says why: ``unsafe_entry``, ``too_large``, ``truncated`` or
    ``malformed``. ``OSError`` (an unreadable archive, a full disk, a ``dest`` that is not
    empty) is left as it is: the bundle may be fine.
    """
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        # The caller's mistake, not the bundle's: no reason, nothing to reject.
        raise OSError(errno.ENOTEMPTY, "the destination is not empty", str(dest))
    written: list[Path] = []
    try:
        _extract(archive, dest, max_total_bytes, max_file_bytes, written)
    except BaseException:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _extract(archive: Path, dest: Path, max_total: int, max_file: int,
             written: list[Path]) -> None:
    # OSError (no such file, disk full) is not the bundle's fault: it propagates, and a
    # retry may succeed.
    with archive.open("rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            raise BundleError("malformed", f"{archive}: not a gzip file")
        raw.seek(0)
        total = 0
        entries = 0
        gz = gzip.GzipFile(fileobj=raw, mode="rb")
        capped = io.BufferedReader(_CappedReader(gz, max_total + _TAR_OVERHEAD))
        try:
            with tarfile.open(fileobj=capped, mode="r|", tarinfo=_BoundedTarInfo) as tar:
                for member in tar:
                    entries += 1
                    if entries > MAX_ENTRIES:
                        raise BundleError("too_large", f"more than {MAX_ENTRIES} entries")
                    name = member.name
                    if not SAFE_NAME.match(name):
                        raise BundleError("unsafe_entry", f"entry {name!r}: only plain "
                                          "top-level file names are allowed")
                    if not member.isreg():
                        raise BundleError("unsafe_entry",
                                          f"entry {name!r} is a {_kind(member)}")
                    if member.size > max_file:
                        raise BundleError("too_large", f"entry {name!r} is {member.size} "
                                          f"bytes, over the {max_file}-byte cap per file")
                    if total + member.size > max_total:
                        raise BundleError("too_large", f"the files add up to more than "
                                          f"the {max_total}-byte cap")
                    total += member.size
                    _write(tar, member, dest / name, written)
            # The tar's end marker is read; the rest of the gzip stream must be intact too
            # (its CRC and length trailer are what reveal a cut-off download).
            while capped.read(_CHUNK):
                pass
        except BundleError:
            raise
        except (EOFError, tarfile.ReadError, gzip.BadGzipFile, zlib.error) as exc:
            raise BundleError("truncated", f"{archive}: the archive is cut short or "
                              f"corrupt: {exc}") from None
        except tarfile.TarError as exc:
            raise BundleError("malformed", f"{archive}: {exc}") from None
    if not written:
        raise BundleError("malformed", f"{archive}: the archive holds no files")


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path,
           written: list[Path]) -> None:
    source = tar.extractfile(member)
    assert source is not None  # a regular file always has content
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise BundleError("unsafe_entry", f"entry {member.name!r} appears twice") from None
    written.append(path)
    left = member.size
    with os.fdopen(fd, "wb") as handle:
        while left > 0:
            chunk = source.read(min(_CHUNK, left))
            if not chunk:
                raise EOFError(f"entry {member.name!r} ends early")
            handle.write(chunk)
            left -= len(chunk)


@dataclass(frozen=True)
class ModelExpectation:
    """What this device's pipeline feeds a model and reads back from it."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing_type: str | None = None
    features: tuple[str, ...] | None = None

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> ModelExpectation:
        """The expectation the currently installed model sets for its successors."""
        features = manifest.preprocessing.get("features")
        return cls(tuple(manifest.inputs), tuple(manifest.outputs),
                   manifest.preprocessing.get("type"),
                   tuple(features) if features is not None else None)

    def check(self, manifest: ModelManifest) -> None:
        """Raise ``BundleError('incompatible')`` naming the first mismatch."""
        for kind, expected, actual in (("input", self.inputs, manifest.inputs),
                                       ("output", self.outputs, manifest.outputs)):
            if len(actual) != len(expected):
                raise BundleError("incompatible", f"{len(actual)} {kind}s, this device's "
                                  f"pipeline uses {len(expected)}")
            for want, got in zip(expected, actual, strict=True):
                problem = _tensor_mismatch(want, got)
                if problem:
                    raise BundleError("incompatible", f"{kind} {got.name!r}: {problem}")
        pre = manifest.preprocessing
        if self.preprocessing_type is not None and pre.get("type") != self.preprocessing_type:
            raise BundleError("incompatible", f"preprocessing {pre.get('type')!r}, this "
                              f"device runs {self.preprocessing_type!r}")
        if self.features is not None:
            features = pre.get("features")
            if not isinstance(features, list) or tuple(features) != self.features:
                raise BundleError("incompatible", f"features {features}, this device "
                                  f"reads {list(self.features)}")
            for key in ("mean", "std", "raw_std", "thresholds"):
                value = pre.get(key)
                if value is not None and (not isinstance(value, list)
                                          or len(value) != len(self.features)):
                    raise BundleError("incompatible", f"preprocessing {key!r} needs one "
                                      f"value per feature ({len(self.features)})")


def _tensor_mismatch(want: TensorSpec, got: TensorSpec) -> str | None:
    if got.name != want.name:
        return f"named {got.name!r}, expected {want.name!r}"
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, expected {want.dtype}"
    if len(got.shape) != len(want.shape):
        return f"shape {got.shape}, expected {want.shape}"
    for w, g in zip(want.shape, got.shape, strict=True):
        # A dynamic dimension (the batch) must stay dynamic; a fixed one may be either
        # the same size or dynamic.
        if (w is None and g is not None) or (w is not None and g not in (w, None)):
            return f"shape {got.shape}, expected {want.shape}"
    return None


def verify_bundle(directory: Path, trust: TrustStore, *, installed_version: int | None,
                  expect: ModelExpectation | None = None,
                  max_golden_bytes: int = golden.MAX_BYTES) -> ModelManifest:
    """Check an unpacked bundle and return its manifest, or raise ``BundleError``."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise BundleError("malformed", f"the bundle has no {MANIFEST}")
    # Parse the very bytes the signature covers, never a second read of the file.
    data = _read_capped(manifest_path, MAX_MANIFEST_BYTES)
    _check_signature(directory / SIGNATURE, data, trust)
    try:
        # Repeated keys refused: with the last entry winning, a manifest listing a file
        # twice would read one way to a reviewer and another to the device.
        manifest = manifest_of(data)
    except (ValueError, ValidationError) as exc:
        raise BundleError("malformed", f"{MANIFEST}: {_first_error(exc)}") from None
    _check_files(directory, manifest)
    if installed_version is not None and manifest.version <= installed_version:
        raise BundleError("not_newer", f"version {manifest.version} is not newer than the "
                          f"installed version {installed_version}")
    if expect is not None:
        expect.check(manifest)
    run_golden(directory, manifest, max_golden_bytes=max_golden_bytes)
    return manifest


def _read_capped(path: Path, limit: int) -> bytes:
    """The file's bytes, or ``too_large`` without reading more than ``limit`` of them."""
    data = read_at_most(path, limit)
    if len(data) > limit:
        raise BundleError("too_large", f"{path.name} is over the {limit}-byte cap")
    return data


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False)[0]
        return f"'{'.'.join(str(p) for p in first['loc'])}': {first['msg']}"
    return str(exc)


def _check_signature(path: Path, data: bytes, trust: TrustStore) -> None:
    if not path.is_file():
        raise BundleError("unsigned", f"the bundle has no {SIGNATURE}")
    try:
        sig = strict_loads(_read_capped(path, MAX_SIGNATURE_BYTES),
                           max_bytes=MAX_SIGNATURE_BYTES)
        alg, kid, encoded = sig["alg"], sig["key_id"], sig["signature"]
        if not (isinstance(kid, str) and isinstance(encoded, str)):
            raise TypeError("key_id and signature must be strings")
    except JsonError as exc:
        raise BundleError("malformed", f"{SIGNATURE}: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise BundleError("malformed", f"{SIGNATURE}: {exc!r}") from None
    if alg != ALG:
        raise BundleError("bad_signature", f"{SIGNATURE}: algorithm {alg!r}, not {ALG!r}")
    key = trust.public_key(kid)
    try:
        key.verify(base64.b64decode(encoded, validate=True), data)
    except (InvalidSignature, binascii.Error, ValueError):
        raise BundleError("bad_signature", f"{MANIFEST} is not signed by key {kid}") from None


def _check_files(directory: Path, manifest: ModelManifest) -> None:
    present = set()
    for path in directory.iterdir():
        if path.name in (MANIFEST, SIGNATURE):
            continue
        if path.is_symlink() or not path.is_file():
            raise BundleError("unsafe_entry", f"{path.name!r} is not a regular file")
        present.add(path.name)
    for name in sorted(present - manifest.files.keys()):
        raise BundleError("hash_mismatch", f"{name!r} is not listed in the manifest's files")
    for name in sorted(manifest.files.keys() - present):
        raise BundleError("hash_mismatch", f"{name!r} is listed but not in the bundle")
    for needed in (manifest.model, manifest.golden):
        if needed is not None and needed not in manifest.files:
            raise BundleError("malformed", f"{needed!r} is named but not listed in files")
    for name, expected in sorted(manifest.files.items()):
        if sha256_file(directory / name) != expected:
            raise BundleError("hash_mismatch", f"{name!r}: SHA-256 does not match the "
                              "manifest")


def run_golden(directory: Path, manifest: ModelManifest, *,
               max_golden_bytes: int = golden.MAX_BYTES) -> None:
    """Run the model on its golden inputs; every output must match within tolerance
    (:mod:`edged.model.golden`'s rule)."""
    if manifest.golden is None:
        raise BundleError("malformed", "the manifest names no golden pairs")
    spec = manifest.inputs[0]

    def predict(inputs: np.ndarray) -> np.ndarray:
        if inputs.ndim != len(spec.shape):
            raise BundleError("golden_failed", f"golden inputs {inputs.shape} do not fit "
                              f"the input {spec.shape}")
        session = _session(directory / manifest.model, manifest)
        try:
            return session.run(None, {spec.name: inputs.astype(spec.dtype, copy=False)})[0]
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError("golden_failed", f"the model fails on its golden inputs: "
                              f"{exc}") from None

    try:
        golden.check(directory / manifest.golden, predict, max_bytes=max_golden_bytes)
    except GoldenError as exc:
        raise BundleError(exc.reason, exc.detail) from None


def _session(path: Path, manifest: ModelManifest) -> Any:
    try:
        session = open_session(path)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise BundleError("golden_failed", f"ONNX Runtime cannot load the model: "
                          f"{exc}") from None
    declared, spec = session.get_inputs()[0], manifest.inputs[0]
    fixed = [(d, s) for d, s in zip(declared.shape, spec.shape, strict=False)
             if isinstance(d, int) and s is not None]
    if declared.name != spec.name or len(declared.shape) != len(spec.shape) \
            or any(d != s for d, s in fixed):
        raise BundleError("incompatible", f"the model's input {declared.name}"
                          f"{declared.shape} is not the manifest's {spec.name}{spec.shape}")
    return session
