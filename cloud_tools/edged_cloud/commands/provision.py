"""``edged-cloud provision THING``: a thing, its certificate, its own IoT policy, its group,
and the zip a device installs (``edged_cloud.provision``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from edged_cloud.aws import add_options

    parser = subparsers.add_parser(
        "provision", help="a thing, its certificate and policy, and its device zip",
        description="Create the AWS IoT thing, keys and certificate, a policy that allows "
                    "this thing alone its own topics, jobs, shadow and capture prefix, "
                    "its thing-group membership, and a zip for the device: certificate, "
                    "private key (0600), Amazon's root CA, the release key and an "
                    "edged.yaml that passes edged check-config. An existing thing is "
                    "refused unless --force.")
    parser.add_argument("thing", metavar="THING", help="the thing name (the device id)")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="OUT.zip",
                        help="where to write the device zip")
    parser.add_argument("--release-key", type=Path, required=True, metavar="PUB.pem",
                        help="the release signing key's public half the device trusts")
    parser.add_argument("--group", help="a thing group to add the thing to")
    parser.add_argument("--bucket", help="capture to this bucket with credentials from the "
                                         "IoT credentials provider")
    parser.add_argument("--capture-prefix", default="captures",
                        help="the capture prefix in --bucket (default captures)")
    parser.add_argument("--role-alias", default="edged-capture",
                        help="the role alias the device fetches capture credentials "
                             "through (default edged-capture)")
    parser.add_argument("--device-dir", default="/etc/edged",
                        help="where the zip is unpacked on the device (default /etc/edged)")
    parser.add_argument("--state-dir", default="/var/lib/edged",
                        help="the device's state_dir (default /var/lib/edged)")
    parser.add_argument("--root-ca", type=Path, metavar="PEM",
                        help="Amazon Root CA 1 (default: fetched; a placeholder that says "
                             "where to get it when that fails)")
    parser.add_argument("--force", action="store_true",
                        help="renew an existing thing (a new certificate, the old ones "
                             "retired) and replace OUT")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_options(parser)
    parser.set_defaults(func=_provision)


def _provision(args: argparse.Namespace) -> int:
    from edged_cloud import provision
    from edged_cloud.aws import client

    request = provision.Request(
        thing=args.thing, release_key=args.release_key, out=args.out, group=args.group,
        bucket=args.bucket, capture_prefix=args.capture_prefix.strip("/"),
        role_alias=args.role_alias, device_dir=args.device_dir, state_dir=args.state_dir,
        root_ca=args.root_ca, force=args.force)
    report = provision.provision(client("iot", args), request)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"thing {report['thing']}: certificate {report['certificate_id'][:12]}..., "
              f"policy {report['policy']}; device zip {report['zip']}")
        if report["root_ca"] == "placeholder":
            print("Amazon's root CA could not be fetched: AmazonRootCA1.pem in the zip "
                  "says where to get it")
    return 0
