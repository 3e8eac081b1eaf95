"""``edged-cloud package`` (a signed bundle) and ``edged-cloud keys`` (the release keys)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    package = subparsers.add_parser(
        "package", help="a signed model bundle from a training or optimise output",
        description="Build the signed bundle of a model update (docs/bundle.md) from a "
        "training output, an optimise output or a model directory: the manifest, golden "
        "pairs computed by running the model on held-out windows with the device's code, "
        "the preprocessing and thresholds, optional shadow limits. The result is checked "
        "with the device's own verifier before the command succeeds.")
    package.add_argument("source", type=Path, metavar="TRAINING_OUT",
                         help="a training output, an optimise output, a model directory "
                              "or builtin:NAME")
    package.add_argument("-o", "--out", type=Path, required=True, metavar="BUNDLE.tar.gz",
                         help="the bundle to write (never overwritten)")
    package.add_argument("--key", type=Path, required=True, metavar="KEY",
                         help="the private key (PEM) or a key directory (its current key)")
    package.add_argument("--version", type=int, required=True, metavar="N",
                         help="the model version, an integer that only goes up")
    package.add_argument("--name", help="the model's name (default: the source's)")
    package.add_argument("--golden", type=int, default=16, metavar="N",
                         help="golden pairs to carry (default 16)")
    package.add_argument("--installed", type=Path, metavar="MODEL_DIR",
                         help="the model devices run now (a directory or builtin:NAME): the "
                              "bundle must be newer and fit its schema and preprocessing")
    package.add_argument("--shadow-max-anomaly-rate-delta", type=float, metavar="X",
                         help="shadow gate: largest anomaly-rate difference (0..1)")
    package.add_argument("--shadow-max-error-ks", type=float, metavar="X",
                         help="shadow gate: largest KS distance of the errors (0..1)")
    package.add_argument("--json", action="store_true", help="print the result as JSON")
    package.set_defaults(func=_package)

    keys = subparsers.add_parser(
        "keys", help="release signing keys: create, list, rotate, revoke",
        description="Release signing keys in a key directory (private keys 0600; the public "
        "halves are what devices trust). docs/cloud.md, 'package and keys'.")
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("create", "a new key directory with its first, current key"),
                         ("list", "every key: id, created, status"),
                         ("rotate", "a new current key; the old one stays trusted"),
                         ("revoke", "mark a key revoked; print what devices need")):
        sub = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        sub.add_argument("--dir", type=Path, required=True, metavar="KEYDIR",
                         help="the key directory")
        if action == "revoke":
            sub.add_argument("key_id", metavar="KEY_ID", help="the key id (or 4+ characters of it)")
            sub.add_argument("--force", action="store_true",
                             help="revoke the current key too (no key is left to sign)")
        sub.add_argument("--json", action="store_true", help="print the result as JSON")
        sub.set_defaults(func=_keys)


def _package(args: argparse.Namespace) -> int:
    from edged_cloud import keyring, packaging
    from edged_cloud.errors import BadInput

    if args.golden < 1:
        raise BadInput(f"--golden {args.golden}: at least one pair")
    shadow = {key: value for key, value in (
        ("max_anomaly_rate_delta", args.shadow_max_anomaly_rate_delta),
        ("max_error_ks", args.shadow_max_error_ks)) if value is not None}
    private, kid = keyring.signing_key(args.key)
    result = packaging.build(args.source, args.out, private, kid, args.version,
                             name=args.name, golden=args.golden, shadow=shadow,
                             installed=args.installed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['bundle']}: {result['name']} version {result['version']}, signed by "
              f"{kid}, {result['golden_pairs']} golden pairs, verified as a device would\n"
              f"sha256 {result['sha256']}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from edged_cloud import keyring

    out: dict = {}
    if args.action == "create":
        ring = keyring.create(args.dir)
        out = {"created": ring.current.id}
        text = [f"created key {ring.current.id} in {args.dir} (current)",
                f"devices trust {ring.public_path(ring.current.id)}"]
    elif args.action == "rotate":
        ring, old = keyring.rotate(args.dir)
        out = {"created": ring.current.id, "retired": old}
        text = [f"created key {ring.current.id} (current)"]
        if old:
            text.append(f"key {old} is retired: still trusted, so bundles it signed still "
                        f"install; revoke it once devices trust {ring.current.id}")
        text.append(f"devices trust {ring.public_path(ring.current.id)}")
    elif args.action == "revoke":
        ring, entry = keyring.revoke(args.dir, args.key_id, allow_current=args.force)
        out = {"revoked": entry.id, "trust": {"revoked": ring.revoked}}
        text = [f"key {entry.id} is revoked; devices refuse what it signs once their "
                "edged.yaml lists it:", "", "trust:",
                f"  revoked: [{', '.join(json.dumps(k) for k in ring.revoked)}]"]
    else:
        ring = keyring.load(args.dir)
        text = [f"{'KEY ID':<18}{'CREATED':<22}STATUS"]
        text += [f"{e.id:<18}{e.created:<22}{e.status}" for e in ring.keys]
    out["keys"] = [{"id": e.id, "created": e.created, "status": e.status,
                    "public_key": str(ring.public_path(e.id))} for e in ring.keys]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        sys.stdout.write("\n".join(text) + "\n")
    return 0
