"""The bundle decoders under Hypothesis: any archive bytes unpack or are a BundleError, and
any signed manifest verifies or is a BundleError; never another exception, nothing left
behind, in bounded time."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from edged.base.errors import ModelError
from edged.model.bundle import BundleError, TrustStore, extract_bundle, sign_manifest, verify_bundle
from edged.model.bundle.errors import REASONS
from edged.model.package import ModelManifest, parse_manifest

pytestmark = pytest.mark.fuzz

KiB = 1 << 10
MANIFEST = {"name": "windturbine", "version": 2, "format": "onnx", "model": "model.onnx",
            "inputs": [{"name": "input", "dtype": "float32", "shape": [None, 6, 10, 10]}],
            "outputs": [{"name": "output", "dtype": "float32", "shape": [None, 6, 10, 10]}],
            "preprocessing": {"type": "windturbine", "features": ["a", "b"]},
            "golden": "golden.npz", "files": {"model.onnx": "0" * 64}}


def _tar(entries: dict[str, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if fmt == tarfile.PAX_FORMAT:
                info.pax_headers = {"comment": "edged"}
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# A small bundle-shaped archive in each format tarfile reads (pax, GNU long names too).
SMALL = {"manifest.json": json.dumps(MANIFEST).encode(), "manifest.sig": b"{}",
         "model.onnx": b"\x08\x01" * 40, "n" * 120: b"long name"}
TARS = [_tar(SMALL, tarfile.PAX_FORMAT), _tar(SMALL, tarfile.GNU_FORMAT),
        _tar({k: v for k, v in SMALL.items() if len(k) < 100}, tarfile.USTAR_FORMAT)]


@st.composite
def mutated_tars(draw) -> bytes:
    """A valid tar with bytes overwritten, mostly in its headers (the first 512 bytes of
    each member), where a parser's decisions are made; sometimes cut short."""
    data = bytearray(draw(st.sampled_from(TARS)))
    headers = [i for i in range(0, len(data), 512) if any(data[i:i + 512])]
    for _ in range(draw(st.integers(1, 8))):
        block = draw(st.sampled_from(headers))
        at = draw(st.one_of(st.integers(block, block + 511), st.integers(0, len(data) - 1)))
        data[at] = draw(st.one_of(st.sampled_from(b"0123456789 \x00xLKgS7"),
                                  st.integers(0, 255)))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


def _unpacks_or_refuses(tmp: Path, archive_bytes: bytes) -> None:
    work = tmp / uuid.uuid4().hex
    work.mkdir()
    archive = work / "bundle.tar.gz"
    archive.write_bytes(archive_bytes)
    started = time.process_time()
    try:
        slot = extract_bundle(archive, work / "slot", max_total_bytes=64 * KiB,
                              max_file_bytes=16 * KiB)
        assert all(p.is_file() and not p.is_symlink() for p in slot.iterdir())
    except BundleError as exc:
        assert exc.reason in REASONS
        assert not (work / "slot").exists()  # nothing left behind
    assert time.process_time() - started < 5.0  # CPU time: a busy machine must not fail it
    assert sorted(p.name for p in work.iterdir()) in (["bundle.tar.gz"],
                                                      ["bundle.tar.gz", "slot"])
    shutil.rmtree(work)


@given(mutated_tars())
def test_a_mutated_tar_unpacks_or_is_a_bundle_error(tmp_path_factory, tar_bytes):
    _unpacks_or_refuses(tmp_path_factory.mktemp("tar"), gzip.compress(tar_bytes, mtime=0))


@given(st.sampled_from(TARS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                       min_size=1, max_size=6))
def test_mutated_gzip_bytes_unpack_or_are_a_bundle_error(tmp_path_factory, tar_bytes,
                                                         flips):
    data = bytearray(gzip.compress(tar_bytes, mtime=0))
    for at, value in flips:
        data[at % len(data)] = value
    _unpacks_or_refuses(tmp_path_factory.mktemp("gz"), bytes(data))


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_a_bundle_error(tmp_path_factory, data):
    _unpacks_or_refuses(tmp_path_factory.mktemp("raw"), data)


# -- manifests ---------------------------------------------------------------------------

KEY = Ed25519PrivateKey.generate()
TRUST = TrustStore.from_keys(KEY.public_key())
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSONISH = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4)
                       | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=16)


@st.composite
def manifests(draw) -> bytes:
    """Manifest bytes: the valid one with fields replaced or dropped, arbitrary JSON, or
    near-valid text with a span (keys included) written twice."""
    choice = draw(st.integers(0, 2))
    if choice == 0:
        manifest = dict(MANIFEST)
        for key in draw(st.lists(st.sampled_from(sorted(MANIFEST) + ["extra"]), max_size=3)):
            if draw(st.booleans()):
                manifest[key] = draw(JSONISH)
            else:
                manifest.pop(key, None)
        return json.dumps(manifest).encode()
    if choice == 1:
        return json.dumps(draw(JSONISH)).encode()
    text = json.dumps(MANIFEST)
    at = draw(st.integers(0, len(text)))
    end = draw(st.integers(at, min(len(text), at + 80)))
    return (text[:end] + "," + text[at:end] + text[end:]).encode()


@given(manifests())
def test_a_signed_manifest_verifies_or_is_a_bundle_error(tmp_path_factory, data):
    slot = tmp_path_factory.mktemp("slot")
    (slot / "manifest.json").write_bytes(data)
    (slot / "manifest.sig").write_bytes(sign_manifest(data, KEY))
    (slot / "model.onnx").write_bytes(b"\x08\x01")
    # No file matches its hash, so no manifest here may pass: a value would be a bug.
    with pytest.raises(BundleError) as caught:
        verify_bundle(slot, TRUST, installed_version=1)
    assert caught.value.reason in REASONS


@given(st.one_of(manifests(), st.binary(max_size=300)))
def test_a_model_directory_manifest_parses_or_is_a_model_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("model") / "manifest.json"
    path.write_bytes(data)
    with contextlib.suppress(ModelError):
        assert isinstance(parse_manifest(path), ModelManifest)
