"""Download a model bundle: streamed to disk, resumable, capped at its declared size.

A bundle can be hundreds of megabytes, an edge device has little memory and its link drops.
So the bytes go straight to ``<path>.part`` in 64 KiB chunks, never into memory, and a
retry, or a later call after a crash or a power cut, asks only for what is missing
(``Range: bytes=N-``). The part file is fsynced every 8 MiB and at the end of each request,
so a resume starts from bytes that really are on disk; a tail lost anyway shows up as a
hash mismatch, and a file built from several requests is then fetched once more from 0.

The job document declares the size and the SHA-256, and a server is trusted with neither:
nothing beyond ``size`` bytes is ever written (a server that declares or sends more is
refused with ``BundleError("too_large")``), and only a file with the right hash is renamed
to ``path``. A pre-signed URL's query string is a credential: errors and log lines name a
URL without it (``redact``).

Sockets block, so the transfer runs in a worker thread on an :mod:`edged.base.http`
connection (``http.client``), which leaves Range and redirects to us. Cancelling the
coroutine stops the thread within a chunk (it shuts its socket down); an exclusive
``flock`` on the part file keeps a thread left over from a cancelled call from writing
while a later call for the same path does.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urljoin, urlsplit

import structlog

from edged.base.durable import fsync_dir
from edged.base.errors import EdgedError
from edged.base.http import Connection, tls_context
from edged.base.retry import Backoff
from edged.model.bundle.errors import BundleError

log = structlog.get_logger("edged.cloud.jobs")

CHUNK = 64 * 1024
SYNC_EVERY = 8 * 1024 * 1024
MAX_REDIRECTS = 5
MAX_BACKOFF_S = 10.0
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LOCK_POLL_S = 0.02


class DownloadError(EdgedError):
    """A bundle could not be downloaded this time; ``reason`` says why (always retryable:
    the job is reported FAILED)."""

    REASONS = frozenset({"network", "http_status", "disk", "expired_url"})

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown download error reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = True


class ExpiredUrl(DownloadError):
    """The server refused the URL as expired or unauthorised: describe the execution again
    for a fresh pre-signed URL and fetch again; the bytes on disk are kept."""

    def __init__(self, detail: str) -> None:
        super().__init__("expired_url", detail)


class _Transient(Exception):
    """A try failed in a way the next try may not: retried with backoff."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Cancelled(Exception):
    """The coroutine was cancelled: the worker thread stops where it is."""


@dataclass(frozen=True)
class Fetched:
    """A complete, hash-checked bundle at ``path``."""

    path: Path
    size: int
    downloaded: int  # bytes this call transferred and wrote
    resumed_from: int  # bytes already on disk when this call began (size: nothing to do)
    attempts: int  # requests this call made (a redirect is part of its request)
    seconds: float


