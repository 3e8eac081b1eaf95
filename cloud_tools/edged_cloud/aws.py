"""boto3 clients for ``edged-cloud`` commands, and AWS's errors as the user's mistakes.

One place sets up a client: the endpoint (``--endpoint-url`` or boto3's own
``AWS_ENDPOINT_URL``; a local moto server in tests and the fleet demo), the region, path-style
S3 addressing where the endpoint is not AWS's (moto's server and other S3-compatible ones
take no bucket subdomains).
"""

from __future__ import annotations

import argparse
from typing import Any

from edged_cloud.errors import CloudToolError, NotFound


def add_options(parser: argparse.ArgumentParser) -> None:
    """``--endpoint-url`` and ``--region``, for every command that calls AWS."""
    parser.add_argument("--endpoint-url", metavar="URL",
                        help="an AWS-compatible endpoint (a local moto server); default: "
                             "boto3's own (AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--region", help="the AWS region (default: boto3's own)")


def client(service: str, args: argparse.Namespace | None = None, *,
           endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A boto3 client for ``service`` with the command's ``--endpoint-url`` and ``--region``."""
    import boto3
    from botocore.config import Config

    endpoint_url = endpoint_url or getattr(args, "endpoint_url", None)
    region = region or getattr(args, "region", None)
    config = Config(s3={"addressing_style": "path"}) if endpoint_url else None
    return boto3.client(service, endpoint_url=endpoint_url, region_name=region,
                        config=config)


def error_code(exc: BaseException) -> str | None:
    """AWS's error code of a botocore ``ClientError`` (``ResourceNotFoundException``...)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def call(what: str, function: Any, /, *, missing: str | None = None, **kwargs: Any) -> Any:
    """``function(**kwargs)``; AWS's refusals become a ``CloudToolError`` that says ``what``
    was being done, and a missing resource a ``NotFound`` saying ``missing``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return function(**kwargs)
    except ClientError as exc:
        code = error_code(exc) or "error"
        if missing is not None and code in ("ResourceNotFoundException", "NoSuchEntity",
                                            "NoSuchEntityException", "NotFoundException",
                                            "404", "NoSuchKey", "NoSuchBucket"):
            raise NotFound(missing) from None
        raise CloudToolError(f"{what}: AWS answered {code}: "
                             f"{exc.response.get('Error', {}).get('Message', '')}") from None
    except BotoCoreError as exc:
        raise CloudToolError(f"{what}: {exc}") from None
