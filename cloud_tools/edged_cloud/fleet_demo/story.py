"""The whole loop on one machine (``edged-cloud fleet-demo``): real ``edged run`` daemons,
a model trained, optimised, signed, published and rolled out to them, their captures in S3,
then a tampered release that the abort criteria stop. Each step is the ``edged-cloud``
command's own function; only AWS is local (moto's server) and the rollout's scheduler is
the local jobs service (docs/cloud.md, "fleet-demo"). The scenario for ``edged-cloud
monitor``: the first device's turbines drift (a voltage sensor bias), the last one goes
silent, and the monitor's report on the S3 lake must flag exactly those two.

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
from edged_cloud.fleet_demo.local_services import CREDENTIALS, LocalAws, LocalBroker

GROUP = "demo-farm"
MODEL = "windturbine"
MODELS_BUCKET, CAPTURE_BUCKET = "edged-demo-models", "edged-demo-captures"
ROLE_POLICY = json.dumps({"Version": "2012-10-17", "Statement": []})
GOOD_JOB, BAD_JOB = "demo-windturbine-v2", "demo-windturbine-v3-tampered"
#: A rollout minute lasts this long: the tampered release goes to one device a minute, so
#: the first refusal has this long to arrive before a second device is told.
MINUTE_S = 20.0
#: The drifting device's turbines: a voltage sensor bias growing to its full size
#: (edged.windturbine.simulator.DRIFT_SIZES) over the first 20 s, before v2 serves.
DRIFT = "0:bias@0+20,1:bias@0+20"
#: Every device simulates the same farm (this seed): what differs between them is the
#: scenario, not the weather (the wind direction wanders on a 5-minute scale, so two farms
#: seen for seconds differ in yaw by far more than any PSI limit).
FARM_SEED = 3
HISTORY_S = 25.0
#: How long every device serves v2 before the sketches are flushed.
V2_SECONDS = 20.0
#: The monitor's --psi-limit here: a sketch of 20 s of a smooth process is a small sample
#: (the same farm a few seconds apart: PSI up to 0.8 on rps and voltage); the bias drift
#: reaches ~9 on voltage. Hourly sketches keep the default 0.2.
PSI_LIMIT = 2.0
#: The monitor's --silent-after: the demo's devices upload every 2 s, the silent one
#: stops this long (and a second) before the report.
SILENT_AFTER_S = 15.0

Say = Callable[[str], None]


@dataclass
class Options:
    devices: int = 3
    workdir: Path = Path("fleet-demo")
    epochs: int = 3
    timeout_s: float = 120.0  # for each wait on the devices


def device_config(thing: str, home: Path, broker: LocalBroker, aws: LocalAws,
                  seed: int, drifts: str = "") -> str:
    """A device's edged.yaml for the local broker (no TLS), a simulated farm (``drifts``:
    the simulator's schedule), the model store seeded with the built-in v1, and captures
    straight to moto's S3."""
    return f"""\
# edged-cloud fleet-demo: {thing} on a local broker (no TLS) and a local S3.
device: {{id: {thing}}}
state_dir: {home / "state"}
log: {{level: info, stats_interval_s: 0}}
sources:
  farm: {{type: simulator, turbines: 2, rate_hz: 20, seed: {seed}, history_s: {HISTORY_S:g},
          drifts: "{drifts}"}}
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
        self.started_at = 0.0

    def start(self) -> None:
        self.started_at = time.time()
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


def sketched(s3: Any, thing: str, version: int, read: set[str]) -> bool:
    """Whether a sketch record of ``thing``'s ``version`` is in the capture bucket
    (``read``: the objects already looked into, skipped)."""
    from edged.capture.segments import read_object

    prefix = f"captures/device={thing}/model={MODEL}/version={version}/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=CAPTURE_BUCKET,
                                                               Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"] in read:
                continue
            read.add(item["Key"])
            body = s3.get_object(Bucket=CAPTURE_BUCKET, Key=item["Key"])["Body"].read()
            if any(r.get("kind") == "sketch" for r in read_object(item["Key"], body)):
                return True
    return False


def farm_baseline(work: Path, span: tuple[float, float]) -> Path:
    """``work/baseline/validation.npz``: v2's model inputs for the demo's farm without the
    drift over ``span`` (simulated seconds): what every device would have sketched while
    serving v2 had none drifted, as a training output's healthy windows."""
    import numpy as np

    from edged.windturbine.features import (
        WindTurbineParams,
        WindTurbinePreprocessor,
        raw_features,
    )
    from edged.windturbine.layout import DATASET_COLUMNS, INPUTS
    from edged.windturbine.simulator import WindFarm

    with tarfile.open(work / "v2.tar.gz", "r:gz") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    params = WindTurbineParams.from_manifest(manifest["preprocessing"])
    pre = WindTurbinePreprocessor(params)
    rate = 20
    rows = WindFarm(turbines=2, rate_hz=rate, seed=FARM_SEED).ticks(int(span[1] * rate))
    features = raw_features(rows[:, :, [DATASET_COLUMNS.index(c) for c in INPUTS]])
    features = features.transpose(1, 0, 2)  # (turbines, rows, features)
    first = max(params.buffer, int(span[0] * rate))
    windows = [pre.windows(features[:, end - params.buffer:end])
               for end in range(first, features.shape[1] + 1, params.step)]
    out = work / "baseline"
    out.mkdir(exist_ok=True)
    np.savez(out / "validation.npz", inputs=np.concatenate(windows).astype(np.float32))
    return out


