"""What an ``edged-cloud`` command reports to its user instead of a traceback."""

from __future__ import annotations

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_DATAERR = 65  # sysexits.h: the input data was wrong (a dataset, a bundle, a key)
EX_NOINPUT = 66  # a file, bucket, thing or role that does not exist
EX_CONFIG = 78


class CloudToolError(Exception):
    """A mistake or a refusal the user can act on: the message says what and where, and
    ``exit_code`` is the command's exit status."""

    exit_code = EX_FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class NotFound(CloudToolError):
    """Something named does not exist: a file, a bucket, a role, a thing, a job."""

    exit_code = EX_NOINPUT


class BadInput(CloudToolError):
    """Input that cannot be used: a malformed dataset, bundle, key or option value."""

    exit_code = EX_DATAERR
