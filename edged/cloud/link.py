"""The device's link to the cloud: one MQTT connection as an AWS IoT thing.

AWS IoT Core (or any MQTT broker standing in for it) is reached with the device
certificate over mutual TLS, under a client id equal to the thing name (what the usual
IoT policy ``client/${iot:Connection.Thing.ThingName}`` allows), with a persistent
session so that QoS 1 messages sent while the device was offline (a job notification)
are delivered when it comes back. Everything that talks to the fleet service (the jobs
executor today) shares this one connection.

The link is aiomqtt, like the turbine bus: one MQTT stack in the daemon, with the
reconnect, backoff and TLS handling the bus already has. IoT Jobs is plain MQTT 3.1.1
topics and JSON (edged.cloud.jobs.protocol), which needs nothing from the AWS device SDK.
"""

from __future__ import annotations

from typing import Any, Protocol

import aiomqtt

from edged.base.metrics import Counters
from edged.base.tasks import run_together
from edged.cloud.alarms import CloudAlarms
from edged.cloud.budget import DataBudget
from edged.config import EdgedConfig, store_model
from edged.config.cloud import CloudConfig
from edged.health.report import Health
from edged.model.bundle.keys import TrustStore
from edged.mqtt.link import BrokerLink, Received
from edged.plugin.registry import Registry
from edged.runtime.pipeline import Pipeline


def thing_name(config: CloudConfig, device_id: str) -> str:
    return config.thing_name or device_id


def cloud_link(config: CloudConfig, device_id: str, counters: Counters,
               budget: DataBudget | None = None) -> BrokerLink:
    """The one connection to the cloud broker, as the thing (client id = thing name
    unless the config names another); every publish on it is charged to ``budget``."""
    broker = config.broker
    if broker.client_id is None:
        broker = broker.model_copy(update={"client_id": thing_name(config, device_id)})
    return BrokerLink(broker, name="cloud", device_id=device_id, counters=counters,
                      inbox_size=10_000, meter=budget)


class CloudService(Protocol):
    """What runs over the cloud link (the jobs executor)."""

    async def subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribe to its topics on a new connection."""

    def dispatch(self, message: Received) -> None:
        """Take one received message (every service sees every message)."""

    async def run(self) -> None:
        """Work until cancelled."""


class Cloud:
    """The cloud link and the services on it, started and stopped as one component.

    Starting never waits for the broker: a device must decide and act on its turbines
    whether or not the cloud is reachable, so the first connection is made by
    :meth:`run`, retried with backoff for as long as it takes."""

    def __init__(self, link: BrokerLink, services: list[CloudService],
                 alarms: CloudAlarms | None = None) -> None:
        self.link = link
        self.services = services
        # The alarms service, also a pipeline subscriber: the graph subscribes it.
        self.alarms = alarms

    def jobs_in_progress(self) -> list[dict[str, Any]]:
        """The job each service runs now (the jobs executor's, if one runs)."""
        return [job for service in self.services
                if (job := getattr(service, "job_in_progress", None)) is not None]

    async def __aenter__(self) -> Cloud:
        await self.link.open(connect=False)  # TLS files are read (and checked) here
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.__aexit__(*exc)

    async def run(self) -> None:
        await run_together([
            ("edged[cloud].link", self.link.run(self._connected)),
            ("edged[cloud].read", self._read()),
            *((f"edged[cloud].{type(service).__name__}", service.run())
              for service in self.services),
        ])

    async def _connected(self, client: aiomqtt.Client) -> None:
        for service in self.services:
            await service.subscribe(client)

    async def _read(self) -> None:
        inbox = self.link.inbox
        while True:
            await inbox.wait()
            for message in inbox.take(100):
                for service in self.services:
                    service.dispatch(message)


def build_cloud(config: EdgedConfig, registry: Registry, pipelines: dict[str, Pipeline],
                counters: Counters, health: Health | None = None,
                captures: dict[str, Any] | None = None,
                budget: DataBudget | None = None) -> Cloud:
    """The cloud component of a graph with a ``cloud`` section. Raises ConfigError for
    what can be checked before anything starts (trusted keys). ``captures``: the
    pipelines' PipelineCapture objects, by pipeline name (for capture on demand);
    ``budget``: the data budget (edged.cloud.budget.build_budget) every publish is charged
    to."""
    cloud: CloudConfig = config.cloud
    # Only a device with a cloud section loads the executor (bundles, the model store).
    from edged.cloud.jobs.executor import JobsExecutor
    from edged.runtime.swap import preprocessor_factory

    device = config.raw.device.id
    link = cloud_link(cloud, device, counters, budget)
    services: list[CloudService] = []
    jobs = cloud.jobs
    if jobs is not None and jobs.enabled:
        stores = {name: model for name, pc in config.pipelines.items()
                  if (model := store_model(pc)) is not None
                  and (jobs.pipelines is None or name in jobs.pipelines)}
        services.append(JobsExecutor(
            jobs, link=link, thing=thing_name(cloud, device),
            pipelines={pipelines[name]: preprocessor_factory(registry, config, name,
                                                             config.state_dir)
                       for name in stores if name in pipelines},
            stores=stores, state_dir=config.state_dir,
            trust=TrustStore.from_config(jobs.trust), counters=counters))
    if cloud.health is not None and health is not None:
        from edged.cloud.heartbeat import Heartbeat

        health.thing = thing_name(cloud, device)
        health.stalest = cloud.health.stalest
        services.append(Heartbeat(cloud.health, link=link, thing=health.thing,
                                  health=health, counters=counters, budget=budget))
    presigned = [c.destination for c in (captures or {}).values()
                 if c.spec.destination.type == "presigned"]
    if presigned:
        from edged.cloud.upload_urls import UploadUrlClient

        # One client for every pipeline: one subscription, replies matched by token.
        signer = UploadUrlClient(link=link, thing=thing_name(cloud, device),
                                 counters=counters)
        for destination in presigned:
            destination.signer = signer
        services.append(signer)
    if cloud.capture_requests and captures:
        from edged.cloud.capture_requests import CaptureRequests

        services.append(CaptureRequests(link=link, thing=thing_name(cloud, device),
                                        captures=captures, counters=counters))
    alarms = None
    if cloud.alarms is not None:
        alarms = CloudAlarms(cloud.alarms, link=link, thing=thing_name(cloud, device),
                             device=device, counters=counters)
        services.append(alarms)
    return Cloud(link, services, alarms)
