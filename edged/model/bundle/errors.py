"""The bundle's errors: every refusal names a short ``reason`` and whether retrying helps.

A bad bundle is bad for good: downloading the same bytes again cannot fix a signature, a
hash, a version or a schema, so ``retryable`` is False for every reason below and the jobs
executor reports the execution REJECTED, never FAILED (docs/bundle.md lists the reasons).
"""

from __future__ import annotations

from edged.base.errors import EdgedError

#: Every reason a bundle is refused for.
REASONS = frozenset({
    "hash_mismatch", "bad_signature", "unsigned", "unknown_key", "revoked_key",
    "not_newer", "truncated", "unsafe_entry", "too_large", "incompatible",
    "golden_failed", "malformed",
})


class BundleError(EdgedError):
    """A model bundle is refused; ``reason`` says why, ``retryable`` whether to try again."""

    def __init__(self, reason: str, detail: str, *, retryable: bool = False) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown bundle error reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
