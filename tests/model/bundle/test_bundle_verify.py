"""Every bad bundle is built for real and refused with its reason, never retryable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.model.bundle import (
    BundleError,
    ModelExpectation,
    TrustConfig,
    TrustStore,
    extract_bundle,
    key_id,
    verify_bundle,
)
from edged.model.bundle.errors import REASONS
from edged.model.bundle.keys import public_pem
from edged.model.package import sha256_file


def _verify(slot: Path, signed, *, installed_version=None, expect=None, trust=None):
    return verify_bundle(slot, trust or signed.trust, installed_version=installed_version,
                         expect=expect)


def _refused(reason: str, call, *args, **kwargs) -> BundleError:
    with pytest.raises(BundleError) as caught:
        call(*args, **kwargs)
    assert caught.value.reason == reason, caught.value
    assert caught.value.retryable is False
    return caught.value


def _edit_manifest(stage: Path, **changes) -> dict:
    data = json.loads((stage / "manifest.json").read_text())
    data.update(changes)
    (stage / "manifest.json").write_text(json.dumps(data, indent=2))
    return data


def test_a_good_bundle_verifies(signed, installed_manifest):
    slot = extract_bundle(signed.bundle, signed.tmp / "slot")
    assert sorted(p.name for p in slot.iterdir()) == [
        "ATTRIBUTION.md", "golden.npz", "manifest.json", "manifest.sig", "model.onnx"]
    manifest = _verify(slot, signed, installed_version=None,
                       expect=ModelExpectation.from_manifest(installed_manifest))
    assert (manifest.name, manifest.version) == ("windturbine", 1)
    # The builder hashes every file it packs, not only those the source manifest listed.
    assert manifest.files["ATTRIBUTION.md"] == sha256_file(slot / "ATTRIBUTION.md")
    sig = json.loads((slot / "manifest.sig").read_text())
    assert sig["alg"] == "ed25519" and sig["key_id"] == key_id(signed.key.public_key())


def test_a_newer_version_verifies_against_the_installed_one(signed, installed_manifest):
    stage = signed.unpack()
    _edit_manifest(stage, version=2)
    signed.resign(stage)
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    assert _verify(slot, signed, installed_version=1,
                   expect=ModelExpectation.from_manifest(installed_manifest)).version == 2


def test_every_reason_is_not_retryable():
    assert all(not BundleError(r, "x").retryable for r in REASONS)
    with pytest.raises(ValueError, match="unknown bundle error reason"):
        BundleError("flaky", "x")


# -- signature and trust ---------------------------------------------------------------

def test_tampered_file_is_a_hash_mismatch(signed):
    stage = signed.unpack()
    model = stage / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    error = _refused("hash_mismatch", _verify, slot, signed)
    assert "model.onnx" in str(error)


def test_unlisted_extra_file_is_refused(signed):
    stage = signed.unpack()
    (stage / "extra.py").write_text("print('hi')\n")
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    assert "extra.py" in str(_refused("hash_mismatch", _verify, slot, signed))


def test_listed_file_missing_is_refused(signed):
    stage = signed.unpack()
    (stage / "ATTRIBUTION.md").unlink()
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    _refused("hash_mismatch", _verify, slot, signed)


def test_edited_manifest_breaks_the_signature(signed):
    stage = signed.unpack()
    # Re-hash the tampered file honestly: only the signature can catch this.
    model = stage / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    data = json.loads((stage / "manifest.json").read_text())
    _edit_manifest(stage, files={**data["files"], "model.onnx": sha256_file(model)})
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    _refused("bad_signature", _verify, slot, signed)


def test_corrupt_signature_bytes(signed):
    stage = signed.unpack()
    sig = json.loads((stage / "manifest.sig").read_text())
    sig["signature"] = sig["signature"][:10] + ("A" if sig["signature"][10] != "A" else "B") \
        + sig["signature"][11:]
    (stage / "manifest.sig").write_text(json.dumps(sig))
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    _refused("bad_signature", _verify, slot, signed)


def test_unsigned_bundle(signed):
    stage = signed.unpack()
    (stage / "manifest.sig").unlink()
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    _refused("unsigned", _verify, slot, signed)


def test_garbled_signature_file_is_malformed(signed):
    stage = signed.unpack()
    (stage / "manifest.sig").write_text("not json")
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    _refused("malformed", _verify, slot, signed)


def test_signed_by_an_unknown_key(signed):
    stage = signed.unpack()
    signed.resign(stage, Ed25519PrivateKey.generate())
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    _refused("unknown_key", _verify, slot, signed)


def test_unknown_key_claiming_a_trusted_key_id(signed):
    stage = signed.unpack()
    data = (stage / "manifest.json").read_bytes()
    from edged.model.bundle import sign_manifest

    forged = sign_manifest(data, Ed25519PrivateKey.generate(),
                           key_id=key_id(signed.key.public_key()))
    (stage / "manifest.sig").write_bytes(forged)
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    _refused("bad_signature", _verify, slot, signed)


def test_key_revoked_through_configuration(signed, tmp_path):
    keys = tmp_path / "trusted"
    keys.mkdir()
    (keys / "release.pem").write_bytes(public_pem(signed.key.public_key()))
    slot = extract_bundle(signed.bundle, signed.tmp / "slot")
    trusted = TrustStore.from_config(TrustConfig(keys_dir=keys))
    assert _verify(slot, signed, trust=trusted).version == 1
    revoked = TrustStore.from_config(TrustConfig(
        keys_dir=keys, revoked=[key_id(signed.key.public_key())]))
    _refused("revoked_key", _verify, slot, signed, trust=revoked)


# -- version, schema, golden -----------------------------------------------------------

@pytest.mark.parametrize(("bundled", "installed"), [(1, 1), (1, 2), (3, 7)])
def test_not_newer_than_installed(signed, bundled, installed):
    stage = signed.unpack()
    _edit_manifest(stage, version=bundled)
    signed.resign(stage)
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    _refused("not_newer", _verify, slot, signed, installed_version=installed)


def _shape_changed(signed, shape) -> Path:
    stage = signed.unpack()
    data = json.loads((stage / "manifest.json").read_text())
    data["inputs"][0]["shape"] = shape
    data["version"] = 2
    (stage / "manifest.json").write_text(json.dumps(data))
    signed.resign(stage)
    return extract_bundle(signed.repack(stage), signed.tmp / "slot")


def test_wrong_input_shape_is_incompatible(signed, installed_manifest):
    slot = _shape_changed(signed, [None, 6, 10, 12])
    expect = ModelExpectation.from_manifest(installed_manifest)
    error = _refused("incompatible", _verify, slot, signed, installed_version=1, expect=expect)
    assert "shape" in str(error)
    # Without an expectation, the model file itself disagrees with its manifest.
    _refused("incompatible", _verify, slot, signed, installed_version=1)


def test_fixed_batch_is_incompatible_with_a_dynamic_one(signed, installed_manifest):
    slot = _shape_changed(signed, [16, 6, 10, 10])
    _refused("incompatible", _verify, slot, signed,
             expect=ModelExpectation.from_manifest(installed_manifest))


@pytest.mark.parametrize("change", [
    {"type": "other"},
    {"features": ["pitch", "roll", "yaw", "wind_speed_rps", "rps", "voltage"]},
    {"thresholds": [1.0, 1.0]},
])
def test_other_preprocessing_is_incompatible(signed, installed_manifest, change):
    stage = signed.unpack()
    data = json.loads((stage / "manifest.json").read_text())
    _edit_manifest(stage, preprocessing={**data["preprocessing"], **change})
    signed.resign(stage)
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    _refused("incompatible", _verify, slot, signed,
             expect=ModelExpectation.from_manifest(installed_manifest))


def test_model_failing_its_golden_pairs(signed):
    stage = signed.unpack()
    golden = stage / "golden.npz"
    with np.load(golden) as pairs:
        inputs, outputs = pairs["inputs"], pairs["outputs"].copy()
    outputs[0, 0, 0, 0] += 0.01
    np.savez(golden, inputs=inputs, outputs=outputs)
    data = json.loads((stage / "manifest.json").read_text())
    _edit_manifest(stage, files={**data["files"], "golden.npz": sha256_file(golden)})
    signed.resign(stage)
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    error = _refused("golden_failed", _verify, slot, signed)
    assert "1 of 14400" in str(error)


def test_undecodable_model_fails_golden(signed):
    stage = signed.unpack()
    model = stage / "model.onnx"
    model.write_bytes(b"not an onnx model")
    data = json.loads((stage / "manifest.json").read_text())
    _edit_manifest(stage, files={**data["files"], "model.onnx": sha256_file(model)})
    signed.resign(stage)
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    _refused("golden_failed", _verify, slot, signed)


def test_invalid_manifest_is_malformed(signed):
    stage = signed.unpack()
    _edit_manifest(stage, version=0)
    signed.resign(stage)
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    assert "version" in str(_refused("malformed", _verify, slot, signed))


def test_nan_in_golden_outputs_fails_without_warnings(signed):
    stage = signed.unpack()
    golden = stage / "golden.npz"
    with np.load(golden) as pairs:
        inputs, outputs = pairs["inputs"], np.full_like(pairs["outputs"], np.nan)
    outputs[0, 0, 0, 0] = np.inf
    np.savez(golden, inputs=inputs, outputs=outputs)
    data = json.loads((stage / "manifest.json").read_text())
    _edit_manifest(stage, files={**data["files"], "golden.npz": sha256_file(golden)})
    signed.resign(stage)
    slot = extract_bundle(signed.repack(stage), signed.tmp / "slot")
    assert "14400 of 14400" in str(_refused("golden_failed", _verify, slot, signed))
