"""``python -m edged.model.bundle``: make keys, build signed bundles, check one as a device would.

    python -m edged.model.bundle keygen -o DIR [--name NAME]
    python -m edged.model.bundle build MODEL_DIR -k KEY.pem -o OUT.tar.gz [--key-id ID]
    python -m edged.model.bundle verify BUNDLE --trust DIR [--revoked ID ...]
        [--installed-version N]

``verify`` exits 0 when the bundle would be installed, 1 with ``REJECTED <reason>: ...``
when not, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from edged.base.errors import EdgedError
from edged.model.bundle.build import build_bundle
from edged.model.bundle.errors import BundleError
from edged.model.bundle.keys import (
    TrustConfig,
    TrustStore,
    generate_keypair,
    key_id,
    load_private_key,
)
from edged.model.bundle.verify import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_TOTAL_BYTES,
    ModelExpectation,
    extract_bundle,
    verify_bundle,
)
from edged.model.package import read_manifest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edged.model.bundle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="write a new Ed25519 key pair")
    keygen.add_argument("-o", "--out", type=Path, required=True, help="directory")
    keygen.add_argument("--name", default="signing", help="file name stem (default signing)")
    build = commands.add_parser("build", help="build and sign a bundle from a model dir")
    build.add_argument("model_dir", type=Path)
    build.add_argument("-k", "--key", type=Path, required=True, help="private key (PEM)")
    build.add_argument("-o", "--out", type=Path, required=True, help="the .tar.gz to write")
    build.add_argument("--key-id", help="key id to record (default: derived from the key)")
    verify = commands.add_parser("verify", help="check a bundle as a device would")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--trust", type=Path, required=True,
                        help="directory of trusted public keys (*.pem, *.pub)")
    verify.add_argument("--revoked", action="append", default=[], metavar="KEY_ID")
    verify.add_argument("--installed-version", type=int, default=None)
    verify.add_argument("--installed", type=Path, default=None, metavar="MODEL_DIR",
                        help="the installed model: its version and schema must be met")
    verify.add_argument("--max-total-bytes", type=int, default=DEFAULT_MAX_TOTAL_BYTES)
    verify.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES)
    return parser


def _verify(args: argparse.Namespace) -> int:
    trust = TrustStore.from_config(TrustConfig(keys_dir=args.trust, revoked=args.revoked))
    installed_version, expect = args.installed_version, None
    if args.installed is not None:
        current = read_manifest(args.installed)
        expect = ModelExpectation.from_manifest(current)
        if installed_version is None:
            installed_version = current.version
    with tempfile.TemporaryDirectory(prefix="edged-bundle-") as tmp:
        slot = extract_bundle(args.bundle, Path(tmp) / "slot",
                              max_total_bytes=args.max_total_bytes,
                              max_file_bytes=args.max_file_bytes)
        manifest = verify_bundle(slot, trust, installed_version=installed_version,
                                 expect=expect)
    sys.stdout.write(f"OK {manifest.name} version {manifest.version}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "keygen":
            private, public = generate_keypair(args.out, args.name)
            kid = key_id(load_private_key(private).public_key())
            sys.stdout.write(f"{private}\n{public}\nkey_id {kid}\n")
            return 0
        if args.command == "build":
            out = build_bundle(args.model_dir, args.out, load_private_key(args.key),
                               args.key_id)
            sys.stdout.write(f"{out}\n")
            return 0
        return _verify(args)
    except BundleError as exc:
        sys.stderr.write(f"REJECTED {exc}\n")
        return 1
    except (EdgedError, OSError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
