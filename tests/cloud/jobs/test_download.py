"""fetch_bundle against real HTTP: tests.support.BundleServer with its faults, and moto's S3
server with a boto3 pre-signed URL. Bundles are a few hundred KiB and backoffs short."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import random
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
import structlog
from botocore.config import Config

from edged.base import retry
from edged.cloud.jobs import download
from edged.cloud.jobs.download import DownloadError, ExpiredUrl, Fetched, fetch_bundle
from edged.model.bundle.errors import BundleError
from tests.support import BundleServer, S3Server, free_port, make_pki
from tests.support.jobs_peer import Presigner

DATA = random.Random(7).randbytes(300 * 1024)
SHA = hashlib.sha256(DATA).hexdigest()
NAME = "windturbine-7.tar.gz"
SECRET = "X-Amz-Signature=d0d0cafe5ec7e7"
CUT = 100_000


@pytest.fixture
def server():
    with BundleServer({NAME: DATA}) as server:
        yield server


@pytest.fixture
def target(tmp_path) -> Path:
    return tmp_path / "bundle.tar.gz"


def part_of(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".part")


async def fetch(url: str, path: Path, **options) -> Fetched:
    options = {"size": len(DATA), "sha256": SHA, "backoff_s": 0.01, "timeout_s": 5.0,
               **options}
    return await fetch_bundle(url, path, **options)


def requested(server: BundleServer) -> list[tuple[str | None, int]]:
    return [(request["range"], request["status"]) for request in server.requests]


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def assert_no_file_left(path: Path) -> None:
    assert not path.exists()
    assert not part_of(path).exists()


# -- plain downloads ----------------------------------------------------------------------


async def test_a_download_is_hash_checked_and_renamed_durably(server, target, monkeypatch):
    synced = []
    fsync_dir = download.fsync_dir
    monkeypatch.setattr(download, "fsync_dir",
                        lambda path: (synced.append(path), fsync_dir(path)))

    fetched = await fetch(server.url(NAME), target)

    assert target.read_bytes() == DATA
    assert not part_of(target).exists()
    assert synced == [target.parent]
    assert fetched == Fetched(path=target, size=len(DATA), downloaded=len(DATA),
                              resumed_from=0, attempts=1, seconds=fetched.seconds)
    assert server.requests == [{"path": f"/{NAME}", "range": None, "status": 200}]


async def test_a_complete_file_is_not_fetched_again(server, target):
    target.write_bytes(DATA)

    fetched = await fetch(server.url(NAME), target)

    assert (fetched.downloaded, fetched.attempts, fetched.resumed_from) == (0, 0, len(DATA))
    assert server.requests == []


async def test_a_stale_file_at_the_path_is_replaced(server, target):
    target.write_bytes(DATA[:-1] + b"\0")

    fetched = await fetch(server.url(NAME), target)

    assert fetched.downloaded == len(DATA)
    assert target.read_bytes() == DATA


async def test_a_part_file_longer_than_the_bundle_is_started_again(server, target):
    part_of(target).write_bytes(DATA + b"junk")

    fetched = await fetch(server.url(NAME), target)

    assert requested(server) == [(None, 200)]
    assert fetched.downloaded == len(DATA)
    assert target.read_bytes() == DATA


async def test_redirects_are_followed_with_the_range(server, target):
    server.redirects = {"/old.tar.gz": f"/{NAME}"}
    part_of(target).write_bytes(DATA[:CUT])

    await fetch(server.url("old.tar.gz"), target)

    assert [(r["path"], r["range"], r["status"]) for r in server.requests] == [
        ("/old.tar.gz", f"bytes={CUT}-", 302), (f"/{NAME}", f"bytes={CUT}-", 206)]
    assert target.read_bytes() == DATA


async def test_a_redirect_loop_is_refused(server, target):
    server.redirects = {"/a": "/b", "/b": "/a"}

    with pytest.raises(DownloadError, match="more than 5 redirects") as refused:
        await fetch(server.url("a"), target)

    assert refused.value.reason == "http_status"
    assert len(server.requests) == 6


async def test_https_verifies_the_server_against_ca_file(tmp_path, target):
    pki = make_pki(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    with BundleServer({NAME: DATA}, tls=context) as server:
        with pytest.raises(DownloadError, match="certificate refused") as refused:
            await fetch(server.url(NAME), target)
        assert refused.value.reason == "network"

        fetched = await fetch(server.url(NAME), target, ca_file=pki.ca_file)

    assert server.url(NAME).startswith("https://")
    assert fetched.attempts == 1
    assert target.read_bytes() == DATA


# -- resuming -----------------------------------------------------------------------------


async def test_a_cut_connection_resumes_where_it_stopped(server, target):
    server.cut_after = CUT

    fetched = await fetch(server.url(NAME), target)

    # The second request asks only for what is missing: no byte is sent twice.
    assert requested(server) == [(None, 200), (f"bytes={CUT}-", 206)]
    assert (fetched.attempts, fetched.downloaded, fetched.resumed_from) == (2, len(DATA), 0)
    assert target.read_bytes() == DATA


async def test_a_failed_call_is_resumed_by_the_next(server, target):
    server.cut_after = CUT
    with pytest.raises(DownloadError) as failed:
        await fetch(server.url(NAME), target, attempts=1)
    assert failed.value.reason == "network"
    assert part_of(target).read_bytes() == DATA[:CUT]

    fetched = await fetch(server.url(NAME), target)

    assert requested(server)[-1] == (f"bytes={CUT}-", 206)
    assert (fetched.resumed_from, fetched.downloaded) == (CUT, len(DATA) - CUT)
    assert target.read_bytes() == DATA


async def test_a_cancelled_call_stops_at_once_and_the_next_resumes(server, target):
    server.stall_after = CUT
    seen: list[int] = []
    first = asyncio.create_task(fetch(server.url(NAME), target, on_progress=seen.append,
                                      progress_interval_s=0, timeout_s=30))
    await until(lambda: bool(seen) and seen[-1] == CUT)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    server.stall_after = None

    started = time.monotonic()
    fetched = await fetch(server.url(NAME), target)

    # The second call waited for the first call's thread, which let go of the part file
    # at once rather than after its 30 s socket timeout.
    assert time.monotonic() - started < 3
    assert fetched.resumed_from == CUT
    assert requested(server)[-1] == (f"bytes={CUT}-", 206)
    assert target.read_bytes() == DATA


async def test_a_call_waits_for_the_lock_on_the_part_file(server, target):
    part = part_of(target)
    part.write_bytes(DATA[:CUT])
    with part.open("r+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        fetching = asyncio.create_task(fetch(server.url(NAME), target))
        await asyncio.sleep(0.3)
        assert server.requests == []
        assert not fetching.done()
        fcntl.flock(held, fcntl.LOCK_UN)
        fetched = await fetching

    assert fetched.resumed_from == CUT
    assert target.read_bytes() == DATA


async def test_a_server_ignoring_range_is_read_from_byte_0(server, target):
    part_of(target).write_bytes(DATA[:CUT])
    server.ignore_range = True

    fetched = await fetch(server.url(NAME), target)

    assert requested(server) == [(f"bytes={CUT}-", 200)]
    assert (fetched.resumed_from, fetched.downloaded) == (CUT, len(DATA))
    assert target.read_bytes() == DATA


async def test_a_timeout_is_retried_from_the_bytes_on_disk(server, target):
    server.stall_after = CUT  # every response stalls after CUT more bytes

    fetched = await fetch(server.url(NAME), target, timeout_s=0.2)

    assert requested(server) == [(None, 200), (f"bytes={CUT}-", 206),
                                 (f"bytes={2 * CUT}-", 206), (f"bytes={3 * CUT}-", 206)]
    assert fetched.attempts == 4
    assert target.read_bytes() == DATA


async def test_a_corrupted_tail_of_a_resumed_file_is_fetched_again_from_0(server, target):
    part_of(target).write_bytes(DATA[:CUT - 1000] + bytes(1000))  # lost in a power cut

    fetched = await fetch(server.url(NAME), target)

    assert requested(server) == [(f"bytes={CUT}-", 206), (None, 200)]
    assert fetched.attempts == 2
    assert fetched.downloaded == len(DATA) - CUT + len(DATA)
    assert target.read_bytes() == DATA


# -- expired URLs and HTTP statuses -------------------------------------------------------


async def test_an_expired_url_keeps_the_bytes_and_a_fresh_one_resumes(server, target):
    presigner = Presigner(f"http://127.0.0.1:{server.port}", expires_s=60)
    server.valid = presigner.valid
    server.files = {"models/windturbine-7.tar.gz": DATA}
    s3_url = "https://s3.amazonaws.com/models/windturbine-7.tar.gz"
    url = presigner(s3_url)
    server.cut_after = CUT
    with pytest.raises(DownloadError):
        await fetch(url, target, attempts=1)

    presigner.expire_all()
    with pytest.raises(ExpiredUrl) as expired:
        await fetch(url, target)

    assert expired.value.reason == "expired_url"
    assert expired.value.retryable
    assert "X-Edged" not in str(expired.value)
    assert part_of(target).read_bytes() == DATA[:CUT]

    fetched = await fetch(presigner(s3_url), target)

    assert requested(server) == [(None, 200), (f"bytes={CUT}-", 403), (f"bytes={CUT}-", 206)]
    assert (fetched.resumed_from, fetched.downloaded) == (CUT, len(DATA) - CUT)
    assert target.read_bytes() == DATA


@pytest.mark.parametrize(("status", "error"), [(401, ExpiredUrl), (403, ExpiredUrl),
                                               (400, DownloadError), (404, DownloadError),
                                               (410, DownloadError)])
async def test_a_client_error_is_raised_at_once(server, target, status, error):
    server.status_override = status

    with pytest.raises(error) as refused:
        await fetch(f"{server.url(NAME)}?{SECRET}", target)

    assert type(refused.value) is error
    assert str(refused.value).endswith(f"HTTP {status} for {server.url(NAME)}")
    assert len(server.requests) == 1


async def test_404_names_the_url_without_its_query(server, target):
    with pytest.raises(DownloadError) as missing:
        await fetch(f"{server.url('missing.tar.gz')}?{SECRET}", target)

    assert str(missing.value) == f"http_status: HTTP 404 for {server.url('missing.tar.gz')}"
    assert missing.value.reason == "http_status"
    assert missing.value.retryable
    assert len(server.requests) == 1


async def test_503_twice_then_ok_succeeds(server, target):
    server.status_override, server.status_times = 503, 2

    fetched = await fetch(server.url(NAME), target)

    assert requested(server) == [(None, 503), (None, 503), (None, 200)]
    assert fetched.attempts == 3
    assert target.read_bytes() == DATA


async def test_503_always_fails_after_attempts_with_backoff(server, target, monkeypatch):
    # Full jitter draws each delay below its ceiling: at the ceiling the waits are
    # backoff_s, then twice that.
    monkeypatch.setattr(retry, "full_jitter", lambda ceiling: ceiling)
    server.status_override, server.status_times = 503, 100
    started = time.monotonic()

    with pytest.raises(DownloadError, match="HTTP 503") as failed:
        await fetch(server.url(NAME), target, attempts=3, backoff_s=0.1)

    assert failed.value.reason == "http_status"
    assert len(server.requests) == 3
    assert time.monotonic() - started >= 0.1 + 0.2


async def test_an_unreachable_server_fails_with_network(target):
    with pytest.raises(DownloadError) as failed:
        await fetch(f"http://127.0.0.1:{free_port()}/{NAME}", target, attempts=2)

    assert failed.value.reason == "network"


async def test_an_unwritable_path_fails_with_disk(server, tmp_path):
    with pytest.raises(DownloadError) as failed:
        await fetch(server.url(NAME), tmp_path / "missing" / "bundle.tar.gz")

    assert failed.value.reason == "disk"


# -- sizes and hashes ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["content_length", "content_range", "extra_bytes"])
async def test_more_bytes_than_the_job_says_is_too_large(server, target, how):
    seen: list[int] = []
    if how == "extra_bytes":
        server.extra_bytes = 1000
    else:
        server.files[NAME] = DATA + b"more"
    if how == "content_range":
        part_of(target).write_bytes(DATA[:CUT])

    with pytest.raises(BundleError) as refused:
        await fetch(server.url(NAME), target, on_progress=seen.append,
                    progress_interval_s=0)

    assert refused.value.reason == "too_large"
    assert not refused.value.retryable
    assert max(seen, default=0) <= len(DATA)
    assert_no_file_left(target)


@pytest.mark.parametrize("part", [0, CUT])
async def test_fewer_bytes_than_the_job_says_is_truncated(server, target, part):
    server.files[NAME] = DATA[:CUT // 2]
    if part:
        part_of(target).write_bytes(DATA[:part])  # more than the server has: 416

    with pytest.raises(BundleError) as refused:
        await fetch(server.url(NAME), target)

    assert refused.value.reason == "truncated"
    assert requested(server)[-1][1] == (416 if part else 200)
    assert_no_file_left(target)


async def test_a_wrong_hash_downloaded_in_one_go_is_refused(server, target):
    with pytest.raises(BundleError) as refused:
        await fetch(server.url(NAME), target, sha256="0" * 64)

    assert refused.value.reason == "hash_mismatch"
    assert len(server.requests) == 1
    assert_no_file_left(target)


async def test_a_wrong_hash_of_a_resumed_file_is_refused_after_one_fresh_try(server, target):
    part_of(target).write_bytes(DATA[:CUT])

    with pytest.raises(BundleError) as refused:
        await fetch(server.url(NAME), target, sha256="0" * 64)

    assert refused.value.reason == "hash_mismatch"
    assert requested(server) == [(f"bytes={CUT}-", 206), (None, 200)]
    assert_no_file_left(target)


# -- progress and credentials -------------------------------------------------------------


async def test_progress_is_reported_on_the_loop_thread_up_to_size(server, target):
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int]] = []

    await fetch(server.url(NAME), target, progress_interval_s=0,
                on_progress=lambda n: seen.append((threading.get_ident(), n)))

    values = [n for _, n in seen]
    assert {thread for thread, _ in seen} == {loop_thread}
    assert len(values) > 2
    assert values == sorted(set(values))
    assert values[-1] == len(DATA)


async def test_progress_is_throttled(server, target):
    seen: list[int] = []

    await fetch(server.url(NAME), target, on_progress=seen.append, progress_interval_s=60)

    assert len(seen) == 2  # the first chunk, then the end
    assert seen[-1] == len(DATA)


def _failing(how: str, server: BundleServer) -> tuple[str, dict]:
    url = f"{server.url(NAME)}?{SECRET}"
    if how == "status_503":
        server.status_override, server.status_times = 503, 100
    elif how == "expired":
        server.valid = lambda url: False
    elif how == "cut":
        server.cut_after, server.cut_times = CUT, 100
    elif how == "too_large":
        server.extra_bytes = 10
    elif how == "unreachable":
        url = f"http://127.0.0.1:{free_port()}/{NAME}?{SECRET}"
    elif how == "not_found":
        url = f"{server.url('missing')}?{SECRET}"
    return url, {"sha256": "0" * 64} if how == "hash_mismatch" else {}


@pytest.mark.parametrize("how", ["status_503", "expired", "cut", "too_large", "unreachable",
                                 "not_found", "hash_mismatch"])
async def test_the_query_string_never_appears_in_errors_or_logs(server, target, how):
    url, options = _failing(how, server)
    part_of(target).write_bytes(DATA[:1000])  # a resume, so that it is logged too

    with structlog.testing.capture_logs() as logs, \
            pytest.raises((DownloadError, BundleError)) as failed:
        await fetch(url, target, attempts=2, **options)

    texts = [str(failed.value), repr(failed.value), str(failed.value.__cause__), repr(logs)]
    assert any(entry["event"] == "bundle_download_resumed" for entry in logs)
    assert not [text for text in texts if "d0d0cafe" in text]


# -- a real S3 API ------------------------------------------------------------------------


@pytest.fixture
def presigned():
    """Pre-signed (SigV4) GET URLs of the bundle and of a missing key on moto's S3."""
    with S3Server() as s3:
        client = boto3.client(
            "s3", endpoint_url=s3.endpoint_url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
        bucket = s3.create_bucket()
        client.put_object(Bucket=bucket, Key=f"models/{NAME}", Body=DATA)
        yield {key: client.generate_presigned_url(
                   "get_object", Params={"Bucket": bucket, "Key": f"models/{key}"},
                   ExpiresIn=300)
               for key in (NAME, "missing.tar.gz")}


async def test_a_presigned_s3_url_is_resumed_and_its_signature_kept_secret(presigned,
                                                                            target):
    assert "X-Amz-Signature=" in presigned[NAME]
    part_of(target).write_bytes(DATA[:CUT])

    fetched = await fetch(presigned[NAME], target)

    assert (fetched.resumed_from, fetched.downloaded) == (CUT, len(DATA) - CUT)
    assert target.read_bytes() == DATA

    with pytest.raises(DownloadError) as missing:
        await fetch(presigned["missing.tar.gz"], target.with_name("other.tar.gz"))
    assert missing.value.reason == "http_status"
    assert "HTTP 404" in str(missing.value)
    assert "X-Amz" not in str(missing.value)
