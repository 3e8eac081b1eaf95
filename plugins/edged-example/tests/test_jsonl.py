"""The jsonl actuator's own tests, written with edged's plugin-author kit
(``edged.testing``): what a plugin author would write."""

import json

from edged.plugin.events import Event, ModelRef
from edged.plugin.manager import make_plugin_manager
from edged.testing import build_component, eventually, farm_config, running_graph
from edged_example import JsonlActuator


def test_registered_through_its_entry_point():
    _, registry = make_plugin_manager()
    info = next(p for p in registry.plugins if p.name == "jsonl")
    assert info.distribution == "edged-example"
    assert registry.component("actuator", "jsonl").factory is JsonlActuator
    assert "alarms" in registry.commands


async def test_appends_one_json_line_per_event(tmp_path):
    path = tmp_path / "sub" / "alarms.jsonl"
    actuator = build_component(
        "actuator", {"type": "jsonl", "inputs": ["turbines"], "path": str(path)}, tmp_path)
    events = [
        Event("alarm", "turbines", "turbine-2", 10.0, groups=("vibration",),
              values={"roll": 3.0}, thresholds={"roll": 1.08}, model=ModelRef("wt", 1)),
        Event("clear", "turbines", "turbine-2", 20.0),
    ]
    async with actuator:
        for event in events:
            await actuator.handle(event)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["alarm", "clear"]
    assert lines[0]["groups"] == ["vibration"]
    assert lines[0]["model"] == {"name": "wt", "version": 1}


async def test_a_simulated_fault_reaches_the_file(tmp_path):
    path = tmp_path / "alarms.jsonl"
    config = tmp_path / "edged.yaml"
    config.write_text(farm_config(
        "example", tmp_path / "state", faults="2:voltage@0-600",
        extra=f"actuators:\n  alarms: {{type: jsonl, inputs: [turbines], path: {path}}}\n"))

    def alarmed() -> set[str]:
        lines = path.read_text().splitlines() if path.exists() else []
        return {event["turbine"] for line in lines
                if (event := json.loads(line))["kind"] == "alarm"}

    async with running_graph(config):
        await eventually(lambda: "turbine-2" in alarmed(), 30)
    assert alarmed() == {"turbine-2"}