def redact(url: str) -> str:
    """``url`` without query string, fragment or user info: safe for errors and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


def _valid_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and \
        not any(ch.isspace() or ord(ch) < 32 for ch in url)


async def fetch_bundle(url: str, path: Path, *, size: int, sha256: str,
                       on_progress: Callable[[int], None] | None = None,
                       timeout_s: float = 30.0, attempts: int = 5,
                       ca_file: Path | None = None, progress_interval_s: float = 0.5,
                       backoff_s: float = 0.5) -> Fetched:
    """Download ``url`` to ``path`` unless it is there already: exactly ``size`` bytes whose
    SHA-256 is ``sha256``, resuming from ``<path>.part``.

    ``on_progress(bytes_on_disk)`` runs on the event loop, at most every
    ``progress_interval_s`` and once at the end (a restart from byte 0 lowers the count).
    A try that fails transiently is retried, ``attempts`` tries in all, after a delay
    drawn below ``backoff_s``, twice that, ... (at most 10 s; full jitter,
    :mod:`edged.base.retry`). Raises ``ExpiredUrl`` (fetch a fresh URL
    and call again), ``DownloadError`` (transient: the job FAILED) or ``BundleError``
    (``too_large``, ``truncated``, ``hash_mismatch``: the job REJECTED, no file left).
    """
    path = Path(path)
    if not _valid_url(url):
        raise ValueError(f"not an http(s) URL: {redact(url)}")
    if size <= 0 or attempts < 1 or not _SHA256.fullmatch(sha256):
        raise ValueError("size and attempts must be positive, sha256 64 lower-case hex")
    loop = asyncio.get_running_loop()
    transfer = _Transfer(url, path, size, sha256, timeout_s=timeout_s, attempts=attempts,
                         ca_file=ca_file, backoff_s=backoff_s)
    if on_progress is not None:
        transfer.progress = _Progress(loop, on_progress, progress_interval_s, size,
                                      transfer.cancelled)
    try:
        fetched = await asyncio.to_thread(transfer.run)
    except asyncio.CancelledError:
        transfer.abort()
        raise
    if on_progress is not None:
        on_progress(fetched.size)
    return fetched


class _Progress:
    """Hands ``bytes on disk`` from the worker thread to the loop, throttled."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[int], None],
                 interval_s: float, size: int, cancelled: threading.Event) -> None:
        self.loop = loop
        self.callback = callback
        self.interval_s = interval_s
        self.size = size
        self.cancelled = cancelled
        self.last = float("-inf")

    def __call__(self, on_disk: int) -> None:
        now = time.monotonic()
        # The coroutine reports the final size itself, after the thread has finished.
        if on_disk >= self.size or now - self.last < self.interval_s or \
                self.cancelled.is_set():
            return
        self.last = now
        with contextlib.suppress(RuntimeError):  # the loop closed under a leftover thread
            self.loop.call_soon_threadsafe(self.callback, on_disk)


