"""The whole loop on one machine (``edged-cloud fleet-demo``): real ``edged run`` daemons,
a model trained, optimised, signed, published and rolled out to them, their captures in S3,
then a tampered release that the abort criteria stop. Each step is the ``edged-cloud``
command's own function; only AWS is local (moto's server) and the rollout's scheduler is
the local jobs service (docs/cloud.md, "fleet-demo").

::

    figures = asyncio.run(run(Options(devices=3, workdir=Path("demo")), print))
    figures["checks"]  # [{"name", "ok", "detail"}], the verdict's parts
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged_cloud.errors import CloudToolError
from edged_cloud.fleet_demo.local_services import LocalAws, LocalBroker

GROUP = "demo-farm"
MODEL = "windturbine"
MODELS_BUCKET, CAPTURE_BUCKET = "edged-demo-models", "edged-demo-captures"
ROLE_POLICY = json.dumps({"Version": "2012-10-17", "Statement": []})
GOOD_JOB, BAD_JOB = "demo-windturbine-v2", "demo-windturbine-v3-tampered"
#: A rollout minute lasts this long: the tampered release goes to one device a minute, so
#: the first refusal has this long to arrive before a second device is told.
MINUTE_S = 20.0

Say = Callable[[str], None]


@dataclass
class Options:
    devices: int = 3
    workdir: Path = Path("fleet-demo")
    epochs: int = 3
    timeout_s: float = 120.0  # for each wait on the devices


def device_config(thing: str, home: Path, broker: LocalBroker, aws: LocalAws,
                  seed: int) -> str:
    """A device's edged.yaml for the local broker (no TLS), a simulated farm, the model
    store seeded with the built-in v1, and captures straight to moto's S3."""
    return f"""\
# edged-cloud fleet-demo: {thing} on a local broker (no TLS) and a local S3.
device: {{id: {thing}}}
state_dir: {home / "state"}
log: {{level: info, stats_interval_s: 0}}
sources:
  farm: {{type: simulator, turbines: 2, rate_hz: 20, seed: {seed}, history_s: 25}}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx, model: "store:{MODEL}"}}
    interval_s: 0.5
    capture:
      rate: {{every: 5}}
      upload: {{interval_s: 2}}
      destination: {{type: s3, bucket: {CAPTURE_BUCKET}, prefix: captures,
                    endpoint_url: "{aws.endpoint_url}"}}
cloud:
  broker: {{host: {broker.host}, port: {broker.port}, reconnect_min_s: 0.1,
           reconnect_max_s: 0.5}}
  jobs:
    trust: {{keys_dir: {home / "trusted-keys"}}}
    progress_interval_s: 0.5
"""