def monitor_report(aws: LocalAws, work: Path) -> dict[str, Any]:
    """``edged-cloud monitor s3://CAPTURE_BUCKET/captures --baseline 2=baseline
    --silent-after 15s --psi-limit 2 --since 2h --html monitor.html --json`` as its
    command runs it."""
    from edged_cloud.monitor import baseline, html, report
    from edged_cloud.monitor.lake import Lake

    options = report.Options(now=time.time(), since_s=2 * 3600.0,
                             silent_after_s=SILENT_AFTER_S, psi_limit=PSI_LIMIT,
                             baselines={2: baseline.load(work / "baseline")})
    # DuckDB's httpfs takes its credentials from boto3's chain: the environment.
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        result = report.build(Lake(f"s3://{CAPTURE_BUCKET}/captures",
                                   endpoint_url=aws.endpoint_url), options)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    (work / "monitor.html").write_text(html.render(result, options))
    result.pop("_series", None)
    result.pop("_baselines", None)
    return result


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
        # One device drifts, another (where there are two) goes silent; the rest stay well.
        self.scenario = {"drifting": self.things[0],
                         "silent": self.things[-1] if len(self.things) > 1 else None}
        self.daemons: list[Daemon] = []
        self.figures: dict[str, Any] = {"workdir": str(work)}
        self.checks: list[dict[str, Any]] = []
        self.v2_since = 0.0

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
        for thing in self.things:
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
            drifts = DRIFT if thing == self.scenario["drifting"] else ""
            config.write_text(device_config(thing, home, self.broker, self.aws,
                                            seed=FARM_SEED, drifts=drifts))
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
        self.v2_since = time.time()
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

    async def monitor(self) -> None:
        """The silent device stops for good; the others restart, which uploads the
        partial sketch of the hour each wrote when it stopped; then ``edged-cloud
        monitor``'s own function reports on the S3 lake against the farm's v2 inputs
        without the drift (``farm_baseline``: v2 trained on 2 minutes of another farm,
        so against its manifest every device, healthy or not, has yaw PSI 3 to 17)."""
        silent = self.scenario["silent"]
        self.say(f"scenario: {self.scenario['drifting']} drifts ({DRIFT}: a voltage sensor "
                 f"bias), {silent or 'no device'} goes silent; the others restart to "
                 "upload their partial sketches")
        farm_started = min(d.started_at for d in self.daemons)
        await asyncio.sleep(max(0.0, self.v2_since + V2_SECONDS - time.time()))
        stopping = [d for d in self.daemons if d.alive()]
        await asyncio.gather(*(asyncio.to_thread(d.stop) for d in stopping))
        silent_since = time.time()
        # The farm's simulated seconds that v2's sketches cover, give or take a start.
        span = (HISTORY_S + self.v2_since - farm_started - 2,
                HISTORY_S + silent_since - farm_started + 1)
        await asyncio.to_thread(farm_baseline, self.work, span)
        talking = [d for d in self.daemons if d.thing != silent]
        for daemon in talking:
            daemon.start()
        read: set[str] = set()
        waiting = {d.thing for d in talking}

        def all_sketched() -> bool:
            waiting.difference_update({t for t in waiting if sketched(self.s3, t, 2, read)})
            return not waiting

        await wait_for(all_sketched, self.options.timeout_s,
                       "v2 sketches from every device still talking")
        # The silent one's last record is older than SILENT_AFTER_S only after it.
        await asyncio.sleep(max(0.0, silent_since + SILENT_AFTER_S + 1 - time.time()))
        result = await asyncio.to_thread(monitor_report, self.aws, self.work)
        result["baseline_span_s"] = [round(x, 1) for x in span]
        self.figures["scenario"] = dict(self.scenario)
        self.figures["monitor"] = result
        fleet = result["fleet"]
        want_drifted = [self.scenario["drifting"]]
        want_silent = [silent] if silent else []
        by_name = {d["device"]: d for d in result["devices"]}
        psi = by_name.get(self.scenario["drifting"], {}).get("drift", {})
        self.check("monitor", fleet["drifted"] == want_drifted
                   and fleet["silent"] == want_silent,
                   f"drifted {fleet['drifted']} (want {want_drifted}; PSI "
                   f"{psi.get('psi_max')} on {psi.get('feature')}), silent "
                   f"{fleet['silent']} (want {want_silent}, --silent-after "
                   f"{SILENT_AFTER_S:.0f}s); report in {self.work / 'monitor.html'}")

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
            await story.monitor()
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