class _Transfer:
    """One ``fetch_bundle`` call's work, run in a worker thread."""

    def __init__(self, url: str, path: Path, size: int, sha256: str, *, timeout_s: float,
                 attempts: int, ca_file: Path | None, backoff_s: float) -> None:
        self.url = url
        self.path = path
        self.part = path.with_suffix(path.suffix + ".part")
        self.size = size
        self.sha256 = sha256
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.ca_file = ca_file
        self.backoff_s = backoff_s
        self.progress: Callable[[int], None] = lambda on_disk: None
        self.cancelled = threading.Event()
        self.tries = 0
        self.downloaded = 0
        self.on_disk = 0
        # Some bytes of the part file came from an earlier request than others: a bad hash
        # may then be a tail lost in a power cut, worth one fresh download.
        self.pieced = False
        self._conn: Connection | None = None
        self._ssl: ssl.SSLContext | None = None

    def abort(self) -> None:
        """Stop the thread: at its next chunk, or now if it waits on the socket."""
        self.cancelled.set()
        conn = self._conn
        sock = conn.http.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                # socket.socket's own shutdown, so an SSL socket's reader gets an EOF.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def run(self) -> Fetched:
        started = time.monotonic()
        part = None
        while part is None:
            if self._complete(self.path):
                return self._fetched(self.size, started)
            part = self._open_locked()
        with part:
            if self._complete(self.path):  # a call before us finished while we waited
                self._unlink()
                return self._fetched(self.size, started)
            resumed_from = self._start(part)
            try:
                self._fill_checked(part)
            except BundleError:
                self._unlink()
                raise
            self._commit(part)
        return self._fetched(resumed_from, started)

    def _fetched(self, resumed_from: int, started: float) -> Fetched:
        return Fetched(path=self.path, size=self.size, downloaded=self.downloaded,
                       resumed_from=resumed_from, attempts=self.tries,
                       seconds=time.monotonic() - started)

    # -- the part file -------------------------------------------------------------------

    @contextlib.contextmanager
    def _disk(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise DownloadError("disk", f"{self.part}: {exc.strerror or exc}") from exc

    def _complete(self, path: Path) -> bool:
        with self._disk():
            try:
                if path.stat().st_size != self.size:
                    return False
                with path.open("rb") as file:
                    return hashlib.file_digest(file, "sha256").hexdigest() == self.sha256
            except FileNotFoundError:
                return False

    def _open_locked(self) -> IO[bytes] | None:
        """The part file, opened and locked; None if it was renamed or removed meanwhile
        (by the call we waited for), so that the caller looks again."""
        with self._disk():
            part = os.fdopen(os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
        try:
            while True:
                try:
                    fcntl.flock(part.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self.cancelled.wait(_LOCK_POLL_S):
                        raise _Cancelled from None
            with self._disk():
                mine = os.fstat(part.fileno())
                now = _stat_or_none(self.part)
        except BaseException:
            part.close()
            raise
        if now is None or (mine.st_dev, mine.st_ino) != (now.st_dev, now.st_ino):
            part.close()
            return None
        return part

    def _start(self, part: IO[bytes]) -> int:
        with self._disk():
            self.on_disk = os.fstat(part.fileno()).st_size
        if self.on_disk > self.size:  # not a prefix of this bundle
            self._truncate(part)
        if self.on_disk:
            self.pieced = True
            log.info("bundle_download_resumed", url=redact(self.url), offset=self.on_disk,
                     size=self.size)
        return self.on_disk

    def _truncate(self, part: IO[bytes]) -> None:
        with self._disk():
            part.truncate(0)
        self.on_disk = 0
        self.pieced = False

    def _write(self, part: IO[bytes], data: bytes) -> None:
        with self._disk():
            part.write(data)
        self.on_disk += len(data)
        self.downloaded += len(data)
        self.progress(self.on_disk)

    def _sync(self, part: IO[bytes]) -> None:
        with self._disk():
            part.flush()
            os.fsync(part.fileno())

    def _digest(self, part: IO[bytes]) -> str:
        with self._disk():
            part.flush()
            part.seek(0)
            return hashlib.file_digest(part, "sha256").hexdigest()

    def _commit(self, part: IO[bytes]) -> None:
        self._sync(part)
        with self._disk():
            os.replace(self.part, self.path)
            fsync_dir(self.path.parent)

    def _unlink(self) -> None:
        with self._disk(), contextlib.suppress(FileNotFoundError):
            self.part.unlink()

    # -- tries ---------------------------------------------------------------------------

    def _fill_checked(self, part: IO[bytes]) -> None:
        self._fill(part)
        digest = self._digest(part)
        if digest != self.sha256 and self.pieced:
            log.warning("bundle_download_restarted", url=redact(self.url),
                        reason="hash_mismatch", size=self.size)
            self._truncate(part)
            self._fill(part)
            digest = self._digest(part)
        if digest != self.sha256:
            raise BundleError("hash_mismatch", f"{redact(self.url)}: SHA-256 is {digest}, "
                                               f"the job says {self.sha256}")

    def _fill(self, part: IO[bytes]) -> None:
        """Tries until ``size`` bytes are on disk, or raises."""
        backoff = Backoff(self.backoff_s, MAX_BACKOFF_S)
        while self.on_disk < self.size:
            self._check_cancelled()
            self.tries += 1
            try:
                self._try(part)
            except _Transient as exc:
                self._check_cancelled()
                delay = backoff.next_delay()
                if backoff.failures >= self.attempts:
                    raise DownloadError(exc.reason, exc.detail) from None
                log.warning("bundle_download_retry", url=redact(self.url), reason=exc.reason,
                            detail=exc.detail, failures=backoff.failures,
                            attempts=self.attempts, delay_s=delay, on_disk=self.on_disk)
                if self.cancelled.wait(delay):
                    raise _Cancelled from None

    def _check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise _Cancelled

    def _try(self, part: IO[bytes]) -> None:
        url, response = self._request(self.on_disk)
        try:
            start = self._accept(url, response)
            if start < self.on_disk:  # the server ignored Range: from byte 0 then
                self._truncate(part)
            elif start:
                self.pieced = True
            self._stream(url, response, part)
        finally:
            self._close()

    def _request(self, offset: int) -> tuple[str, http.client.HTTPResponse]:
        """Send the GET, following redirects with the same Range; (final URL, response)."""
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send(url, offset)
            if response.status not in _REDIRECT_STATUSES:
                return url, response
            location = response.getheader("Location")
            self._close()
            if not location:
                raise DownloadError("http_status", f"HTTP {response.status} without a "
                                                   f"Location for {redact(url)}")
            url = self._redirect(url, location)
        raise DownloadError("http_status", f"more than {MAX_REDIRECTS} redirects "
                                           f"from {redact(self.url)}")

    @staticmethod
    def _redirect(url: str, location: str) -> str:
        target = urljoin(url, location)
        if not _valid_url(target):
            raise DownloadError("http_status", f"{redact(url)} redirects to an invalid URL")
        if urlsplit(url).scheme == "https" and urlsplit(target).scheme == "http":
            raise DownloadError("http_status", f"{redact(url)} redirects from https to http")
        return target

    def _send(self, url: str, offset: int) -> http.client.HTTPResponse:
        if urlsplit(url).scheme == "https" and self._ssl is None:
            self._ssl = tls_context(ca_file=self.ca_file)
        # Direct, as it always went: the proxy variables that the webhook and the
        # pre-signed PUT honour have never applied to bundle downloads.
        self._conn = Connection(url, timeout_s=self.timeout_s, proxy=False, tls=self._ssl)
        headers = {"User-Agent": "edged", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            return self._conn.request("GET", headers=headers)
        except ssl.SSLCertVerificationError as exc:
            self._close()
            raise DownloadError("network", f"{redact(url)}: certificate refused: "
                                           f"{exc.verify_message}") from None
        except (OSError, http.client.HTTPException) as exc:
            self._close()
            raise _Transient("network", f"{redact(url)}: {_describe(exc)}") from None

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _accept(self, url: str, response: http.client.HTTPResponse) -> int:
        """Check the response's status and length against the job; the body's first byte."""
        status, where = response.status, f"HTTP {response.status} for {redact(url)}"
        if status == 200:
            total = _content_length(response)
            self._check_total(url, total)
            return 0
        if status == 206:
            found = _CONTENT_RANGE.fullmatch(response.getheader("Content-Range", "").strip())
            if not found:
                raise _Transient("http_status", f"{where} without a byte Content-Range")
            first, total = int(found[1]), int(found[3])
            self._check_total(url, total)
            if first != self.on_disk:
                raise _Transient("http_status", f"{where} starts at byte {first}, "
                                                f"not {self.on_disk}")
            return first
        if status == 416:
            found = _UNSATISFIED_RANGE.fullmatch(response.getheader("Content-Range", "").strip())
            if found:
                self._check_total(url, int(found[1]))
            raise _Transient("http_status", f"{where} (range from byte {self.on_disk})")
        if status in (401, 403) or (status == 400 and _says_expired(response)):
            raise ExpiredUrl(where)
        if status == 429 or status >= 500:
            raise _Transient("http_status", where)
        raise DownloadError("http_status", where)

    def _check_total(self, url: str, total: int | None) -> None:
        if total is not None and total != self.size:
            raise BundleError("too_large" if total > self.size else "truncated",
                              f"{redact(url)} has {total} bytes, the job says {self.size}")

    def _stream(self, url: str, response: http.client.HTTPResponse,
                part: IO[bytes]) -> None:
        """Append the body to the part file, never past ``size``."""
        synced = self.on_disk
        part.seek(self.on_disk)
        try:
            while True:
                self._check_cancelled()
                # One byte more than may be written, to notice a body that goes on.
                try:
                    chunk = response.read1(min(CHUNK, self.size - self.on_disk + 1))
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient("network", f"{redact(url)}: {_describe(exc)}") from None
                if not chunk:
                    break
                room = self.size - self.on_disk
                if chunk[:room]:
                    self._write(part, chunk[:room])
                if len(chunk) > room:
                    raise BundleError("too_large", f"{redact(url)} sends more than the "
                                                   f"{self.size} bytes the job says")
                if self.on_disk - synced >= SYNC_EVERY:
                    self._sync(part)
                    synced = self.on_disk
        finally:
            self._sync(part)
        self._check_cancelled()
        if self.on_disk < self.size:
            raise _Transient("network", f"{redact(url)}: the body ended at byte "
                                        f"{self.on_disk} of {self.size}")


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.getheader("Content-Length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise _Transient("http_status", f"bad Content-Length {value[:40]!r}") from None


def _says_expired(response: http.client.HTTPResponse) -> bool:
    """S3 answers some expired pre-signed URLs with 400 and says so in the body."""
    try:
        body = response.read(4096)
    except (OSError, http.client.HTTPException):
        return False
    return b"expired" in body.lower()


def _describe(exc: BaseException) -> str:
    # http.client's and socket's messages hold no URL; InvalidURL's would, but URLs are
    # checked before a connection is made.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
