"""A device and its cloud for the executor's tests, all real parts: mosquitto, the jobs
service peer speaking the IoT Jobs topics, bundles over HTTP, a daemon config with a
``cloud`` section, signing keys and bundles made for the test."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.cloud.jobs import executor
from edged.cloud.jobs.protocol import TERMINAL_STATUSES
from edged.model.bundle import build_bundle
from edged.model.bundle.keys import public_pem
from edged.model.package import resolve_model_path
from edged.model.store import ModelStore
from edged.testing import farm_config
from tests.support import BundleServer, Mosquitto

BUILTIN = resolve_model_path("builtin:windturbine-v1")
THING = "turbine-gw-7"
MODEL = "windturbine"

CLOUD = """\
cloud:
  broker: {broker}
  jobs:
    trust: {trust}
    progress_interval_s: 0.2
    request_timeout_s: 5
    download_timeout_s: 5
{jobs}"""


@dataclass
class Fleet:
    """One device's cloud: a broker, bundles served over HTTP, the signing key the device
    trusts, and its state directory."""

    broker: Mosquitto
    server: BundleServer
    key: Ed25519PrivateKey
    keys_dir: Path
    state_dir: Path
    tmp: Path
    made: list[str] = field(default_factory=list)

    def model_dir(self, version: int, tweak: Callable[[dict, Path], None] | None = None
                  ) -> Path:
        """A copy of windturbine-v1 saying ``version``; ``tweak(manifest, directory)``
        may change the manifest (and files) before it is bundled."""
        target = self.tmp / "models" / f"v{version}-{len(self.made)}"
        self.made.append(str(target))
        shutil.copytree(BUILTIN, target)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["version"] = version
        if tweak is not None:
            tweak(manifest, target)
        (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return target

    def bundle(self, version: int, *, key: Ed25519PrivateKey | None = None,
               tweak: Callable[[dict, Path], None] | None = None) -> bytes:
        """A signed bundle of the model at ``version``."""
        directory = self.model_dir(version, tweak)
        out = self.tmp / "bundles" / f"{directory.name}.tar.gz"
        out.parent.mkdir(parents=True, exist_ok=True)
        return build_bundle(directory, out, key or self.key).read_bytes()

    def publish(self, name: str, data: bytes, version: int, **options: Any) -> dict:
        """Serve ``data`` and return the job document that points at it."""
        self.server.files[name] = data
        return document(self.server.url(name), data, version, **options)

    def config(self, *, turbines: int = 4, broker: str | None = None,
               trust: str | None = None, extra: str = "", jobs: str = "") -> Path:
        """Write the daemon's config (``edged.yaml`` in the test's directory); ``jobs``:
        more lines of ``cloud.jobs``, indented four spaces."""
        path = self.tmp / "edged.yaml"
        broker = broker or (f"{{host: 127.0.0.1, port: {self.broker.port}, "
                            "reconnect_min_s: 0.1, reconnect_max_s: 0.5}")
        cloud = CLOUD.format(broker=broker, trust=trust or f"{{keys_dir: {self.keys_dir}}}",
                             jobs=jobs)
        path.write_text(farm_config(THING, self.state_dir, turbines=turbines,
                                    model=f"store:{MODEL}", interval_s=0.5,
                                    extra=cloud + extra))
        return path

    def store(self) -> ModelStore:
        return ModelStore.for_model(self.state_dir, MODEL)

    def serving(self) -> int | None:
        """The version of the store's current slot (what a restart would serve)."""
        current = self.store().current()
        return current.version if current else None


def document(url: str, data: bytes, version: int, **options: Any) -> dict:
    return {"operation": "edged.deploy-model",
            "bundle": {"url": url, "sha256": hashlib.sha256(data).hexdigest(),
                       "size": len(data)},
            "model": {"name": MODEL, "version": version},
            "options": {"allow_http": True, **options}}


def trust_key(directory: Path, key: Ed25519PrivateKey, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.pub.pem"
    path.write_bytes(public_pem(key.public_key()))
    return path


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def fleet(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    keys_dir = tmp_path / "trusted"
    trust_key(keys_dir, key, "release")
    with Mosquitto(tmp_path) as broker, BundleServer() as server:
        yield Fleet(broker, server, key, keys_dir, tmp_path / "state", tmp_path)


def compress_time(monkeypatch: pytest.MonkeyPatch, *, minute_s: float = 60.0,
                  backoff_s: tuple[float, float] = (0.05, 0.4),
                  pause_s: float | None = None) -> list[float]:
    """Have every executor built from now on wait less, as the jobs peer is told to
    (``JobsService(minute_s=...)``): a minute of a step timer lasts ``minute_s``, the
    backoff runs from ``backoff_s[0]`` doubling to ``backoff_s[1]``. Returns the list of
    backoff delays it draws; with ``pause_s`` each is drawn as configured but waited only
    that long (the real 10 s to 640 s policy, recorded without waiting it)."""
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(seconds if pause_s is None else pause_s)

    monkeypatch.setattr(executor, "TIMING", executor.Timing(
        minute_s=minute_s, backoff_s=backoff_s, sleep=sleep))
    return delays


async def finished(jobs, job_id: str, seconds: float = 30.0, thing: str = THING):
    """The execution once it reaches a terminal status."""
    deadline = time.monotonic() + seconds
    while True:
        execution = jobs.execution(thing, job_id)
        if execution.status in TERMINAL_STATUSES:
            return execution
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job_id} still {execution.status} after {seconds} s: "
                               f"{execution.status_details}")
        await asyncio.sleep(0.05)

