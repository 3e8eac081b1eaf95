"""Fixtures for the capture store's tests: real files, a real moto S3 server over HTTP."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest

from edged.capture import AuxData, CaptureRecord, CaptureSettings, TensorData
from tests.support import S3Server


def record(i: int = 0, *, model: str = "model-a", capture_id: str | None = None,
           size: int = 16, aux: bytes | None = None) -> CaptureRecord:
    """A capture whose input tensor is ``size`` bytes of uint8 (byte k = (i + k) % 256)."""
    data = bytes((i + k) % 256 for k in range(size))
    return CaptureRecord(
        model_name=model,
        capture_id=f"cap-{i:05d}" if capture_id is None else capture_id,
        inference_timestamp=(1_700_000_000 + i, 123_456_789),
        input_tensors=[TensorData("input", "uint8", [size], data)],
        output_tensors=[TensorData("score", "float32", [1], b"\x00\x00\x80\x3f")],
        inputs=[AuxData("meta", "JSON", aux if aux is not None else b'{"i": %d}' % i)],
        outputs=[],
    )


@pytest.fixture
def make_record() -> Callable[..., CaptureRecord]:
    return record


@pytest.fixture
def disk_settings(tmp_path) -> Callable[..., CaptureSettings]:
    def make(**changes) -> CaptureSettings:
        values = {"destination": "Disk", "disk_path": tmp_path / "captures",
                  "device_name": "dev-1", "batch_size": 4, "buffer_size": 8,
                  "push_period_s": 0.2, "retry_backoff_s": 0.02,
                  "retry_max_backoff_s": 0.1, **changes}
        return CaptureSettings(**values)
    return make


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server on a loopback port; boto3's default chain finds test keys."""
    for name, value in S3Server.CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    with S3Server() as server:
        yield server


@pytest.fixture
def cloud_settings(tmp_path, s3) -> Callable[..., CaptureSettings]:
    bucket = s3.create_bucket(f"capture-{uuid.uuid4().hex[:8]}")

    def make(**changes) -> CaptureSettings:
        values = {"destination": "Cloud", "disk_path": tmp_path / "captures",
                  "device_name": "dev-1", "batch_size": 4, "buffer_size": 8,
                  "push_period_s": 0.2, "s3_bucket": bucket,
                  "s3_endpoint_url": s3.endpoint_url, "s3_region": "us-east-1",
                  "folder_prefix": "edge/capture", "retry_backoff_s": 0.02,
                  "retry_max_backoff_s": 0.1, **changes}
        return CaptureSettings(**values)
    return make


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def until() -> Callable:
    return wait_until


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of 2 MiB (tmpfs), unmounted after the test whatever happens;
    the test is skipped where mounting is not permitted (not root)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs",
                              str(disk)], check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk, leave: int = 0):
    """Take every free byte of ``disk`` but ``leave`` with one file; returns its path."""
    import os

    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        while True:
            vfs = os.statvfs(disk)
            free = vfs.f_bavail * vfs.f_frsize - leave
            if free <= 0:
                break
            try:
                f.write(chunk[:min(len(chunk), free)])
            except OSError:  # ENOSPC: full
                break
    return filler
