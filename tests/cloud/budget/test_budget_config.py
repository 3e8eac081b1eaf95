"""Bad data budget and cloud alarms configs are config errors that say what and where."""

from __future__ import annotations

import pytest

from edged.base.errors import ConfigError
from edged.config import parse_config
from edged.plugin.manager import make_plugin_manager

_, REGISTRY = make_plugin_manager()

BASE = """\
device: {id: gw}
sources:
  farm: {type: simulator, turbines: 2}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {type: windturbine}
    inference: {type: onnx, model: "builtin:windturbine-v1"}
cloud:
  broker: {host: 127.0.0.1}
"""


def problems(section: str) -> str:
    with pytest.raises(ConfigError) as error:
        parse_config(BASE + section, "edged.yaml", REGISTRY)
    return str(error.value)


@pytest.mark.parametrize(("section", "where", "what"), [
    ("  data_budget: {daily_mb: -5}\n", "cloud.data_budget.daily_mb",
     "greater than 0"),
    ("  data_budget: {daily_mb: 0}\n", "cloud.data_budget.daily_mb", "greater than 0"),
    ("  data_budget: {}\n", "cloud.data_budget.daily_mb",
     "required key 'daily_mb' is missing"),
    ("  data_budget: {daily_mb: 5, capture_share: 1.2}\n",
     "cloud.data_budget.capture_share", "less than or equal to 1"),
    ("  data_budget: {daily_mb: 5, heartbeat_share: -0.1}\n",
     "cloud.data_budget.heartbeat_share", "greater than or equal to 0"),
    ("  data_budget: {daily_mb: 5, capture_share: 0.95, heartbeat_share: 0.9}\n",
     "cloud.data_budget", "capture_share (0.95) must not be above heartbeat_share (0.9)"),
    ("  data_budget: {daily_mb: 5, over_budget_heartbeat_s: 0}\n",
     "cloud.data_budget.over_budget_heartbeat_s", "greater than 0"),
    ("  data_budget: {daily_mb: 5, monthly_mb: 100}\n", "cloud.data_budget.monthly_mb",
     "unknown key 'monthly_mb'"),
    ("  alarms: {topic: 'edged/+/alarms'}\n", "cloud.alarms.topic", "wildcards"),
    ("  alarms: {events: [fire]}\n", "cloud.alarms.events.0", "'alarm'"),
    ("  alarms: {queue_size: 0}\n", "cloud.alarms.queue_size", "greater than or equal to 1"),
])
def test_a_bad_section_is_a_located_config_error(section: str, where: str, what: str):
    text = problems(section)
    assert f"'{where}' at edged.yaml, line 11" in text, text
    assert what in text, text


def test_a_good_section_gives_the_budget_and_its_defaults():
    config = parse_config(BASE + "  data_budget: {daily_mb: 50}\n  alarms: {}\n",
                          "edged.yaml", REGISTRY)
    budget = config.cloud.data_budget
    assert (budget.daily_mb, budget.capture_share, budget.heartbeat_share,
            budget.over_budget_heartbeat_s) == (50, 0.7, 0.9, 3600)
    assert config.cloud.alarms.topic == "edged/{thing}/alarms"
    assert config.cloud.alarms.events == ["alarm", "clear"]


def test_the_health_page_samples_validate():
    import re
    from pathlib import Path

    import yaml

    from edged.config.cloud import CloudConfig

    page = (Path(__file__).resolve().parents[3] / "docs" / "health.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", page, re.DOTALL)
    daemons = [b for b in blocks if "pipelines:" in b]
    assert len(daemons) == 2 and len(blocks) == 3
    for block in daemons:
        parse_config(block, "docs/health.md", REGISTRY)
    budget = parse_config(daemons[1], "docs/health.md", REGISTRY).cloud.data_budget
    assert budget.daily_mb == 50 and budget.capture_share == 0.7
    alarms = CloudConfig.model_validate(yaml.safe_load(blocks[2])["cloud"]).alarms
    assert alarms.queue_size == 1000 and alarms.events == ["alarm", "clear"]
