"""The example plugin's own tests: what a plugin author would write."""

import json

from edged.events import Event, ModelRef
from edged.plugin_manager import make_plugin_manager
from edged_example import JsonlActuator, JsonlConfig


def test_registered_through_its_entry_point():
    _, registry = make_plugin_manager()
    info = next(p for p in registry.plugins if p.name == "jsonl")
    assert info.distribution == "edged-example"
    assert registry.component("actuator", "jsonl").factory is JsonlActuator
    assert "alarms" in registry.commands


async def test_appends_one_json_line_per_event(tmp_path):
    path = tmp_path / "sub" / "alarms.jsonl"
    config = JsonlConfig(type="jsonl", inputs=["turbines"], path=path)
    events = [
        Event("alarm", "turbines", "turbine-2", 10.0, groups=("vibration",),
              values={"roll": 3.0}, thresholds={"roll": 1.08}, model=ModelRef("wt", 1)),
        Event("clear", "turbines", "turbine-2", 20.0),
    ]
    async with JsonlActuator(config, None) as actuator:
        for event in events:
            await actuator.handle(event)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["alarm", "clear"]
    assert lines[0]["groups"] == ["vibration"]
    assert lines[0]["model"] == {"name": "wt", "version": 1}
