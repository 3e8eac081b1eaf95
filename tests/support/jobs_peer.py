"""A jobs-service peer for tests: the device side of AWS IoT Jobs over a real broker.

The service itself is ``edged_cloud.local_jobs.mqtt_service.JobsService`` (the core of the
local jobs service that the fleet demo runs), as strict as AWS IoT Core where the device
can tell; see its docstring::

    async with JobsService(broker.host, broker.port) as jobs:
        await jobs.queue_job("turbine-7", "deploy-7", document)
        ...  # the device under test talks to $aws/things/turbine-7/jobs/...

Here is what only tests need: ``Presigner``, URLs that a test's HTTP server can check
and expire. It is a test double, not a jobs service: no rollouts, retry configuration or
abort criteria (``edged_cloud.local_jobs.service`` adds those).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit

from edged_cloud.local_jobs.mqtt_service import (
    _PLACEHOLDER,
    CODES,
    MINUTES,
    Execution,
    JobsService,
    Refusal,
    placeholder_url,
    status_details_problem,
)

__all__ = ["CODES", "MINUTES", "_PLACEHOLDER", "Execution", "JobsService", "Presigner",
           "Refusal", "placeholder_url", "status_details_problem"]

class Presigner:
    """Signs placeholder S3 URLs as ``base_url``/<bucket>/<key>?X-Edged-Expires=<epoch>&
    X-Edged-Id=<n> and remembers them, so that a test's HTTP server can refuse expired
    ones (``valid(url)``) and a test can expire every URL issued so far
    (``expire_all()``). The key is decoded from the placeholder's URL and encoded again
    in the signed one, so a server that decodes paths serves the object by its key::

        presigner = Presigner("http://127.0.0.1:8080", expires_s=60)
        async with JobsService(host, port, presign=presigner) as jobs: ...
    """

    def __init__(self, base_url: str, expires_s: int = 3600,
                 clock: Callable[[], float] = time.time) -> None:
        if not 60 <= expires_s <= 3600:
            raise ValueError("a pre-signed URL lives 60-3600 s")
        self.base_url = base_url.rstrip("/")
        self.expires_s = expires_s
        self.clock = clock
        self.issued: dict[str, str] = {}  # id -> the S3 URL it signs
        self._revoked: set[str] = set()
        self._ids = itertools.count(1)

    @staticmethod
    def object_of(s3_url: str) -> str:
        """``<bucket>/<key>`` of a path-style S3 URL, the key decoded."""
        return unquote(urlsplit(s3_url).path.lstrip("/"))

    def __call__(self, s3_url: str) -> str:
        ident = str(next(self._ids))
        self.issued[ident] = s3_url
        expires = int(self.clock()) + self.expires_s
        return (f"{self.base_url}/{quote(self.object_of(s3_url))}?X-Edged-Expires={expires}"
                f"&X-Edged-Id={ident}")

    def valid(self, url: str) -> bool:
        """True if this presigner issued ``url``, it has not expired and was not revoked."""
        query = parse_qs(urlsplit(url).query)
        ident = query.get("X-Edged-Id", [""])[0]
        try:
            expires = int(query.get("X-Edged-Expires", [""])[0])
        except ValueError:
            return False
        return ident in self.issued and ident not in self._revoked and \
            self.clock() < expires

    def expire_all(self) -> None:
        """Every URL issued so far stops working; new ones (a fresh describe) work."""
        self._revoked.update(self.issued)

    def revoke(self, url: str) -> None:
        """``url`` stops working (one this presigner issued)."""
        self._revoked.update(parse_qs(urlsplit(url).query).get("X-Edged-Id", []))


