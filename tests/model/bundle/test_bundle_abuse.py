"""Issue 13, item 7: a signed manifest that names a file twice, and tar metadata built to
take the device's memory, are refused with their reason before anything trusts them."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
import tracemalloc
from pathlib import Path

import pytest

from edged.base.errors import ModelError
from edged.model.bundle import BundleError, build_bundle, extract_bundle, verify_bundle
from edged.model.bundle.verify import MAX_METADATA_BYTES, MAX_METADATA_CHAIN

MiB = 1 << 20


def _refused(reason: str, call, *args, **kwargs) -> BundleError:
    with pytest.raises(BundleError) as caught:
        call(*args, **kwargs)
    assert caught.value.reason == reason, caught.value
    return caught.value


def _repeat_a_file(stage: Path, name: str, decoy: str) -> None:
    """Rewrite manifest.json's ``files`` so ``name`` appears twice: ``decoy`` first, the
    true hash last (the entry plain json.loads keeps)."""
    text = (stage / "manifest.json").read_text()
    data = json.loads(text)
    true = data["files"][name]
    entry = f'"{name}": "{true}"'
    assert entry in text
    (stage / "manifest.json").write_text(text.replace(entry, f'"{name}": "{decoy}", {entry}'))


def test_a_signed_manifest_that_lists_a_file_twice_is_refused(signed):
    stage = signed.unpack()
    _repeat_a_file(stage, "model.onnx", "0" * 64)
    signed.resign(stage)
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    error = _refused("malformed", verify_bundle, slot, signed.trust, installed_version=None)
    assert "'model.onnx' appears twice" in str(error)


def test_a_signature_file_with_a_repeated_key_is_refused(signed):
    stage = signed.unpack()
    sig = (stage / "manifest.sig").read_text()
    assert '"alg": "ed25519"' in sig
    (stage / "manifest.sig").write_text(sig.replace('"alg": "ed25519"',
                                                    '"alg": "none", "alg": "ed25519"'))
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    error = _refused("malformed", verify_bundle, slot, signed.trust, installed_version=None)
    assert "'alg' appears twice" in str(error)


def test_an_oversized_manifest_is_refused_unread(signed):
    stage = signed.unpack()
    with (stage / "manifest.json").open("ab") as handle:
        handle.write(b" " * (2 * MiB))
    signed.resign(stage)
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    error = _refused("too_large", verify_bundle, slot, signed.trust, installed_version=None)
    assert "manifest.json" in str(error)


class _Repeat(io.RawIOBase):
    """``size`` bytes of one value, made as they are read: a huge header costs no memory
    to write."""

    def __init__(self, size: int, byte: bytes = b"x") -> None:
        self.left = size
        self.byte = byte

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = self.byte * n
        self.left -= n
        return n


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _with_metadata(path: Path, kind: bytes, size: int) -> Path:
    """A gzip'd tar whose one file is preceded by a ``size``-byte metadata header of type
    ``kind`` (a pax header, a GNU long name), streamed so the test holds none of it."""
    with gzip.open(path, "wb", compresslevel=1) as gz:
        gz.write(_header("././@PaxHeader", kind, size))
        source = io.BufferedReader(_Repeat(size), 1 << 20)
        while chunk := source.read(1 << 20):
            gz.write(chunk)
        gz.write(bytes(-size % 512))
        gz.write(_header("a.txt", tarfile.REGTYPE, 0))
        gz.write(bytes(1024))
    return path


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME,
                                  tarfile.GNUTYPE_LONGLINK])
def test_a_50_mb_metadata_header_is_refused_unread(tmp_path, kind):
    archive = _with_metadata(tmp_path / "pax.tar.gz", kind, 50 * MiB)
    # Python's own allocations, not the process's high-water mark, which an earlier test
    # may have set higher than this one could reach.
    tracemalloc.start()
    try:
        started = time.process_time()
        # The default caps (512 MiB in all): only the metadata cap stands in the way.
        error = _refused("too_large", extract_bundle, archive, tmp_path / "slot")
        assert time.process_time() - started < 2.0  # refused at its header, 50 MB unread
        assert tracemalloc.get_traced_memory()[1] < 4 * MiB
    finally:
        tracemalloc.stop()
    assert "metadata header" in str(error)
    assert not (tmp_path / "slot").exists()


def test_a_pax_header_at_the_cap_is_read(tmp_path):
    info = tarfile.TarInfo("a.txt")
    info.size = 5
    # The header's records ("NN comment=...\n") plus the value stay under the cap.
    info.pax_headers = {"comment": "x" * (MAX_METADATA_BYTES - 100)}
    archive = tmp_path / "ok.tar.gz"
    with gzip.open(archive, "wb") as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"hello"))
    slot = extract_bundle(archive, tmp_path / "slot")
    assert (slot / "a.txt").read_bytes() == b"hello"


def test_a_chain_of_metadata_headers_is_refused(tmp_path):
    archive = tmp_path / "chain.tar.gz"
    record = b"18 comment=abcdef\n"
    with gzip.open(archive, "wb") as gz:
        # Thousands of small pax headers in a row: tarfile would recurse once each.
        for _ in range(5000):
            gz.write(_header("././@PaxHeader", tarfile.XHDTYPE, len(record)))
            gz.write(record + bytes(-len(record) % 512))
        gz.write(_header("a.txt", tarfile.REGTYPE, 0) + bytes(1024))
    error = _refused("malformed", extract_bundle, archive, tmp_path / "slot")
    assert f"more than {MAX_METADATA_CHAIN}" in str(error)


def test_a_sparse_file_is_refused(tmp_path):
    archive = tmp_path / "sparse.tar.gz"
    with gzip.open(archive, "wb") as gz:
        gz.write(_header("a.txt", tarfile.GNUTYPE_SPARSE, 0) + bytes(1024))
    error = _refused("unsafe_entry", extract_bundle, archive, tmp_path / "slot")
    assert "sparse" in str(error)


def test_a_model_directory_manifest_with_a_repeated_key_is_refused(signed):
    _repeat_a_file(signed.model_dir, "model.onnx", "0" * 64)
    with pytest.raises(ModelError, match="'model.onnx' appears twice"):
        build_bundle(signed.model_dir, signed.tmp / "again.tar.gz", signed.key)
