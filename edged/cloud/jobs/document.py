"""The edged job document: what a deploy-model job asks the device to do.

::

    {"operation": "edged.deploy-model",
     "bundle": {"url": "https://...", "sha256": "<64 hex>", "size": 123456},
     "model": {"name": "windturbine", "version": 7},
     "options": {"shadow_decisions": 0, "activate": true}}

A job whose document is not an object with ``"operation": "edged.deploy-model"`` is not
edged's (``is_ours``): the executor leaves it alone for the software it is meant for. One
of ours that does not parse is bad for good: the executor reports it REJECTED
(``JobDocumentError``, reason ``malformed`` or ``too_large``). The bundle URL must be https;
``options.allow_http`` lets a lab or a test serve bundles over plain http, and nothing
else does. The bundle's own hash and signature are checked later by ``edged.model.bundle``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, model_validator

from edged.base.strict_json import JsonError
from edged.base.strict_json import loads as strict_loads
from edged.cloud.jobs.protocol import JobDocumentError, JobExecution
from edged.model.bundle.errors import BundleError
from edged.plugin.config import Strict

MAX_DOCUMENT_CHARS = 32_768
OPERATION = "edged.deploy-model"

# The service substitutes these when the device fetches the document; one still present
# means the URL was never signed (or the document was read some other way).
_PLACEHOLDER = re.compile(r"\$\{aws:iot:s3-presigned-url(?:-v2)?:[^}]*\}")


def is_ours(document: Any) -> bool:
    """True if a job with ``document`` is edged's to run (its ``operation`` says so)."""
    return isinstance(document, dict) and document.get("operation") == OPERATION


def needs_fresh_url(url: str) -> bool:
    """True if ``url`` still holds an unresolved pre-signed URL placeholder: the device
    must describe the execution again to get a signed one."""
    return bool(_PLACEHOLDER.search(url))


class BundleRef(Strict):
    """Where the bundle is and what its bytes must hash to."""

    url: str = Field(min_length=1, max_length=MAX_DOCUMENT_CHARS,
                     description="https URL of the bundle (a pre-signed S3 URL on AWS).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex SHA-256.")
    size: int = Field(gt=0, le=2**40, description="Bundle size in bytes.")


class ModelRef(Strict):
    """The model the bundle holds."""

    # The bundle manifest's own rule (edged.model.package), so the two can never disagree.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
                      description="Model name, as in the bundle's manifest.")
    version: int = Field(ge=1, description="Model version; must be newer than installed.")


class DeployOptions(Strict):
    """How to roll the model in."""

    activate: bool = Field(True, description="Make the new model live after install.")
    shadow_decisions: int = Field(
        0, ge=0, le=1_000_000,
        description="Run the new model beside the live one for this many decisions first.")
    allow_http: bool = Field(
        False, description="Accept an http:// bundle URL (labs and tests only).")


class JobDocument(Strict):
    """A deploy-model job document, validated."""

    operation: Literal["edged.deploy-model"]
    bundle: BundleRef
    model: ModelRef
    options: DeployOptions = Field(default_factory=DeployOptions)

    @model_validator(mode="after")
    def _url_scheme(self) -> JobDocument:
        url = self.bundle.url
        if needs_fresh_url(url):
            return self  # checked once the service has substituted it
        parts = urlsplit(url)
        allowed = ("https", "http") if self.options.allow_http else ("https",)
        if parts.scheme not in allowed or not parts.netloc:
            raise ValueError(f"bundle.url must be an {' or '.join(allowed)} URL, "
                             f"not {parts.scheme or 'schemeless'!s}")
        return self

    @property
    def needs_fresh_url(self) -> bool:
        return needs_fresh_url(self.bundle.url)


def _where(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"]) or "document"


def parse_document(document: dict[str, Any] | str | bytes) -> JobDocument:
    """A validated job document, or ``JobDocumentError`` naming each bad key."""
    if isinstance(document, (str, bytes)):
        if len(document) > MAX_DOCUMENT_CHARS:
            raise JobDocumentError("too_large", f"job document has {len(document)} "
                                   f"characters, at most {MAX_DOCUMENT_CHARS}")
        try:
            # A key given twice is refused, not resolved: the last one would win here
            # while whoever reviewed the document may have read the first.
            document = strict_loads(document, max_bytes=MAX_DOCUMENT_CHARS)
        except JsonError as exc:
            raise JobDocumentError("malformed", f"job document: {exc}") from None
    else:
        size = len(json.dumps(document, separators=(",", ":")))
        if size > MAX_DOCUMENT_CHARS:
            raise JobDocumentError("too_large", f"job document has {size} characters, "
                                                f"at most {MAX_DOCUMENT_CHARS}")
    if not isinstance(document, dict):
        raise JobDocumentError("malformed", "job document must be a JSON object")
    try:
        # strict: a "7" is not a version, a 1 is not a bool.
        return JobDocument.model_validate(document, strict=True)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e)}: {e['msg']}" for e in exc.errors())
        raise JobDocumentError("malformed", problems) from None


def document_of(execution: JobExecution) -> dict[str, Any]:
    """The execution's job document as the reply carried it, or ``JobDocumentError`` if
    that reply repeats a key (then no reading of it can be trusted)."""
    if execution.document_error is not None:
        raise JobDocumentError("malformed", f"job document: {execution.document_error}")
    return execution.job_document or {}


def terminal_status(error: BaseException) -> Literal["REJECTED", "FAILED"]:
    """The terminal status a failed execution is reported with: REJECTED for what retrying
    cannot fix (a bad document, a refused bundle), FAILED for transient trouble (network,
    disk, timeouts) that the job's retry configuration may try again."""
    if isinstance(error, (BundleError, JobDocumentError)) and not error.retryable:
        return "REJECTED"
    return "FAILED"
