"""``edged-cloud publish``: a signed bundle to S3, checked, idempotent."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from edged_cloud import aws

    parser = subparsers.add_parser(
        "publish", help="upload a signed bundle to S3 (idempotent, hash checked)",
        description="Upload a bundle to s3://BUCKET/PREFIX/NAME/VERSION/bundle.tar.gz with a "
        "progress bar; its SHA-256 is stored as object metadata and S3's checksum, and "
        "checked after the upload. The same bytes again is a no-op; a different bundle "
        "under a published version is refused (docs/cloud.md, 'publish').")
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="the .tar.gz to publish")
    parser.add_argument("--bucket", required=True, help="the S3 bucket (must exist)")
    parser.add_argument("--prefix", default="models",
                        help="key prefix (default models)")
    aws.add_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_publish)


def _publish(args: argparse.Namespace) -> int:
    from edged_cloud import aws, publish

    s3 = aws.client("s3", args)
    result = publish.publish(args.bundle, args.bucket, s3, prefix=args.prefix)
    print(publish.as_json(result) if args.json else publish.describe(result))
    return 0
