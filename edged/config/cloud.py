"""The ``cloud:`` section of the config: who this device is to the fleet service and how
to reach it, its jobs, heartbeats, alarms and data budget (docs/config.md).

Only the models: the link, the jobs executor, the heartbeat, the cloud alarms and the
budget that they configure are the cloud layer's (edged.cloud), which builds on this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from edged.model.trust import TrustConfig
from edged.mqtt.link import BrokerConfig
from edged.plugin.config import NAME_PATTERN, Strict
from edged.plugin.events import EventKind

#: In-progress and step timers: 1 minute to 7 days.
STEP_TIMEOUT_MINUTES = (1, 7 * 24 * 60)


#: Turbines listed by name in a report (the stalest first); the rest are only counted,
#: so that a gateway of thousands of turbines still sends a small heartbeat.
STALEST = 50


def publish_topic(topic: str) -> str:
    """``topic`` if it is a publish topic template with at most ``{thing}`` in it; a
    ValueError saying what is wrong otherwise (a config validator)."""
    if "+" in topic or "#" in topic:
        raise ValueError("a publish topic cannot hold the wildcards + or #")
    try:
        topic.format(thing="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"only {{thing}} may be substituted ({exc!r})") from None
    return topic


class HealthConfig(Strict):
    """``cloud.health``: heartbeats and the thing's named shadow (docs/health.md)."""

    interval_s: float = Field(60.0, ge=0.05, le=86400,
                              description="Seconds between two heartbeats.")
    topic: Annotated[str, AfterValidator(publish_topic)] = Field(
        "edged/{thing}/health", min_length=1, max_length=256,
        description="Heartbeat topic; {thing} is the thing name.")
    shadow: str | None = Field(
        "edged-health", min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9:_-]+$",
        description="Named shadow whose reported state holds the summary; null: none.")
    stalest: int = Field(STALEST, ge=0, le=1000,
                         description="Stalest turbines listed by name in a heartbeat.")


class CloudAlarmsConfig(Strict):
    """``cloud.alarms``: alarm events published to the cloud (docs/health.md)."""

    topic: Annotated[str, AfterValidator(publish_topic)] = Field(
        "edged/{thing}/alarms", min_length=1, max_length=256,
                       description="Topic of the alarm payloads; {thing} is the thing name.")
    events: list[EventKind] = Field(
        default_factory=lambda: ["alarm", "clear"], min_length=1,
        description="Event kinds published.")
    debounce: int = Field(2, ge=1, description="Alarm after this many consecutive "
                          "anomalous decisions.")
    clear_after: int = Field(4, ge=1, description="Clear after this many consecutive "
                             "healthy decisions.")
    cooldown_s: float = Field(30.0, ge=0, description="Least time between two alarms "
                              "for the same turbine.")
    queue_size: int = Field(1000, ge=1, le=1_000_000, description="Events kept while the "
                            "link is down; beyond it the oldest are dropped.")


class DataBudgetConfig(Strict):
    """``cloud.data_budget``: the daily upload budget and its ceilings per priority."""

    daily_mb: float = Field(gt=0, le=1_000_000, allow_inf_nan=False,
                            description="Bytes the device may upload per UTC day, in MB "
                            "(1 MB = 1,000,000 bytes).")
    capture_share: float = Field(
        0.7, ge=0, le=1, description="Captures upload only while the day's usage (every "
        "priority) is below this share of the budget.")
    heartbeat_share: float = Field(
        0.9, ge=0, le=1, description="Heartbeats and shadow updates go out freely while "
        "the day's usage is below this share; past it, one per over_budget_heartbeat_s.")
    over_budget_heartbeat_s: float = Field(
        3600.0, gt=0, le=86400, description="Seconds between two heartbeats once the "
        "heartbeat share is used up.")

    @model_validator(mode="after")
    def _ceilings_in_order(self) -> DataBudgetConfig:
        if self.capture_share > self.heartbeat_share:
            raise ValueError(
                f"capture_share ({self.capture_share}) must not be above heartbeat_share "
                f"({self.heartbeat_share}): captures stop before heartbeats do")
        return self


MiB = 1 << 20


class CloudBrokerConfig(BrokerConfig):
    """The cloud broker: a persistent session by default (jobs notifications queue for
    a device that is offline)."""

    persistent_session: bool = Field(
        True, description="Keep the session on the broker while disconnected, so QoS 1 "
        "notifications sent meanwhile arrive on reconnect.")


class JobsConfig(Strict):
    """Model updates over AWS IoT Jobs (docs/jobs.md)."""

    enabled: bool = Field(True, description="Act on jobs; false keeps the section but "
                          "ignores jobs.")
    trust: TrustConfig = Field(description="The keys model bundles must be signed with.")
    pipelines: list[Annotated[str, Field(pattern=NAME_PATTERN)]] | None = Field(
        None, description="Pipelines whose model jobs may replace (they must run a "
        "`store:NAME` model); default: every pipeline that does.")
    max_bundle_bytes: int = Field(
        256 * MiB, ge=1, le=1 << 40,
        description="Largest bundle accepted; a job naming a bigger one is REJECTED.")
    step_timeout_minutes: int = Field(
        10, ge=STEP_TIMEOUT_MINUTES[0], le=STEP_TIMEOUT_MINUTES[1],
        description="Step timer set with every progress update: a device that stops "
        "reporting for this long has its execution TIMED_OUT by the service.")
    progress_interval_s: float = Field(
        10.0, gt=0, le=3600, description="Least time between two download progress "
        "updates.")
    request_timeout_s: float = Field(
        15.0, gt=0, le=300, description="Wait for the service's reply to one request.")
    download_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Socket timeout of the bundle download.")
    download_attempts: int = Field(
        5, ge=1, le=50, description="Tries per download before the job FAILS (each "
        "resumes where the last stopped).")
    url_lifetime_s: float = Field(
        3000.0, ge=30, le=7 * 86400,
        description="Describe the execution again for a fresh pre-signed URL once the "
        "one held is this old (the service signs them for 60-3600 s).")
    shadow_timeout_s: float = Field(
        3600.0, gt=0, description="Longest a shadow trial may take to collect its "
        "decisions; the job FAILS if it does not finish.")
    ca_file: Path | None = Field(None, description="CA bundle for https bundle URLs "
                                 "(default: the system's).")


class CloudConfig(Strict):
    """The ``cloud:`` section: who this device is to the fleet service, and how to
    reach it."""

    thing_name: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9:_-]+$",
        description="The AWS IoT thing name (default: device.id).")
    broker: CloudBrokerConfig = Field(description="The AWS IoT Core endpoint (port 8883, "
                                      "mutual TLS) or another MQTT broker.")
    jobs: JobsConfig | None = Field(None, description="Model updates over IoT Jobs.")
    health: HealthConfig | None = Field(
        None, description="Heartbeats and the named shadow (docs/health.md); absent: off.")
    capture_requests: bool = Field(
        True, description="Take capture-on-demand requests on edged/<thing>/capture/"
        "request for the pipelines with a capture: section (docs/capture.md); false: "
        "ignore them.")
    data_budget: DataBudgetConfig | None = Field(
        None, description="A daily byte budget for uploads, with priorities "
        "(docs/health.md, \"Data budget\"); absent: no budget.")
    alarms: CloudAlarmsConfig | None = Field(
        None, description="Publish alarm events of every pipeline over the cloud link "
        "(docs/health.md); absent: off.")
