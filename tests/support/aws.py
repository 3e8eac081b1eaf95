"""A local AWS for cloud_tools tests: moto's server (every service on one port: IoT, S3,
IAM, STS) behind ``S3Server``'s forwarder, with clients for any service and the
environment an ``edged-cloud`` command needs to reach it::

    with AwsServer() as aws:
        aws.client("iot").create_thing(thingName="turbine-1")
        monkeypatch.setenv(...)  # or: for k, v in aws.environment().items(): ...

moto keeps its state per process, for the whole process: name things, groups, buckets
and jobs uniquely per test (``unique``).
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.support.servers import S3Server

REGION = "us-east-1"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class AwsServer(S3Server):
    """moto's server for every service, reached at ``endpoint_url``."""

    def client(self, service: str = "s3") -> Any:  # type: ignore[override]
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=Config(s3={"addressing_style": "path"}))

    def environment(self) -> dict[str, str]:
        """What a command run against this server needs in its environment: boto3 reads
        its endpoint from AWS_ENDPOINT_URL."""
        return {**self.CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint_url}

    def __enter__(self) -> AwsServer:
        self.start()
        return self