class Daemon:
    """``edged run -c CONFIG`` as a child process, its output in ``log``."""

    def __init__(self, thing: str, config: Path, log: Path, env: dict[str, str]) -> None:
        self.thing, self.config, self.log = thing, config, log
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        edged = Path(sys.executable).with_name("edged")
        command = [str(edged)] if edged.exists() else [sys.executable, "-m", "edged"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*command, "run", "-c", str(self.config)], stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env})

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def serving_version(state_dir: Path) -> int | None:
    """The version ``<state_dir>/serving.json`` says the daemon's pipeline serves."""
    from edged.model.serving import SERVING

    try:
        record = json.loads((state_dir / SERVING).read_text())
        return int(record["pipelines"]["turbines"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def tamper(bundle: Path, out: Path) -> Path:
    """``bundle`` with bytes of its model file flipped after signing: the signature over
    the manifest still holds, the model's hash in it no longer does."""
    from edged.model.bundle.build import pack_bundle

    entries: dict[str, bytes] = {}
    with tarfile.open(bundle, "r:gz") as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            if handle is not None:
                entries[member.name] = handle.read()
    [model] = [name for name in entries if name.endswith(".onnx")]
    data = bytearray(entries[model])
    for offset in range(len(data) // 2, len(data) // 2 + 8):
        data[offset] ^= 0xFF
    entries[model] = bytes(data)
    return pack_bundle(entries, out)


async def wait_for(predicate: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # noqa: ASYNC110  (state changed by other tasks and processes)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {seconds:.0f} s")
        await asyncio.sleep(0.1)


def count_captures(s3: Any) -> dict[str, Any]:
    """Objects and records in the capture bucket, and the devices they came from."""
    from edged.capture.segments import read_object

    objects = records = 0
    devices: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=CAPTURE_BUCKET):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=CAPTURE_BUCKET, Key=item["Key"])["Body"].read()
            found = read_object(item["Key"], body)
            objects += 1
            records += len(found)
            devices.update(str(r["partition"].get("device")) for r in found)
    return {"bucket": CAPTURE_BUCKET, "objects": objects, "records": records,
            "devices": sorted(devices)}


def quiet(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A step function whose progress output (training's bar, publish's) stays out of
    the demo's log."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return function(*args, **kwargs)


def train_model(work: Path, epochs: int) -> tuple[dict, dict]:
    """Synthetic data, v2 trained on it, optimised: (training report, optimise report)."""
    from edged_cloud.data.dataset import save
    from edged_cloud.data.synth import synthesize
    from edged_cloud.optimize import optimize
    from edged_cloud.train.fit import FitOptions
    from edged_cloud.train.prepare import ThresholdRule
    from edged_cloud.train.run import train

    data = work / "data"
    save(synthesize(data, turbines=4, seconds=120.0, seed=1), data)
    trained = quiet(train, data, work / "trained", FitOptions(epochs=epochs, patience=0),
                    version=2, threshold_rule=ThresholdRule("quantile", 0.999, 2.0),
                    show_progress=False)
    optimized = quiet(optimize, work / "trained", work / "optimized", repeats=5)
    return trained, optimized


def deploy(iot: Any, s3: Any, iam: Any, *, job_id: str, key: str, version: int,
           settings: Any) -> None:
    """``edged-cloud deploy`` to the group, as its command does it."""
    from edged_cloud import rollout

    settings.check()
    bundle = rollout.bundle_in_s3(s3, MODELS_BUCKET, key)
    document = rollout.job_document(bundle, iot.meta.region_name, MODEL, version,
                                    allow_http=True)
    rollout.create(iot, rollout.Deployment(
        job_id=job_id, targets=[rollout.group_arn(iot, GROUP)], document=document,
        role_arn=rollout.role_arn(iam, "edged-demo-presign"), settings=settings))


class Story:
    """The demo's steps, in order, on one local AWS and one broker; ``check`` records
    each verdict in ``checks`` and says it."""

    def __init__(self, options: Options, say: Say, aws: LocalAws, broker: LocalBroker,
                 work: Path) -> None:
        self.options, self.say, self.aws, self.broker, self.work = (
            options, say, aws, broker, work)
        self.iot, self.s3, self.iam = aws.client("iot"), aws.client("s3"), aws.client("iam")
        self.things = [f"demo-turbine-{n + 1}" for n in range(options.devices)]
        self.daemons: list[Daemon] = []
        self.figures: dict[str, Any] = {"workdir": str(work)}
        self.checks: list[dict[str, Any]] = []

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        self.say(f"  [{'ok' if ok else 'FAILED'}] {name}: {detail}")

    def state_dir(self, thing: str) -> Path:
        return self.work / "devices" / thing / "state"

    def versions(self) -> dict[str, int | None]:
        return {t: serving_version(self.state_dir(t)) for t in self.things}

    def provision(self) -> None:
        """Buckets, the presign role, the group, a release key; each thing provisioned
        as a real device is, then given the zip's trusted key and a local config."""
        from edged_cloud import keyring, provision

        for bucket in (MODELS_BUCKET, CAPTURE_BUCKET):
            self.s3.create_bucket(Bucket=bucket)
        self.iam.create_role(RoleName="edged-demo-presign",
                             AssumeRolePolicyDocument=ROLE_POLICY)
        self.iot.create_thing_group(thingGroupName=GROUP)
        ring = keyring.create(self.work / "keys")
        public = ring.public_path(ring.current.id)
        self.say(f"release key {ring.current.id} (edged-cloud keys create)")
        # The zip's Amazon root CA is of no use on a TLS-less local broker.
        ca = self.work / "no-tls-root-ca.pem"
        ca.write_text("# the demo's devices reach a local broker without TLS\n")
        for n, thing in enumerate(self.things):
            home = self.work / "devices" / thing
            zipped = home / "device.zip"
            quiet(provision.provision, self.iot, provision.Request(
                thing=thing, release_key=public, out=zipped, group=GROUP,
                device_dir=str(home), state_dir=str(home / "state"), root_ca=ca))
            with zipfile.ZipFile(zipped) as archive:
                for name in archive.namelist():
                    if name.startswith("trusted-keys/"):
                        archive.extract(name, home)
            config = home / "edged.yaml"
            config.write_text(device_config(thing, home, self.broker, self.aws, seed=n + 3))
            self.daemons.append(Daemon(thing, config, home / "edged.log",
                                       self.aws.environment()))
        self.say(f"provisioned {len(self.things)} things in group {GROUP} "
                 "(edged-cloud provision)")

    async def start_daemons(self) -> None:
        for daemon in self.daemons:
            daemon.start()
        await wait_for(lambda: set(self.versions().values()) == {1} or
                       not all(d.alive() for d in self.daemons),
                       self.options.timeout_s, "every daemon serving the built-in v1")
        dead = [d.thing for d in self.daemons if not d.alive()]
        if dead:
            raise CloudToolError(f"edged run stopped on {', '.join(dead)}: see "
                                 f"{self.work}/devices/<thing>/edged.log")
        self.say(f"started {len(self.daemons)} edged run daemons, each serving "
                 f"{MODEL} v1")

    async def build_releases(self) -> tuple[str, str]:
        """v2 trained and optimised, signed and published; v3 the same, tampered after
        signing. Their object keys."""
        from edged_cloud import keyring, packaging, publish

        self.say("training v2 on synthetic data (edged-cloud data synth, train, optimize)")
        trained, optimized = await asyncio.to_thread(train_model, self.work,
                                                     self.options.epochs)
        self.figures["trained"] = {
            "version": trained["version"],
            "onnx_vs_torch_max_abs": trained["onnx_vs_torch_max_abs"],
            "onnx_vs_torch_scaled": trained["onnx_vs_torch_scaled"],
            "epochs": len(trained["history"]["train_loss"])}
        self.figures["optimized"] = {key: optimized[key] for key in (
            "quantization", "agreement", "speedup", "accepted")}
        # train's own check: the diff scaled by each window's largest output.
        self.check("trained", trained["onnx_vs_torch_scaled"] <= trained["tolerance"],
                   f"v{trained['version']}, ONNX vs PyTorch max abs diff "
                   f"{trained['onnx_vs_torch_max_abs']:.3g} (scaled "
                   f"{trained['onnx_vs_torch_scaled']:.3g} <= {trained['tolerance']:g})")
        self.check("optimized", optimized["accepted"],
                   f"{optimized['quantization']}: decisions agree "
                   f"{optimized['agreement']:.2%}, speed-up {optimized['speedup']:.2f}x")
        source = self.work / ("optimized" if optimized["accepted"] else "trained")
        private, kid = keyring.signing_key(self.work / "keys")
        packaging.build(source, self.work / "v2.tar.gz", private, kid, 2)
        good = quiet(publish.publish, self.work / "v2.tar.gz", MODELS_BUCKET, self.s3)
        self.say(f"packaged v2 signed by {kid} and published to {good['url']}")
        packaging.build(source, self.work / "v3-signed.tar.gz", private, kid, 3)
        tamper(self.work / "v3-signed.tar.gz", self.work / "v3.tar.gz")
        bad = quiet(publish.publish, self.work / "v3.tar.gz", MODELS_BUCKET, self.s3)
        self.say(f"packaged v3, flipped bytes of its model after signing, published to "
                 f"{bad['url']}")
        return good["key"], bad["key"]

    async def roll_out(self, jobs: Any, job_id: str, key: str, version: int,
                       settings: Any, seconds: float) -> dict[str, Any]:
        """Deploy to the group and wait for the local jobs service to finish the job;
        the job's status as ``rollout status`` reads it."""
        from edged_cloud import rollout

        await asyncio.to_thread(deploy, self.iot, self.s3, self.iam, job_id=job_id,
                                key=key, version=version, settings=settings)
        await wait_for(lambda: job_id in jobs.rollouts and jobs.rollouts[job_id].done,
                       seconds, f"job {job_id}")
        return await asyncio.to_thread(rollout.status, self.iot, job_id)

    async def good_rollout(self, jobs: Any, key: str) -> None:
        from edged_cloud import rollout

        self.say(f"deploying v2 to group {GROUP} as job {GOOD_JOB} (edged-cloud deploy)")
        status = await self.roll_out(jobs, GOOD_JOB, key, 2, rollout.RolloutSettings(
            base_rate_per_minute=1000), self.options.timeout_s)
        self.figures["rollout"] = {"job": GOOD_JOB, "devices": len(self.things),
                                   "status": status["status"], "states": status["states"]}
        self.check("rollout", status["states"] == {"SUCCEEDED": len(self.things)},
                   f"job {GOOD_JOB} {status['status']}, states {status['states']}")
        # SUCCEEDED is sent once the new model is active; serving.json follows the swap.
        with contextlib.suppress(TimeoutError):
            await wait_for(lambda: set(self.versions().values()) == {2}, 30,
                           "every device serving v2")
        serving = self.versions()
        self.figures["devices"] = [{"thing": t, "model_version": v}
                                   for t, v in serving.items()]
        self.check("devices serve v2", set(serving.values()) == {2},
                   ", ".join(f"{t} v{v}" for t, v in serving.items()))

    async def bad_rollout(self, jobs: Any, key: str) -> None:
        from edged_cloud import rollout

        settings = rollout.RolloutSettings(
            base_rate_per_minute=1, increase_after_notified=len(self.things) + 1,
            increase_after_succeeded=None, abort_on=("REJECTED",),
            abort_threshold_percent=50.0, abort_min_executed=1)
        self.say(f"deploying the tampered v3 as job {BAD_JOB}: one device a rollout minute "
                 f"({MINUTE_S:.0f} s here), cancel once 50 % of at least 1 executed are "
                 "REJECTED")
        status = await self.roll_out(jobs, BAD_JOB, key, 3, settings,
                                     self.options.timeout_s + MINUTE_S * len(self.things))
        report = jobs.report(BAD_JOB)
        reasons = sorted({str(e["status_details"].get("reason"))
                          for e in status["executions"] if e["status"] == "REJECTED"})
        self.figures["bad_rollout"] = {
            "job": BAD_JOB, "aborted": report["aborted"], "reason": report["reason"],
            "status": status["status"], "states": status["states"],
            "reached": report["reached"], "rejected_because": reasons}
        stopped_early = report["reached"] < len(self.things) or len(self.things) == 1
        self.check("bad rollout aborted", report["aborted"] and stopped_early and
                   status["states"].get("REJECTED", 0) >= 1,
                   f"reached {report['reached']} of {len(self.things)} devices, states "
                   f"{status['states']}, devices said {', '.join(reasons) or 'nothing'}; "
                   f"{report['reason'] or 'not aborted'}")
        still = self.versions()
        self.check("devices kept v2", set(still.values()) == {2},
                   ", ".join(f"{t} v{v}" for t, v in still.items()))

    async def captures(self) -> None:
        # Devices upload every 2 s: wait until every device's captures have landed.
        with contextlib.suppress(TimeoutError):
            await wait_for(lambda: len(count_captures(self.s3)["devices"]) >=
                           len(self.things), 30, "captures from every device")
        captures = await asyncio.to_thread(count_captures, self.s3)
        self.figures["captures"] = captures
        self.check("captures", captures["objects"] > 0 and
                   len(captures["devices"]) == len(self.things),
                   f"{captures['objects']} objects, {captures['records']} records in "
                   f"s3://{CAPTURE_BUCKET} from {len(captures['devices'])} of "
                   f"{len(self.things)} devices")

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()


async def run(options: Options, say: Say) -> dict[str, Any]:
    """The story; the figures, with ``checks`` saying which parts held and ``held``
    whether they all did."""
    from edged_cloud.local_jobs.service import LocalJobsService

    if not 1 <= options.devices <= 20:
        raise CloudToolError(f"--devices {options.devices}: 1 to 20 on one machine")
    work = options.workdir.resolve()
    if work.exists() and any(work.iterdir()):
        raise CloudToolError(f"{work} is not empty: give an empty or new --workdir")
    work.mkdir(parents=True, exist_ok=True)
    with LocalAws() as aws, LocalBroker(work / "broker") as broker:
        story = Story(options, say, aws, broker, work)
        say(f"local AWS API (moto) at {aws.endpoint_url}; mosquitto at "
            f"{broker.host}:{broker.port}; files in {work}")
        try:  # the daemons stop on any way out: failure, Ctrl-C (a cancel) or the end
            story.provision()
            await story.start_daemons()
            good, bad = await story.build_releases()
            async with LocalJobsService(story.iot, story.s3, broker.host, broker.port,
                                        minute_s=MINUTE_S) as jobs:
                await story.good_rollout(jobs, good)
                await story.bad_rollout(jobs, bad)
            await story.captures()
        except TimeoutError as exc:  # a step the devices never finished: say which
            raise CloudToolError(f"{exc}; each device's log is "
                                 f"{work}/devices/<thing>/edged.log (kept with "
                                 "--workdir)") from None
        finally:
            story.stop()
    figures = story.figures
    figures["checks"] = story.checks
    figures["held"] = bool(story.checks) and all(c["ok"] for c in story.checks)
    return figures
