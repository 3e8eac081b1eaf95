"""Signed model bundles: build one in the cloud, unpack and verify it on the device.

docs/bundle.md describes the format; ``python -m edged.model.bundle`` builds, signs and checks
bundles from the command line.
"""

from edged.model.bundle.build import build_bundle, pack_bundle, sign_manifest
from edged.model.bundle.errors import BundleError
from edged.model.bundle.keys import (
    TrustConfig,
    TrustStore,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)
from edged.model.bundle.verify import ModelExpectation, extract_bundle, verify_bundle

__all__ = [
    "BundleError", "ModelExpectation", "TrustConfig", "TrustStore", "build_bundle",
    "extract_bundle", "generate_keypair", "key_id", "load_private_key", "load_public_key",
    "pack_bundle", "sign_manifest", "verify_bundle",
]
